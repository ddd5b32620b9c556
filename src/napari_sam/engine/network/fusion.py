"""Inference-time rewrites of a loaded SAM that keep its outputs (to float rounding).

Batch normalisation after a convolution is an affine map per channel, so at inference it
folds into the convolution's weight and bias (Ioffe & Szegedy, 2015; a standard
deployment step). This removes TinyViT's 27 batch-norm passes over large feature maps,
about an eighth of the encoder's time on a CPU. The checkpoint format is untouched: only
an in-memory copy used for inference is rewritten.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.engine.network.tiny_vit import ConvBN


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold every :class:`ConvBN`'s batch norm into its convolution, in place.

    Parameters
    ----------
    module : torch.nn.Module
        A model in eval mode; training it afterwards would be wrong (no batch norm).

    Returns
    -------
    int
        The number of convolutions rewritten.
    """
    count = 0
    for block in module.modules():
        if not isinstance(block, ConvBN) or isinstance(block.bn, nn.Identity):
            continue
        conv, bn = block.c, block.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias)
        block.bn = nn.Identity()
        count += 1
    return count
