"""What trains and how fast: trainable parts, AdamW groups, schedule, drop path.

The SAM recipe (Kirillov et al., ICCV 2023, appendix A): AdamW (beta 0.9, 0.999) with
weight decay, a linear warm-up, step decay by 10x late in training, layer-wise learning
rate decay for the image encoder (Clark et al., ELECTRA, 2020: block i of n learns at
``lr * decay ** (n - i)``) and drop path (Huang et al., "Deep Networks with Stochastic
Depth", ECCV 2016). Our encoder modules have no drop path built in; :func:`install_drop_path`
adds it with forward hooks on each block's attention and MLP branches for training only
(each image is its own batch here, so dropping a branch per call is per sample).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from napari_sam.errors import InvalidInputError
from napari_sam.training.config import TRAINABLE_PARTS


def encoder_units(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """The image encoder's parameters in depth order: stem, each block, neck.

    Works for the ViT (``blocks``) and TinyViT (``layers[i].blocks``, with each stage's
    downsampling counted with its last block) encoders; the unused classifier head of
    MobileSAM's TinyViT is left out, so it never trains.
    """
    if hasattr(encoder, "blocks"):
        units = [list(encoder.patch_embed.parameters()) + [encoder.pos_embed]]
        units += [list(block.parameters()) for block in encoder.blocks]
    else:
        units = [list(encoder.patch_embed.parameters())]
        for layer in encoder.layers:
            units += [list(block.parameters()) for block in layer.blocks]
            if layer.downsample is not None:
                units[-1] += list(layer.downsample.parameters())
    units.append(list(encoder.neck.parameters()))
    return units


def iou_head_parameters(sam: nn.Module) -> list[nn.Parameter]:
    """The IoU prediction path of the mask decoder: the IoU token and the IoU head.

    The token enters the decoder's transformer beside the mask tokens and the head reads
    its output, so both set the predicted IoU that segment-everything thresholds.
    """
    decoder = sam.mask_decoder
    return list(decoder.iou_token.parameters()) + list(decoder.iou_prediction_head.parameters())


def parameter_groups(
    sam: nn.Module,
    parts: str,
    encoder_blocks: int,
    layer_decay: float,
    weight_decay: float,
    freeze_iou_head: bool = False,
) -> list[dict]:
    """Mark what trains (``requires_grad``) and group it for AdamW.

    Parameters
    ----------
    sam : Sam
    parts : str
        ``"decoder"`` (mask decoder only), ``"decoder+prompt"`` (with the prompt
        encoder), ``"encoder-last"`` (also the last ``encoder_blocks`` encoder blocks and
        the neck) or ``"full"`` (the whole encoder too).
    encoder_blocks : int
        Encoder blocks trained in ``"encoder-last"`` mode.
    layer_decay : float
        Learning-rate factor per encoder block below the neck (1 = none).
    weight_decay : float
        Applied to weight matrices; biases, norms and embeddings get none.
    freeze_iou_head : bool
        Keep :func:`iou_head_parameters` out of the optimizer (no update, no weight decay).

    Returns
    -------
    list of dict
        AdamW parameter groups, each with ``lr_scale``.
    """
    if parts not in TRAINABLE_PARTS:
        raise InvalidInputError(
            f"Unknown trainable parts {parts!r}; choose one of {', '.join(TRAINABLE_PARTS)}."
        )
    for parameter in sam.parameters():
        parameter.requires_grad_(False)
    scaled: list[tuple[nn.Parameter, float]] = [(p, 1.0) for p in sam.mask_decoder.parameters()]
    if parts != "decoder":
        scaled += [(p, 1.0) for p in sam.prompt_encoder.parameters()]
    if parts in ("encoder-last", "full"):
        units = encoder_units(sam.image_encoder)
        if parts == "encoder-last":
            if not 1 <= encoder_blocks < len(units) - 1:
                raise InvalidInputError(
                    f"encoder_blocks must be 1..{len(units) - 2} for this encoder; "
                    f"got {encoder_blocks}."
                )
            first = len(units) - 1 - encoder_blocks
        else:
            first = 0
        depth = len(units) - 1
        for index in range(first, len(units)):
            scaled += [(p, layer_decay ** (depth - index)) for p in units[index]]
    if freeze_iou_head:
        frozen = {id(p) for p in iou_head_parameters(sam)}
        scaled = [(p, scale) for p, scale in scaled if id(p) not in frozen]
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for parameter, scale in scaled:
        parameter.requires_grad_(True)
        decay = weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((scale, decay), []).append(parameter)
    return [
        {"params": params, "lr_scale": scale, "weight_decay": decay}
        for (scale, decay), params in groups.items()
    ]


def make_optimizer(
    groups: list[dict], learning_rate: float, betas=(0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over the groups; each group's lr is ``learning_rate * lr_scale``."""
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def learning_rate_factor(
    step: int, total: int, warmup: int, decay_at: tuple[float, ...], gamma: float = 0.1
) -> float:
    """Linear warm-up over ``warmup`` steps, then x ``gamma`` at each fraction in ``decay_at``."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    passed = sum(step >= round(fraction * total) for fraction in decay_at)
    return factor * gamma**passed


def set_learning_rate(
    optimizer: torch.optim.Optimizer, learning_rate: float, factor: float
) -> None:
    """Apply a schedule factor to every group (keeping each group's layer-wise scale)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group["lr_scale"] * factor


def residual_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's transformer blocks (with ``attn`` and ``mlp`` branches), in order."""
    return [m for m in encoder.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]


@contextmanager
def install_drop_path(
    encoder: nn.Module, rate: float, generator: torch.Generator
) -> Iterator[None]:
    """Drop each block's attention and MLP branches at random while the encoder trains.

    The rate grows linearly from 0 at the first block to ``rate`` at the last; a kept
    branch is scaled by ``1 / (1 - p)`` so its expected value is unchanged. In eval mode
    the hooks do nothing, and they are removed on exit.
    """
    if rate <= 0:
        yield
        return
    blocks = residual_blocks(encoder)
    handles = []
    for index, block in enumerate(blocks):
        p = rate * index / max(len(blocks) - 1, 1)

        def hook(module, args, output, p=p):
            if not module.training or p == 0:
                return output
            keep = torch.rand((), generator=generator) >= p
            return output * (keep.float() / (1 - p))

        handles += [block.attn.register_forward_hook(hook), block.mlp.register_forward_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
