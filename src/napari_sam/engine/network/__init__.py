"""SAM's neural network modules, with parameter names of the released checkpoints."""

from napari_sam.engine.network.sam import Sam, SamArchitecture
from napari_sam.engine.network.tiny_vit import TinyViTConfig
from napari_sam.engine.network.vit_encoder import ViTConfig

__all__ = ["Sam", "SamArchitecture", "TinyViTConfig", "ViTConfig"]
