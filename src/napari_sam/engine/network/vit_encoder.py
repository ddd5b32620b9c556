"""The ViT image encoder of SAM (ViT-B, ViT-L, ViT-H).

A plain vision transformer on a 1024x1024 input cut into 16x16 patches, with windowed
attention (14x14 windows) in most blocks, global attention in a few, and decomposed
relative position embeddings (Li et al., "Exploring Plain Vision Transformer Backbones
for Object Detection", ECCV 2022). A neck maps the tokens to a 256 x 64 x 64 embedding.
Parameter names follow Meta's released checkpoints so they load with strict matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.engine.network.common import Float32Conv2d, LayerNorm2d, MLPBlock


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of one ViT image encoder."""

    embed_dim: int  # token width: 768 (B), 1024 (L), 1280 (H)
    depth: int  # number of transformer blocks
    num_heads: int  # attention heads per block
    global_blocks: tuple[int, ...]  # indices of the blocks with global attention
    img_size: int = 1024  # side of the square encoder input, in pixels
    patch_size: int = 16  # side of one patch
    window_size: int = 14  # side of an attention window, in tokens
    out_chans: int = 256  # channels of the embedding
    mlp_ratio: float = 4.0  # hidden width of the MLP relative to embed_dim


def relative_position_table(size: int, table: torch.Tensor) -> torch.Tensor:
    """Look up relative position embeddings for every (query, key) pair on one axis.

    Parameters
    ----------
    size : int
        Number of tokens along the axis (queries and keys alike).
    table : torch.Tensor, shape (L, C)
        Learned embeddings for the 2*size-1 possible offsets; resized linearly when L
        differs.

    Returns
    -------
    torch.Tensor, shape (size, size, C)
    """
    wanted = 2 * size - 1
    if table.shape[0] != wanted:
        table = F.interpolate(table.T.unsqueeze(0), size=wanted, mode="linear").squeeze(0).T
    coords = torch.arange(size, device=table.device)
    offsets = coords[:, None] - coords[None, :] + (size - 1)
    return table[offsets]


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative position bias."""

    def __init__(self, dim: int, num_heads: int, token_grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // num_heads
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * token_grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * token_grid - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over a (B, H, W, C) grid of tokens; returns the same shape."""
        b, h, w, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, H*W, head_dim)
        rel_h = relative_position_table(h, self.rel_pos_h)  # (H, H, head_dim)
        rel_w = relative_position_table(w, self.rel_pos_w)  # (W, W, head_dim)
        q_grid = q.reshape(b, heads, h, w, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, rel_h)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, rel_w)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


def partition_windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, int, int]:
    """Cut a (B, H, W, C) grid into (B * nWin, size, size, C) windows, zero-padding it."""
    b, h, w, c = x.shape
    pad_h = (size - h % size) % size
    pad_w = (size - w % size) % size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // size, size, wp // size, size, c).transpose(2, 3)
    return x.reshape(-1, size, size, c), hp, wp


def merge_windows(
    windows: torch.Tensor, size: int, padded: tuple[int, int], original: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`partition_windows`, dropping the padding."""
    hp, wp = padded
    h, w = original
    b = windows.shape[0] // ((hp // size) * (wp // size))
    x = windows.view(b, hp // size, wp // size, size, size, -1).transpose(2, 3)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    """A pre-norm transformer block with windowed (or global) attention."""

    def __init__(self, config: ViTConfig, window_size: int) -> None:
        super().__init__()
        dim = config.embed_dim
        grid = config.img_size // config.patch_size
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, window_size or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            h, w = x.shape[1:3]
            windows, hp, wp = partition_windows(x, self.window_size)
            x = merge_windows(self.attn(windows), self.window_size, (hp, wp), (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, 3, H, W) -> (B, H/16, W/16, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = Float32Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ViTImageEncoder(nn.Module):
    """SAM's ViT encoder: (B, 3, 1024, 1024) normalised pixels -> (B, 256, 64, 64)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            Block(config, 0 if i in config.global_blocks else config.window_size)
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            Float32Conv2d(config.embed_dim, config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            Float32Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        # The embedding leaves in the standard (B, C, H, W) layout, as the reference's does.
        return self.neck(x.permute(0, 3, 1, 2)).contiguous()
