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
* the 2x2 stride-2 transposed convolutions become channel-last matrix products, the
  first of them mostly computed once per image (:mod:`~napari_sam.engine.network.fast_upscaling`),
  and only the requested masks' hypernetworks run.

Same mathematics as :class:`~napari_sam.engine.network.mask_decoder.MaskDecoder`;
outputs agree to float rounding (tests compare both). Inference only: no gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_sam.engine.network.factored_transformer import FactoredImage, FactoredTransformer
from napari_sam.engine.network.fast_upscaling import (
    MaskUpscaler,
    NormTrace,
    channel_last_transposed_conv,
)
from napari_sam.engine.network.mask_decoder import MaskDecoder
from napari_sam.engine.network.transformer import Attention


@dataclass(frozen=True)
class ImageContext:
    """Image-only decoder inputs, computed once per embedding (batch Bc = 1 or B)."""

    image: torch.Tensor  # (Bc, N, C) embedding + dense prompt, flattened row-major
    key_pe: torch.Tensor  # (1, N, C) positional encoding
    first_keys: torch.Tensor  # (Bc, N, I) first block's token-to-image key projection
    first_values: torch.Tensor  # (Bc, N, I) its value projection
    first_queries: torch.Tensor  # (Bc, N, I) first block's image-to-token query projection
    image_part: torch.Tensor  # (Bc, N, 4 c1) the image's share of the first upscaling
    # Per-image products of the factored transformer, made on the first batch that pays
    # for them (FACTORED_MIN_BATCH prompts); None when the context cannot use them.
    factored: dict[str, FactoredImage] | None = None


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


# The factored transformer's per-image products cost about as much as decoding 4 prompts
# the direct way and save about 4 ms per prompt after: a single click (the annotator, one
# prompt per call) keeps the direct path, segment-everything's batches take the factored one.
FACTORED_MIN_BATCH = 4

MAX_OBJECTS = (
    8  # prompts decoded together; larger batches only cost memory (time per prompt is flat)
)


def _context_rows(context: ImageContext, start: int, stop: int) -> ImageContext:
    """The rows start:stop of a per-object context (one dense prompt per object)."""
    return ImageContext(
        image=context.image[start:stop],
        key_pe=context.key_pe,
        first_keys=context.first_keys[start:stop],
        first_values=context.first_values[start:stop],
        first_queries=context.first_queries[start:stop],
        image_part=context.image_part[start:stop],
        factored=None,
    )


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
    record: list | None = None,
) -> torch.Tensor:
    """Image tokens attend to tokens (B, t, C); returns the (B, N, C) update.

    Either ``image_queries`` (B|1, N, C) or their projection ``projected_queries``
    (B|1, N, I) is given; ``record`` receives each object's (h*t, N) attention weights and
    (h*t, C) values (with the output projection folded in). One object at a time: its
    (N, h*t) scores are transposed so that the softmax over each head's t tokens runs along
    contiguous rows (torch's softmax over a last axis of ~7 entries is ~10x slower), and the
    output projection's bias rides along in the last matrix product.
    """
    heads = attn.num_heads
    k = attn.k_proj(token_keys)  # (B, t, I)
    v = attn.v_proj(token_values)
    b, t, i = k.shape
    d = i // heads
    k = k.view(b, t, heads, d) * d**-0.5  # the attention scale, on the small side
    if projected_queries is None:
        queries = image_queries
        w_q = attn.q_proj.weight.view(heads, d, -1)
        folded = torch.einsum("bthd,hdc->bcht", k, w_q).reshape(b, -1, heads * t)
        offset = torch.einsum("bthd,hd->bht", k, attn.q_proj.bias.view(heads, d)).reshape(
            b, heads * t
        )
    else:
        queries = projected_queries
        # Block-diagonal keys turn the per-head products into one matrix product.
        eye = torch.eye(heads, dtype=k.dtype, device=k.device)
        folded = torch.einsum("bthd,hg->bhdgt", k, eye).reshape(b, heads * d, heads * t)
        offset = torch.zeros((b, heads * t), dtype=k.dtype, device=k.device)
    w_o = attn.out_proj.weight.view(-1, heads, d)  # (C, h, d)
    folded_values = torch.einsum("bthd,chd->bhtc", v.view(b, t, heads, d), w_o).reshape(
        b, heads * t, -1
    )
    n = queries.shape[1]
    out = torch.empty((b, n, folded_values.shape[-1]), dtype=k.dtype, device=k.device)
    for j in range(b):
        scores = torch.addmm(
            offset[j], queries[j if len(queries) > 1 else 0], folded[j]
        )  # (N, h*t)
        weights = torch.softmax(scores.T.contiguous().view(heads, t, n), dim=1).view(heads * t, n)
        torch.addmm(attn.out_proj.bias, weights.T, folded_values[j], out=out[j])
        if record is not None:
            record.append((weights, folded_values[j]))
    return out


class FastDecoder:
    """Runs a :class:`MaskDecoder`'s weights with the re-associated algorithm."""

    def __init__(self, decoder: MaskDecoder) -> None:
        self.decoder = decoder
        self.transformer = decoder.transformer
        self.upscaler = MaskUpscaler(decoder)
        conv1 = decoder.output_upscaling[0]
        self.factored = FactoredTransformer(
            decoder.transformer, channel_last_transposed_conv(conv1)
        )

    @torch.inference_mode()
    def prepare(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        dense: torch.Tensor,
        shared: bool = True,
    ) -> ImageContext:
        """Image-only work: (1, C, 64, 64) embedding, (1, C, 64, 64) PE, (Bc, C, 64, 64) dense.

        ``shared``: the context may decode many prompts (one dense prompt for all), so the
        factored transformer may be used, its per-image products made on the first batch
        of at least :data:`FACTORED_MIN_BATCH` prompts; a context for one batch of mask
        prompts never uses it.
        """
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
            image_part=self.upscaler.image_part(image),
            factored={} if shared and image.shape[0] == 1 else None,
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
        if sparse.shape[0] > MAX_OBJECTS:  # bounded memory: 4 MB per object per image-token tensor
            parts = [
                self(context, sparse[i : i + MAX_OBJECTS], mask_tokens)
                if context.image.shape[0] == 1
                else self(
                    _context_rows(context, i, i + MAX_OBJECTS),
                    sparse[i : i + MAX_OBJECTS],
                    mask_tokens,
                )
                for i in range(0, sparse.shape[0], MAX_OBJECTS)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        dec = self.decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse], dim=1)
        chosen = range(dec.num_mask_tokens)[mask_tokens]
        # The last attention updates each token on its own: only the IoU token and the
        # requested mask tokens are carried through it.
        read = [0, *(1 + i for i in chosen)]
        shared = self._factored_image(context, batch)
        if shared is not None:
            queries, keys = self.factored(shared, tokens, read)
        else:
            queries, traces = self._transformer(context, tokens, read)
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[i](queries[:, 1 + k, :]) for k, i in enumerate(chosen)],
            dim=1,
        )
        # One object at a time: its 8 MB of upscaling activations stay in cache (2x faster).
        parts = context.image_part
        masks = []
        for j in range(batch):
            if shared is not None:
                first = self.factored.first_upscaling(shared, keys, j)
            else:
                image_part = parts[j if len(parts) > 1 else 0]
                first = self.upscaler.first_upscaling(image_part, [layer[j] for layer in traces])
            masks.append(self.upscaler.finish(first, hyper[j]))
        logits = torch.stack(masks)
        iou = dec.iou_prediction_head(queries[:, 0, :])[:, mask_tokens]
        return logits, iou

    def _factored_image(self, context: ImageContext, batch: int) -> FactoredImage | None:
        """The context's factored products, made now if this batch pays for them."""
        cache = context.factored
        if cache is None:
            return None
        if "image" not in cache and batch >= FACTORED_MIN_BATCH:
            # Computed once; two threads racing here compute the same thing.
            cache["image"] = self.factored.prepare_image(context.image, context.key_pe)
        return cache.get("image")

    def _transformer(self, context: ImageContext, tokens: torch.Tensor, read_tokens: list[int]):
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
        record: list[tuple[torch.Tensor, torch.Tensor]] = []
        update = image_to_token(
            first.cross_attn_image_to_token,
            None,
            queries + query_pe,
            queries,
            projected_queries=context.first_queries,
            record=record,
        )
        traces = []  # per layer, per object: what the upscaling needs (fast_upscaling)
        keys = _traced_norm(first.norm4, update.add_(context.image), record, traces)

        for layer in layers[1:]:
            q = queries + query_pe
            queries = layer.norm1(queries + layer.self_attn(q, q, queries))
            keys_pe = keys + context.key_pe
            update = token_to_image(
                layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys
            )
            queries = layer.norm2(queries + update)
            queries = layer.norm3(queries + layer.mlp(queries))
            record = []
            update = image_to_token(
                layer.cross_attn_image_to_token, keys_pe, queries + query_pe, queries, record=record
            )
            keys = _traced_norm(layer.norm4, update.add_(keys), record, traces)

        queries, query_pe = queries[:, read_tokens], query_pe[:, read_tokens]
        final = self.transformer.final_attn_token_to_image
        update = token_to_image(final, queries + query_pe, keys + context.key_pe, keys)
        return self.transformer.norm_final_attn(queries + update), traces


def _traced_norm(norm: torch.nn.LayerNorm, x: torch.Tensor, record, traces: list) -> torch.Tensor:
    """``norm(x)``, appending each object's :class:`NormTrace` of this layer to ``traces``."""
    out, mean, rstd = torch.native_layer_norm(
        x, norm.normalized_shape, norm.weight, norm.bias, norm.eps
    )
    traces.append([NormTrace(w, v, mean[j], rstd[j]) for j, (w, v) in enumerate(record)])
    return out
