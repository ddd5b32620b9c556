"""The Segment Anything model: image encoder, prompt encoder and mask decoder together.

Holds the pixel normalisation the encoder was trained with, and builds the three parts
from one :class:`SamArchitecture`. Attribute names match the released checkpoints
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_sam.engine.network.mask_decoder import MaskDecoder
from napari_sam.engine.network.prompt_encoder import PromptEncoder
from napari_sam.engine.network.tiny_vit import TinyViTConfig, TinyViTImageEncoder
from napari_sam.engine.network.vit_encoder import ViTConfig, ViTImageEncoder

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # on the 0..255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArchitecture:
    """Everything needed to build one SAM variant with random weights."""

    encoder: ViTConfig | TinyViTConfig  # which image encoder, with its sizes
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # subtracted from 0..255 RGB
    pixel_std: tuple[float, float, float] = IMAGENET_STD  # then divided by this

    @property
    def input_size(self) -> int:
        """Side of the square encoder input, in pixels (1024, or 256 for LiteMedSAM)."""
        return self.encoder.img_size


class Sam(nn.Module):
    """SAM as three modules; :mod:`napari_sam.engine.prediction.predictor` drives it."""

    def __init__(self, architecture: SamArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        encoder = architecture.encoder
        if isinstance(encoder, ViTConfig):
            self.image_encoder: nn.Module = ViTImageEncoder(encoder)
        else:
            self.image_encoder = TinyViTImageEncoder(encoder)
        size = architecture.input_size
        self.prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(size, size)
        )
        self.mask_decoder = MaskDecoder()
        self.register_buffer(
            "pixel_mean", torch.tensor(architecture.pixel_mean).view(-1, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(architecture.pixel_std).view(-1, 1, 1), persistent=False
        )

    @property
    def input_size(self) -> int:
        """Side of the square encoder input, in pixels."""
        return self.architecture.input_size

    def normalize_pixels(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) 0..255 RGB -> (B, 3, S, S) normalised and zero-padded input."""
        x = (rgb - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        pad = (0, self.input_size - w, 0, self.input_size - h)
        return nn.functional.pad(x, pad)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Encode resized (B, 3, h, w) 0..255 RGB images -> (B, 256, 64, 64)."""
        return self.image_encoder(self.normalize_pixels(rgb))
