"""SAM's prompt encoder: points, boxes and mask logits to embeddings.

Sparse prompts (points, box corners) are encoded with random Fourier features of their
position (Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions",
NeurIPS 2020) plus a learned embedding per prompt type. A dense prompt, a 256x256 mask of
logits, is downscaled by two strided convolutions to the 64x64 embedding grid.

Coordinates here are SAM's (x, y) = (col, row) in encoder-input pixels; the rest of the
package speaks (row, col) and converts in ``engine/prediction/prompts.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam.engine.network.common import LayerNorm2d

# Indices into ``point_embeddings``.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 0, 1, 2, 3
PADDING_LABEL = -1


class FourierPositionEncoding(nn.Module):
    """Random Fourier features of normalised (x, y) positions."""

    def __init__(self, num_features: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_features)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) positions in [0, 1] -> (..., 2 * num_features)."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (h, w) grid -> (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self.encode(coords).permute(2, 0, 1)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(..., 2) pixel (x, y) positions in an (h, w) image -> (..., C)."""
        size = torch.tensor([float(image_size[1]), float(image_size[0])], device=coords.device)
        return self.encode(coords.float() / size)


class PromptEncoder(nn.Module):
    """Encodes prompts into sparse (B, N, 256) and dense (B, 256, 64, 64) embeddings."""

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = FourierPositionEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_positional_encoding(self) -> torch.Tensor:
        """Positional encoding of the embedding grid, (1, 256, 64, 64)."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) (x, y) points and (B, N) labels (1, 0, -1) -> (B, N[+1], C)."""
        coords = coords + 0.5  # pixel centres
        if pad:
            # Without a box, a "not a point" token takes the box's place.
            b = coords.shape[0]
            coords = torch.cat([coords, coords.new_zeros((b, 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((b, 1))], dim=1)
        embedding = self.pe_layer.points(coords, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == PADDING_LABEL, 0.0, embedding)
        embedding = embedding + (labels == PADDING_LABEL) * self.not_a_point_embed.weight
        embedding = embedding + (labels == 0) * self.point_embeddings[NEGATIVE].weight
        embedding = embedding + (labels == 1) * self.point_embeddings[POSITIVE].weight
        return embedding

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) boxes (x0, y0, x1, y1) -> (B, 2, C) corner embeddings."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.points(corners, self.input_image_size)
        corner_types = torch.cat(
            [
                self.point_embeddings[BOX_TOP_LEFT].weight,
                self.point_embeddings[BOX_BOTTOM_RIGHT].weight,
            ]
        )
        return embedding + corner_types

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) mask logits -> (B, C, 64, 64)."""
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of prompts.

        Parameters
        ----------
        points : (coords (B, N, 2) float, labels (B, N) int) or None
        boxes : (B, 4) float or None
        masks : (B, 1, 256, 256) float or None

        Returns
        -------
        sparse : torch.Tensor, shape (B, T, 256)
        dense : torch.Tensor, shape (B, 256, 64, 64)
        """
        batch = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        parts = []
        if points is not None:
            parts.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        sparse = (
            torch.cat(parts, dim=1)
            if parts
            else torch.empty((batch, 0, self.embed_dim), device=device)
        )
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense

    @staticmethod
    def _batch_size(points, boxes, masks) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1
