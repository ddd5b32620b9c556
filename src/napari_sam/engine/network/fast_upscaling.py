"""The mask decoder's upscaling, per prompt, with its largest product shared by all prompts.

After the two-way transformer, each prompt's 4096 image tokens go through two 2x2 stride-2
transposed convolutions. The first is a (4096 x 256) @ (256 x 256) product per prompt, the
largest single cost of decoding one prompt on a CPU. But those tokens are the image
embedding changed only by low-rank attention updates and row-wise layer norms: layer l
computes ``x_l = keys_{l-1} + A_l V_l + b_l`` (``A_l`` the (N, h*t) image-to-token
attention weights, ``V_l`` the (h*t, C) values with the output projection folded in) and
``keys_l = g_l * (x_l - mean_l) * rstd_l + beta_l`` with a mean and reciprocal standard
deviation per token. A linear map ``W`` of the last keys therefore expands into

* ``image @ K_0`` with ``K_l = diag(g_l * ... * g_last) W``: the same for every prompt,
  computed once per image (:meth:`MaskUpscaler.image_part`);
* per layer, ``A_l @ (V_l @ K_l)`` (an (N, h*t) @ (h*t, 4c) product, 4.6x fewer
  multiply-adds than the direct one), a row scaling by ``rstd_l`` and a rank-2 update
  carrying the means, the norms' shifts and the biases.

Same mathematics as the module's convolution; results agree to float rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_sam.engine.network.mask_decoder import MaskDecoder


@dataclass(frozen=True)
class NormTrace:
    """What one transformer layer's image-token update leaves for one prompt's upscaling."""

    weights: torch.Tensor  # (h*t, N) image-to-token attention weights
    values: torch.Tensor  # (h*t, C) values with the output projection folded in
    mean: torch.Tensor  # (N, 1) mean of the layer norm's input, per image token
    rstd: torch.Tensor  # (N, 1) its reciprocal standard deviation


def channel_last_transposed_conv(
    conv: torch.nn.ConvTranspose2d,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 transposed convolution as a linear map to (di, dj, channel) outputs.

    Returns the (4 * out, in) weight and (4 * out,) bias for :func:`F.linear`.
    """
    weight = conv.weight.detach()  # (in, out, 2, 2)
    matrix = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
    return matrix, conv.bias.detach().repeat(4)


@functools.lru_cache(maxsize=4)
def natural_order(side: int, device: torch.device) -> torch.Tensor:
    """Gather index from (i, j, di, dj, ei, ej) pixel order to row-major (4 side)^2.

    Output pixel (r, c) = (4i + 2di + ei, 4j + 2dj + ej) of the two 2x upscalings sits at
    flat position ((i*side + j)*4 + di*2 + dj)*4 + ei*2 + ej, a sum of a row part and a
    column part.
    """
    r = torch.arange(4 * side, device=device)
    i, di, ei = r // 4, (r // 2) % 2, r % 2
    row_part = i * side * 16 + di * 8 + ei * 2
    col_part = i * 16 + di * 4 + ei  # same digits, read as (j, dj, ej)
    return (row_part[:, None] + col_part[None, :]).reshape(-1)


class MaskUpscaler:
    """Low-resolution masks of one prompt from its transformer traces (see the module doc)."""

    def __init__(self, decoder: MaskDecoder) -> None:
        conv1, self._norm, _, conv2, _ = decoder.output_upscaling
        weight, bias = channel_last_transposed_conv(conv1)
        self._up2_weight, self._up2_bias = channel_last_transposed_conv(conv2)
        layers = decoder.transformer.layers
        norms = [layer.norm4 for layer in layers]
        update_biases = [layer.cross_attn_image_to_token.out_proj.bias.detach() for layer in layers]
        maps: list[torch.Tensor] = [weight.T] * len(layers)
        rank2: list[torch.Tensor] = [weight.T] * len(layers)
        following, following_bias = (
            weight.T.contiguous(),
            bias,
        )  # K_{l+1} and the bias added after layer l
        for index in reversed(range(len(layers))):
            gain, shift = norms[index].weight.detach(), norms[index].bias.detach()
            maps[index] = (gain[:, None] * following).contiguous()
            # y <- rstd * y + [mean * rstd, 1] @ rank2: the norm's centring, shift and next bias
            rank2[index] = torch.stack([-(gain @ following), shift @ following + following_bias])
            following = maps[index]
            following_bias = update_biases[index] @ following
        self._maps, self._rank2 = maps, rank2
        self._image_bias = following_bias  # first layer's update bias through K_0

    def image_part(self, image: torch.Tensor) -> torch.Tensor:
        """(Bc, N, C) image tokens entering the transformer -> (Bc, N, 4 c1), once per image."""
        return image @ self._maps[0] + self._image_bias

    def first_upscaling(self, image_part: torch.Tensor, traces: list[NormTrace]) -> torch.Tensor:
        """(N, 4 c1) output of the first transposed convolution for one prompt."""
        y = image_part
        for index, trace in enumerate(traces):
            y = torch.addmm(y, trace.weights.T, trace.values @ self._maps[index])
            y.mul_(trace.rstd)
            centring = torch.cat([trace.mean * trace.rstd, torch.ones_like(trace.mean)], dim=1)
            y.addmm_(centring, self._rank2[index])
        return y

    def masks(
        self, image_part: torch.Tensor, traces: list[NormTrace], hyper: torch.Tensor
    ) -> torch.Tensor:
        """(n, 32) hypernetwork weights of one prompt -> (n, 4 side, 4 side) logits."""
        return self.finish(self.first_upscaling(image_part, traces), hyper)

    def finish(self, first: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """(N, 4 c1) first transposed convolution's output -> (n, 4 side, 4 side) logits.

        With the weights reordered to put output channels last, activations never need a
        copy: pixels stay in (i, j, di, dj, ei, ej) order until the small final masks.
        (Slicing these steps into 1 MB pieces that stay in cache was measured: 1.06x the
        time, so they run whole.)
        """
        n_tokens = first.shape[0]
        side = round(n_tokens**0.5)
        x = first.view(n_tokens * 4, -1)
        x = F.gelu(
            F.layer_norm(x, x.shape[-1:], self._norm.weight, self._norm.bias, self._norm.eps)
        )
        y = F.gelu(F.linear(x, self._up2_weight, self._up2_bias).view(n_tokens * 16, -1))
        masks = hyper @ y.T  # (n, 16 N), pixels scrambled
        masks = masks.index_select(1, natural_order(side, masks.device))
        return masks.view(-1, 4 * side, 4 * side)
