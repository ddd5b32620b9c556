"""SAM's neural network modules, with parameter names of the released checkpoints."""

from napari_sam.engine.modeling.sam import Sam, SamArchitecture
from napari_sam.engine.modeling.tiny_vit import TinyViTConfig
from napari_sam.engine.modeling.vit_encoder import ViTConfig

__all__ = ["Sam", "SamArchitecture", "TinyViTConfig", "ViTConfig"]
