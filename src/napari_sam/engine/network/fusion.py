"""Inference-time rewrites of a loaded SAM that keep its outputs (to float rounding).

Batch normalisation after a convolution is an affine map per channel, so at inference it
folds into the convolution's weight and bias (Ioffe & Szegedy, 2015; a standard
deployment step). This removes TinyViT's 27 batch-norm passes over large feature maps,
about an eighth of the encoder's time on a CPU.

The encoders' activations are channel-last (TinyViT's tokens are, and its stem is made
so); a convolution whose weight is stored channel-first makes oneDNN reorder that weight
on every call, and under bfloat16 autocast the reordered copy is made again for each
cast. Storing the weights channel-last too (:func:`channels_last_weights`) removes those
copies: vit_t's fp32 encoder 1.13-1.15x faster on two cores (AVX-512 and AVX2 alike), and
bfloat16 convolutions faster than fp32 ones instead of slower (docs/precision.md).

The checkpoint format is untouched: only an in-memory copy used for inference is
rewritten.
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


@torch.no_grad()
def channels_last_weights(module: nn.Module) -> int:
    """Store every 2D convolution's weight channel-last, in place (values unchanged).

    Parameters
    ----------
    module : torch.nn.Module
        A model on the CPU. Training it afterwards stays correct (only strides change).

    Returns
    -------
    int
        The number of weights restrided: those of full 3x3 (or larger) convolutions;
        1x1 and depthwise weights count as channel-last already.
    """
    count = 0
    for conv in module.modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        weight = conv.weight
        if weight.is_contiguous(memory_format=torch.channels_last):
            continue  # 1x1 and depthwise weights are, either way
        restrided = weight.contiguous(memory_format=torch.channels_last)
        conv.weight = nn.Parameter(restrided, requires_grad=weight.requires_grad)
        count += 1
    return count
