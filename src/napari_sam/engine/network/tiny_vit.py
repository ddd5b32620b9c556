"""TinyViT-5M, the image encoder of MobileSAM and LiteMedSAM.

A hierarchical encoder (Wu et al., "TinyViT: Fast Pretraining Distillation for Small
Vision Transformers", ECCV 2022): a convolutional stem, one stage of inverted-residual
(MBConv) blocks, then three stages of windowed attention with a learned bias per
relative offset and a depthwise convolution between attention and MLP. MobileSAM
(Zhang et al., 2023) distilled it from SAM's ViT-H; its output is the same 256 x 64 x 64
embedding. Parameter names follow the released checkpoints (strict loading).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from napari_sam.engine.network.common import Float32Conv2d, LayerNorm2d
from napari_sam.engine.network.vit_encoder import merge_windows, partition_windows


@dataclass(frozen=True)
class TinyViTConfig:
    """Sizes of a TinyViT encoder; the defaults are MobileSAM's TinyViT-5M."""

    img_size: int = 1024  # side of the square encoder input
    stem_kernel: int = 3  # stem convolutions: 3 (stride 2 each) or 1 (stride 1, LiteMedSAM)
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)  # width per stage
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (2, 4, 5, 10)  # heads per attention stage (first unused)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)  # attention window per stage
    mlp_ratio: float = 4.0  # MLP hidden width relative to the stage width
    mbconv_expand_ratio: float = 4.0  # hidden width of the MBConv blocks
    out_chans: int = 256  # channels of the embedding
    classifier_classes: int = 1000  # MobileSAM keeps an unused ImageNet head; 0 for none


class DenseGELU(nn.GELU):
    """GELU that treats a channel-last image as the dense array it is.

    On a channels-last (B, C, H, W) tensor torch's GELU took 2.5x longer than on the
    same memory viewed as (B, H, W, C); the result is identical.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.ndim == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


class ConvBN(nn.Sequential):
    """Convolution without bias followed by batch normalisation (keys ``c`` and ``bn``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", Float32Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """Convolutional stem: (B, 3, S, S) -> (B, C, S/4, S/4), or S/1 for 1x1 stems."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        stride, pad = (2, 1) if kernel == 3 else (1, 0)
        self.seq = nn.Sequential(
            ConvBN(3, dim // 2, kernel, stride, pad),
            DenseGELU(),
            ConvBN(dim // 2, dim, kernel, stride, pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.act = DenseGELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: (B, C, H, W) or (B, H*W, C) -> (B, H'*W', C')."""

    def __init__(self, resolution: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        # MobileSAM keeps the last stage at 64x64 so the embedding stays 64x64.
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = DenseGELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Attention inside one window with a learned bias per (|drow|, |dcol|) offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = []
        for p in points:
            for q in points:
                key = (abs(p[0] - q[0]), abs(p[1] - q[1]))
                index.append(offsets.setdefault(key, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "bias_index", torch.tensor(index).view(len(points), len(points)), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of B windows -> (B, N, C)."""
        b, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(self.norm(x)).view(b, n, heads, 3 * (c // heads))
        q, k, v = (
            t.reshape(b * heads, n, -1) for t in qkv.permute(0, 2, 1, 3).split(c // heads, dim=3)
        )
        bias = self.attention_biases[:, self.bias_index]  # (heads, N, N)
        bias = bias.expand(b, heads, n, n).reshape(b * heads, n, n)
        # Written out rather than F.scaled_dot_product_attention: with an additive bias
        # on CPU the fused call takes its slow path and was 40% slower here (same values
        # to 1e-6).
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=q.shape[-1] ** -0.5)
        out = torch.bmm(scores.softmax(dim=-1), v).view(b, heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-normalised two-layer perceptron."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, a 3x3 depthwise convolution, then an MLP; on (B, H*W, C)."""

    def __init__(self, dim: int, resolution: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = self.resolution
        if side == self.window:
            attended = self.attn(x)
        else:
            # Windows are cut after zero padding; padded tokens take part in attention,
            # as in the released model.
            grid = x.view(b, side, side, c)
            windows, hp, wp = partition_windows(grid, self.window)
            out = self.attn(windows.view(-1, self.window * self.window, c))
            out = out.view(-1, self.window, self.window, c)
            attended = merge_windows(out, self.window, (hp, wp), (side, side)).view(b, n, c)
        x = x + attended
        # Tokens are channel-last already: viewing them as an NHWC image costs no copy,
        # and oneDNN's channel-last depthwise convolution is ~2x faster than NCHW here.
        x = x.view(b, side, side, c).permute(0, 3, 1, 2)
        x = self.local_conv(x).permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.mlp(x)


class Stage(nn.Module):
    """A sequence of blocks followed by an optional :class:`PatchMerging`."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViTImageEncoder(nn.Module):
    """TinyViT encoder: (B, 3, S, S) normalised pixels -> (B, 256, 64, 64)."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.img_size
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(dims[0], config.stem_kernel)
        stem_factor = 4 if config.stem_kernel == 3 else 1
        resolution = config.img_size // stem_factor
        layers = []
        for i, (dim, depth) in enumerate(zip(dims, config.depths)):
            last = i == len(dims) - 1
            merge = None if last else PatchMerging(resolution, dim, dims[i + 1])
            if i == 0:
                blocks = [MBConv(dim, config.mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(
                        dim,
                        resolution,
                        config.num_heads[i],
                        config.window_sizes[i],
                        config.mlp_ratio,
                    )
                    for _ in range(depth)
                ]
            layers.append(Stage(blocks, merge))
            if merge is not None and dims[i + 1] not in (320, 448, 576):
                resolution //= 2
        self.layers = nn.ModuleList(layers)
        self.out_resolution = resolution
        if config.classifier_classes:
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], config.classifier_classes)
        self.neck = nn.Sequential(
            Float32Conv2d(dims[-1], config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            Float32Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The convolutional stem and MBConv stage run channel-last (see TinyViTBlock).
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        side = self.out_resolution
        x = x.view(b, side, side, c).permute(0, 3, 1, 2)
        # The neck computes channel-last; the embedding leaves in the standard (B, C, H, W)
        # layout, as the reference's does (cheap: 4 MiB).
        return self.neck(x).contiguous()
