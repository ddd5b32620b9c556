"""Small building blocks shared by the SAM encoders and decoder.

LayerNorm over the channel axis of (batch, channels, rows, cols) feature maps, and the
two-layer perceptrons used in the transformer blocks (Kirillov et al., "Segment
Anything", ICCV 2023, section 3 and appendix A).
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Linear, activation, linear: the feed-forward part of a transformer block."""

    def __init__(
        self, embedding_dim: int, mlp_dim: int, activation: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """A perceptron of ``num_layers`` linear layers with ReLU between them.

    Used by the mask decoder for the hypernetworks and the IoU prediction head.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


class Float32Conv2d(nn.Conv2d):
    """A convolution that computes in float32 even under the CPU's ``torch.autocast``.

    bfloat16 convolutions would be faster (vit_t on a 2-core AMX CPU, channel-last
    weights: encoder 0.30 s against 0.39 s with float32 convolutions, fp32 throughout
    0.54-0.60 s), but they move masks as much as one grey level of image noise does,
    while float32 convolutions keep bf16 within the parity bar for the mask a click
    shows, boxes and refined boxes (381 objects of five image sets: worst IoU 0.231 and
    0.881 against 0.979 and 0.975; benchmarks/eval_precision.py, docs/precision.md).
    Outside autocast it is exactly ``nn.Conv2d``; the state-dict keys are the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``nn.Conv2d.forward``, in float32 when autocast is on."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)
