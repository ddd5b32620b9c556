"""The mask decoder re-associated for fast inference on one image.

SAM's decoder attends between a handful of tokens (t <= ~10) and N = 4096 image
tokens. Written as in the paper, every attention projects all N image tokens
(N x 256 x 128 multiply-adds per projection, ten of them per prompt). Matrix products
are associative, so the small token side can be projected instead:

* token-to-image: ``softmax(q Wk X^T) X Wv`` is computed as ``softmax((q Wk) X^T)``
  followed by ``(A X) Wv``; the key bias adds a constant per query and cancels in the
  softmax. Cost falls from 2 N C I to 2 N C (h t).
* image-to-token: ``softmax(X Wq k^T) (v Wo)`` folds the output projection into the
  values and the query projection into the keys.
* everything that depends only on the image (first block's image projections, the dense
  "no mask" embedding) is computed once per image in :meth:`FastDecoder.prepare`.
* the 2x2 stride-2 transposed convolutions become channel-last matrix products, and
  only the requested masks' hypernetworks run.

Same mathematics as :class:`~napari_sam.engine.modeling.mask_decoder.MaskDecoder`;
outputs agree to float rounding (tests compare both). Inference only: no gradients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_sam.engine.modeling.mask_decoder import MaskDecoder
from napari_sam.engine.modeling.transformer import Attention


@dataclass(frozen=True)
class ImageContext:
    """Image-only decoder inputs, computed once per embedding (batch Bc = 1 or B)."""

    image: torch.Tensor  # (Bc, N, C) embedding + dense prompt, flattened row-major
    key_pe: torch.Tensor  # (1, N, C) positional encoding
    first_keys: torch.Tensor  # (Bc, N, I) first block's token-to-image key projection
    first_values: torch.Tensor  # (Bc, N, I) its value projection
    first_queries: torch.Tensor  # (Bc, N, I) first block's image-to-token query projection


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis; torch's kernel is ~8x slower when it has ~7 entries."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Ba, m, k) @ (Bb, k, n) with Ba, Bb in {1, B} -> (B, m, n).

    Uses plain 2D products: MKL's batched path ran these shapes 2-3x slower on our CPUs.
    """
    if b.shape[0] == 1:
        batch, m = a.shape[:2]
        return (a.reshape(batch * m, -1) @ b[0]).view(batch, m, -1)
    if a.shape[0] == 1:
        return torch.stack([a[0] @ bi for bi in b])
    return torch.stack([ai @ bi for ai, bi in zip(a, b)])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, n, I) -> (B, heads, n, I / heads)."""
    b, n, i = x.shape
    return x.view(b, n, heads, i // heads).transpose(1, 2)


def token_to_image(
    attn: Attention, tokens: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor
) -> torch.Tensor:
    """Tokens (B, t, C) attend to image tokens (B|1, N, C); returns (B, t, C)."""
    heads = attn.num_heads
    q = _heads(attn.q_proj(tokens), heads)  # (B, h, t, d)
    b, _, t, d = q.shape
    w_k = attn.k_proj.weight.view(heads, d, -1)  # (h, d, C)
    folded = torch.einsum("bhtd,hdc->bhtc", q, w_k).reshape(b, heads * t, -1)
    # (N, C) @ (C, h*t) is the fast orientation; the transpose back is small.
    scores = batched_matmul(image_keys, folded.transpose(1, 2)).transpose(1, 2)
    weights = torch.softmax(scores * d**-0.5, dim=-1)
    mixed = batched_matmul(weights, image_values)  # (B, h*t, C)
    w_v = attn.v_proj.weight.view(heads, d, -1)
    out = torch.einsum("bhtc,hdc->bthd", mixed.view(b, heads, t, -1), w_v)
    out = out + attn.v_proj.bias.view(heads, d)
    return attn.out_proj(out.reshape(b, t, heads * d))


def image_to_token(
    attn: Attention,
    image_queries: torch.Tensor | None,
    token_keys: torch.Tensor,
    token_values: torch.Tensor,
    projected_queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image tokens attend to tokens (B, t, C); returns the (B, N, C) update.

    Either ``image_queries`` (B|1, N, C) or their projection ``projected_queries``
    (B|1, N, I) is given.
    """
    heads = attn.num_heads
    k = attn.k_proj(token_keys)  # (B, t, I)
    v = attn.v_proj(token_values)
    b, t, i = k.shape
    d = i // heads
    k = k.view(b, t, heads, d)
    if projected_queries is None:
        w_q = attn.q_proj.weight.view(heads, d, -1)
        folded = torch.einsum("bthd,hdc->bcht", k, w_q).reshape(b, -1, heads * t)
        offset = torch.einsum("bthd,hd->bht", k, attn.q_proj.bias.view(heads, d))
        scores = batched_matmul(image_queries, folded) + offset.reshape(b, 1, heads * t)
    else:
        # Block-diagonal keys turn the per-head products into one matrix product.
        eye = torch.eye(heads, dtype=k.dtype, device=k.device)
        block_keys = torch.einsum("bthd,hg->bhdgt", k, eye).reshape(b, heads * d, heads * t)
        scores = batched_matmul(projected_queries, block_keys)
    n = scores.shape[1]
    weights = softmax_last(scores.view(b, n, heads, t) * d**-0.5)
    w_o = attn.out_proj.weight.view(-1, heads, d)  # (C, h, d)
    folded_values = torch.einsum("bthd,chd->bhtc", v.view(b, t, heads, d), w_o)
    weights, folded_values = weights.view(b, n, heads * t), folded_values.reshape(b, heads * t, -1)
    if b == 1:  # the bias rides along in the matrix product instead of another pass
        return torch.addmm(attn.out_proj.bias, weights[0], folded_values[0])[None]
    return batched_matmul(weights, folded_values) + attn.out_proj.bias


def _channel_last_transposed_conv(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 transposed convolution as a linear map to (di, dj, channel) outputs.

    Returns the (4 * out, in) weight and (4 * out,) bias for :func:`F.linear`.
    """
    weight = conv.weight.detach()  # (in, out, 2, 2)
    matrix = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()
    return matrix, conv.bias.detach().repeat(4)


@functools.lru_cache(maxsize=4)
def _natural_order(side: int, device: torch.device) -> torch.Tensor:
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


class FastDecoder:
    """Runs a :class:`MaskDecoder`'s weights with the re-associated algorithm."""

    def __init__(self, decoder: MaskDecoder) -> None:
        self.decoder = decoder
        self.transformer = decoder.transformer
        conv1, self._norm, _, conv2, _ = decoder.output_upscaling
        self._up1_weight, self._up1_bias = _channel_last_transposed_conv(conv1)
        self._up2_weight, self._up2_bias = _channel_last_transposed_conv(conv2)

    @torch.inference_mode()
    def prepare(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                dense: torch.Tensor) -> ImageContext:
        """Image-only work: (1, C, 64, 64) embedding, (1, C, 64, 64) PE, (Bc, C, 64, 64) dense."""
        image = (image_embedding + dense).flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        first = self.transformer.layers[0]
        with_pe = image + key_pe
        return ImageContext(
            image=image,
            key_pe=key_pe,
            first_keys=first.cross_attn_token_to_image.k_proj(with_pe),
            first_values=first.cross_attn_token_to_image.v_proj(image),
            first_queries=first.cross_attn_image_to_token.q_proj(with_pe),
        )

    @torch.inference_mode()
    def __call__(
        self, context: ImageContext, sparse: torch.Tensor, mask_tokens: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of prompts.

        Parameters
        ----------
        context : ImageContext
        sparse : torch.Tensor, shape (B, T, C)
            Sparse prompt embeddings.
        mask_tokens : slice
            Which of the four masks to return (``slice(1, 4)`` or ``slice(0, 1)``).

        Returns
        -------
        logits : torch.Tensor, shape (B, n, 256, 256)
        iou : torch.Tensor, shape (B, n)
        """
        dec = self.decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse], dim=1)
        queries, keys = self._transformer(context, tokens, 1 + dec.num_mask_tokens)
        chosen = range(dec.num_mask_tokens)[mask_tokens]
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in chosen], dim=1
        )
        logits = self._upscale_and_project(keys, hyper)
        iou = dec.iou_prediction_head(queries[:, 0, :])[:, mask_tokens]
        return logits, iou

    def _transformer(self, context: ImageContext, tokens: torch.Tensor, read_tokens: int):
        layers = self.transformer.layers
        first = layers[0]
        query_pe = tokens
        # First block: self-attention without positional encoding, then the cached
        # image projections.
        queries = first.norm1(first.self_attn(tokens, tokens, tokens))
        cross = first.cross_attn_token_to_image
        heads = cross.num_heads
        q = _heads(cross.q_proj(queries + query_pe), heads)
        keys0 = _heads(context.first_keys, heads).expand(q.shape[0], -1, -1, -1)
        values0 = _heads(context.first_values, heads).expand(q.shape[0], -1, -1, -1)
        attended = F.scaled_dot_product_attention(q, keys0, values0)
        attended = attended.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        queries = first.norm2(queries + cross.out_proj(attended))
        queries = first.norm3(queries + first.mlp(queries))
        update = image_to_token(
            first.cross_attn_image_to_token, None, queries + query_pe, queries,
            projected_queries=context.first_queries,
        )
        keys = first.norm4(update.add_(context.image))

        for layer in layers[1:]:
            q = queries + query_pe
            queries = layer.norm1(queries + layer.self_attn(q, q, queries))
            keys_pe = keys + context.key_pe
            update = token_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys)
            queries = layer.norm2(queries + update)
            queries = layer.norm3(queries + layer.mlp(queries))
            update = image_to_token(layer.cross_attn_image_to_token, keys_pe, queries + query_pe, queries)
            keys = layer.norm4(update.add_(keys))

        # Only the IoU and mask tokens are read after the last attention.
        queries, query_pe = queries[:, :read_tokens], query_pe[:, :read_tokens]
        final = self.transformer.final_attn_token_to_image
        update = token_to_image(final, queries + query_pe, keys + context.key_pe, keys)
        return self.transformer.norm_final_attn(queries + update), keys

    def _upscale_and_project(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """(B, 4096, C) image tokens, (B, n, 32) hypernetwork weights -> (B, n, 256, 256).

        Each 2x2/2 transposed convolution is one matrix product per input pixel. With the
        weights reordered to put output channels last, activations never need a copy:
        pixels stay in (i, j, di, dj, ei, ej) order until the small final masks.
        """
        b, n_tokens, _ = keys.shape
        if b > 1:  # one object at a time keeps the 8 MB activations in cache (2x faster)
            return torch.cat([self._upscale_and_project(keys[i : i + 1], hyper[i : i + 1]) for i in range(b)])
        side = int(round(n_tokens**0.5))
        x = F.linear(keys, self._up1_weight, self._up1_bias)  # (B, N, 4 * c1)
        x = x.view(b, n_tokens * 4, -1)
        x = F.gelu(F.layer_norm(x, x.shape[-1:], self._norm.weight, self._norm.bias, self._norm.eps))
        y = F.linear(x, self._up2_weight, self._up2_bias)  # (B, 4N, 4 * c2)
        y = F.gelu(y.view(b, n_tokens * 16, -1))
        masks = batched_matmul(hyper, y.transpose(1, 2))  # (B, n, 16N), pixels scrambled
        # 2D index_select: on the 3D tensor the same gather was 20x slower.
        masks = masks.reshape(-1, masks.shape[-1]).index_select(1, _natural_order(side, masks.device))
        return masks.view(b, -1, 4 * side, 4 * side)
