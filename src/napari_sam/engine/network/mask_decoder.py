"""SAM's mask decoder: tokens plus image embedding to mask logits and IoU estimates.

An IoU token and four mask tokens are prepended to the prompt tokens; after the two-way
transformer, the image tokens are upscaled 4x by transposed convolutions and each mask
token, through its own hypernetwork MLP, gives the weights of a linear map from the
upscaled features to mask logits (Kirillov et al., 2023, section 3). Mask 0 answers
unambiguous prompts; masks 1-3 are the three candidates for an ambiguous one.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.engine.network.common import MLP, LayerNorm2d
from napari_sam.engine.network.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts (B, 4, 256, 256) mask logits and (B, 4) IoU estimates."""

    def __init__(self, transformer_dim: int = 256, num_multimask_outputs: int = 3) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer(embedding_dim=transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, 256, self.num_mask_tokens, 3)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode all four masks for a batch of prompts on one image.

        Parameters
        ----------
        image_embedding : torch.Tensor, shape (1, 256, 64, 64)
        image_pe : torch.Tensor, shape (1, 256, 64, 64)
        sparse : torch.Tensor, shape (B, T, 256)
        dense : torch.Tensor, shape (B, 256, 64, 64)

        Returns
        -------
        logits : torch.Tensor, shape (B, 4, 256, 256)
        iou : torch.Tensor, shape (B, 4)
        """
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse], dim=1)
        image = image_embedding + dense  # broadcasts the single image over the batch
        b, c, h, w = image.shape
        tokens_out, image_out = self.transformer(image, image_pe, tokens)
        iou_token_out = tokens_out[:, 0, :]
        mask_tokens_out = tokens_out[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(image_out.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled.shape
        logits = (hyper @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return logits, self.iou_prediction_head(iou_token_out)
