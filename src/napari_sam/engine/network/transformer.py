"""The two-way transformer of SAM's mask decoder.

Prompt tokens and image tokens update each other: tokens self-attend, tokens attend to
the image, an MLP updates the tokens, and the image attends back to the tokens
(Kirillov et al., 2023, appendix A, "Lightweight mask decoder"). Cross-attention works
at half the width (128 of 256 channels) to save compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.engine.network.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal = embedding_dim // downsample_rate
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads)."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected, head-split inputs -> (B, Nq, C)."""
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, Nq, C), (B, Nk, C), (B, Nk, C) -> (B, Nq, C)."""
        return self.attend(
            self.split_heads(self.q_proj(q)),
            self.split_heads(self.k_proj(k)),
            self.split_heads(self.v_proj(v)),
        )


class TwoWayAttentionBlock(nn.Module):
    """One round of token self-attention, token-to-image, MLP, image-to-token."""

    def __init__(
        self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, 2)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, 2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update (B, Nt, C) tokens and (B, Ni, C) image tokens."""
        if self.skip_first_layer_pe:
            # The first block replaces the tokens by their self-attention output.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Two :class:`TwoWayAttentionBlock` then a final token-to-image attention."""

    def __init__(
        self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, 2)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Parameters
        ----------
        image : torch.Tensor, shape (B, C, H, W)
            Image embedding plus dense prompt embedding.
        image_pe : torch.Tensor, shape (B or 1, C, H, W)
            Positional encoding of the image grid.
        tokens : torch.Tensor, shape (B, Nt, C)
            Output tokens followed by the sparse prompt embeddings.

        Returns
        -------
        tokens : torch.Tensor, shape (B, Nt, C)
        image : torch.Tensor, shape (B, H*W, C)
        """
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q = queries + tokens
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
