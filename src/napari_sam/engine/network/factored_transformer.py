"""The decoder's two-way transformer without ever forming a prompt's image tokens.

:mod:`~napari_sam.engine.network.fast_decoder` projects the small token side instead of
the N = 4096 image tokens, but still forms each prompt's (N, C) image tokens after every
block: an (N, h*t) @ (h*t, C) update, a layer norm, the positional encoding added, and
products of them with the next attention's weights. On a CPU those passes over 4 MB per
prompt are most of the transformer's time, and each is the same image changed only a
little. This module keeps a prompt's image tokens factored instead:

    keys = s * (X @ M) + L @ R

with ``X`` the (N, C) image tokens entering the transformer (shared by every prompt), ``M``
a fixed (C, C) matrix (the layer norms' centring and gains so far), ``s`` a per-token scale
(the product of the layer norms' reciprocal standard deviations), and a low-rank part:
``L`` (N, r) the image-to-token attention weights of earlier blocks (r about h*t per
block) and columns of ones, ``R`` (r, C) their values and the biases and shifts. Then

* an attention projection ``keys @ W`` is ``s * (X @ M @ W) + L @ (R @ W)``: the first
  product is computed once per image (:meth:`FactoredTransformer.prepare_image`), the
  second is small;
* a layer norm's mean and variance per token expand into terms that are again products of
  ``X`` with fixed matrices (once per image), of the small values with them, and a
  quadratic form in ``L``; the norm then only rescales ``s`` and ``L`` and appends a row;
* the attention's softmax weights are the only (N, h*t) arrays formed per prompt.

An image-to-token value row is ``v @ Wo_h.T`` (the token's head-h value through the output
projection), so its products with the image are ``(X @ M @ Wo)`` contracted per head with
``v``: once per image again. Only the shared, no-mask context uses this path (a dense mask
prompt per object changes ``X`` per object). Same mathematics as
:class:`~napari_sam.engine.network.transformer.TwoWayTransformer`; the expanded variances
sum centred terms, and tests compare both paths on real and random weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_sam.engine.network.transformer import Attention, TwoWayTransformer


@dataclass(frozen=True)
class _Plan:
    """Fixed (C, k) matrices whose products with the image every prompt needs."""

    matrices: dict[str, torch.Tensor]  # name -> (C, k); the image's product X @ matrix
    square_maps: list[torch.Tensor]  # per block: (C, C) A with |X @ A|^2 the centred norm
    final_map: torch.Tensor  # (C, C) M after the last block


@dataclass(frozen=True)
class FactoredKeys:
    """A batch of prompts' image tokens after the transformer, factored.

    The tokens are ``scale * (X @ M) + low.T @ values`` (:meth:`FactoredTransformer.dense`).
    """

    scale: torch.Tensor  # (B, N) s
    low: torch.Tensor  # (B, r, N) L transposed
    values: torch.Tensor  # (B, r, C) R


class _Tokens:
    """A batch's image tokens while the transformer runs: ``s``, ``L`` and ``R``, grown.

    ``L`` (transposed, (B, r, N)) lives in one buffer that grows in place: per block its
    h*t attention weights, a row of ones for the update's bias, and after the norm a row
    of ones for the norm's shift.
    """

    def __init__(self, batch: int, rows: int, tokens: int, channels: int, like: torch.Tensor):
        self.scale: torch.Tensor | None = None  # s, (B, N); None while it is 1
        self._buffer = like.new_empty((batch, rows, tokens))
        self._used = 0
        self.values = like.new_zeros((batch, 0, channels))  # R, (B, r, C)
        self.coefs: list[torch.Tensor] = []  # per block, its token values (B, h, t, d)

    @property
    def low(self) -> torch.Tensor:
        """L transposed, (B, r, N): a view of the rows so far."""
        return self._buffer[:, : self._used]

    def add_update(
        self, weights: torch.Tensor, coef: torch.Tensor, folded: torch.Tensor, bias: torch.Tensor
    ) -> None:
        """Add an image-to-token update ``A V + b``: (B, h*t, N), (B, h, t, d), (B, h*t, C)."""
        width = weights.shape[1]
        self._buffer[:, self._used : self._used + width].copy_(weights)
        self._buffer[:, self._used + width].fill_(1.0)
        self._used += width + 1
        self.values = torch.cat([self.values, folded, bias.expand(len(folded), 1, -1)], 1)
        self.coefs.append(coef)

    def normalise(self, rstd: torch.Tensor, norm: torch.nn.LayerNorm) -> None:
        """Apply a layer norm whose (B, N) reciprocal standard deviations are ``rstd``."""
        centred = self.values - self.values.mean(-1, keepdim=True)
        self.scale = rstd if self.scale is None else self.scale * rstd
        self.low.mul_(rstd[:, None, :])
        self._buffer[:, self._used].fill_(1.0)
        self._used += 1
        shift = norm.bias.expand(len(centred), 1, -1)
        self.values = torch.cat([centred * norm.weight, shift], 1)


@dataclass(frozen=True)
class FactoredImage:
    """Per-image products for :class:`FactoredTransformer` (one image, no dense mask)."""

    products: dict[str, torch.Tensor]  # (h, d, N) head-major, or (k, N) for vectors
    centred_squares: list[torch.Tensor]  # per block: (N,) |X M P|^2


def _shared_scores(
    coef: torch.Tensor, products: dict[str, torch.Tensor], name: str, scale: torch.Tensor | None
) -> torch.Tensor:
    """``coef`` against the image part of keys or queries: ``s * (X M W) + PE W``.

    (B, h, t, d) -> (B, h*t, N); one product where ``s`` is 1 (the first block).
    """
    if scale is None:
        return heads_dot(coef, products[f"{name}_with_pe"])
    scores = heads_dot(coef, products[name])
    scores.mul_(scale[:, None, :])
    return scores.add_(heads_dot(coef, products[f"{name}_pe"]))


def _heads_last(matrix: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, I) -> (h, I / h, N) contiguous: heads first, image tokens along rows."""
    n, i = matrix.shape
    return matrix.T.reshape(heads, i // heads, n).contiguous()


def heads_dot(coef: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Per head, ``coef[b, h] @ shared[h]``: (B, h, t, d), (h, d, N) -> (B, h*t, N).

    One product per prompt, written in place: a single batched product over heads and
    prompts would need its (h, B*t, N) output transposed, a copy as large as the output.
    """
    b, h, t, _ = coef.shape
    out = coef.new_empty((b, h * t, shared.shape[-1]))
    for j in range(b):
        torch.bmm(coef[j], shared, out=out[j].view(h, t, -1))
    return out


def heads_mix(weights: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Per head, ``weights[b, h] @ shared[h].T``: (B, h, t, N), (h, d, N) -> (B, t, h, d)."""
    b, h, t, _ = weights.shape
    out = weights.new_empty((b, h, t, shared.shape[1]))
    for j in range(b):
        torch.bmm(weights[j], shared.transpose(1, 2), out=out[j])
    return out.transpose(1, 2)


class FactoredTransformer:
    """Runs a :class:`TwoWayTransformer` on factored image tokens (see the module doc)."""

    def __init__(
        self, transformer: TwoWayTransformer, upscaling: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        """``upscaling``: the first transposed convolution as a (4 c1, C) weight and bias."""
        self.transformer = transformer
        self._upscaling_weight, self._upscaling_bias = upscaling
        self.layers = list(transformer.layers)
        self.heads = self.layers[0].cross_attn_image_to_token.num_heads
        self._plan = self._make_plan()

    @torch.inference_mode()
    def _make_plan(self) -> _Plan:
        weight = self.layers[0].cross_attn_image_to_token.out_proj.weight
        channels = weight.shape[0]
        eye = torch.eye(channels, dtype=weight.dtype, device=weight.device)
        centre = eye - 1.0 / channels  # P: removes each token's mean over channels
        matrices: dict[str, torch.Tensor] = {}
        square_maps: list[torch.Tensor] = []
        shared_map = eye  # M: X @ M is the shared part of the image tokens
        # value_maps[k]: F_k, applied to block k's value rows since its norm took them in
        value_maps: list[torch.Tensor] = []
        rows = eye[:0]  # (0, C): the bias and shift rows so far
        for index, layer in enumerate(self.layers):
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            matrices[f"{index}.key"] = shared_map @ t2i.k_proj.weight.T
            matrices[f"{index}.value"] = shared_map @ t2i.v_proj.weight.T
            matrices[f"{index}.query"] = shared_map @ i2t.q_proj.weight.T
            value_maps.append(eye)
            rows = torch.cat([rows, i2t.out_proj.bias.detach()[None]])
            stat_map = shared_map @ centre  # X @ stat_map: the centred shared part
            square_maps.append(stat_map)
            for block, value_map in enumerate(value_maps):
                # <X M P, (v Wo_k^T) F_k> = (X M P F_k^T Wo_k) contracted with v
                source = self.layers[block].cross_attn_image_to_token.out_proj.weight
                matrices[f"{index}.cross{block}"] = stat_map @ value_map.T @ source
            matrices[f"{index}.rows"] = stat_map @ rows.T
            gain, shift = layer.norm4.weight.detach(), layer.norm4.bias.detach()
            step = centre * gain[None, :]  # P G: centre, then the norm's gain
            shared_map = shared_map @ step
            value_maps = [value_map @ step for value_map in value_maps]
            rows = torch.cat([rows @ step, shift[None]])
        final = self.transformer.final_attn_token_to_image
        matrices["final.key"] = shared_map @ final.k_proj.weight.T
        matrices["final.value"] = shared_map @ final.v_proj.weight.T
        matrices["upscaling"] = shared_map @ self._upscaling_weight.T
        return _Plan(matrices, square_maps, shared_map)

    @torch.inference_mode()
    def prepare_image(self, image: torch.Tensor, key_pe: torch.Tensor) -> FactoredImage:
        """(1, N, C) image tokens and (1, N, C) positional encoding -> per-image products."""
        x, pe = image[0], key_pe[0]
        plan, heads = self._plan, self.heads
        names = list(plan.matrices)
        widths = [plan.matrices[name].shape[1] for name in names]
        stacked = x @ torch.cat([plan.matrices[name] for name in names], 1).to(x.dtype)
        products: dict[str, torch.Tensor] = {}
        for name, part in zip(names, stacked.split(widths, dim=1)):
            if name == "upscaling":
                products[name] = part.contiguous()  # (N, 4 c1)
            elif name.endswith(".rows"):
                products[name] = part.T.contiguous()  # (k, N)
            else:
                products[name] = _heads_last(part, heads)
        for index, layer in enumerate(self.layers):
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            # The key bias adds a constant per query over the image: it cancels in the softmax.
            products[f"{index}.key_pe"] = _heads_last(pe @ t2i.k_proj.weight.T, heads)
            products[f"{index}.query_pe"] = _heads_last(i2t.q_proj(pe), heads)
        final = self.transformer.final_attn_token_to_image
        products["final.key_pe"] = _heads_last(pe @ final.k_proj.weight.T, heads)
        # The first block meets the image with s = 1: its shared and PE parts add up.
        for kind in ("key", "query"):
            products[f"0.{kind}_with_pe"] = products[f"0.{kind}"] + products[f"0.{kind}_pe"]
        squares = [((x @ square.to(x.dtype)) ** 2).sum(1) for square in plan.square_maps]
        return FactoredImage(products, squares)

    @torch.inference_mode()
    def __call__(
        self, image: FactoredImage, tokens: torch.Tensor, read_tokens: list[int]
    ) -> tuple[torch.Tensor, FactoredKeys]:
        """Transformer on (B, T, C) tokens -> read tokens' outputs and the factored image tokens."""
        batch, count, channels = tokens.shape
        rows = (self.heads * count + 2) * len(self.layers)
        state = _Tokens(batch, rows, image.centred_squares[0].shape[0], channels, tokens)
        products = image.products
        query_pe = tokens
        queries = tokens
        for index, layer in enumerate(self.layers):
            if layer.skip_first_layer_pe:
                queries = layer.norm1(layer.self_attn(queries, queries, queries))
            else:
                q = queries + query_pe
                queries = layer.norm1(queries + layer.self_attn(q, q, queries))
            attn = layer.cross_attn_token_to_image
            update = self._token_to_image(attn, queries + query_pe, products, f"{index}", state)
            queries = layer.norm2(queries + update)
            queries = layer.norm3(queries + layer.mlp(queries))
            attn = layer.cross_attn_image_to_token
            weights, coef, folded = self._image_to_token(
                attn, queries + query_pe, queries, products, f"{index}", state
            )
            state.add_update(weights, coef, folded, attn.out_proj.bias)
            state.normalise(self._norm_statistics(image, index, state), layer.norm4)

        queries, query_pe = queries[:, read_tokens], query_pe[:, read_tokens]
        final = self.transformer.final_attn_token_to_image
        update = self._token_to_image(final, queries + query_pe, products, "final", state)
        assert state.scale is not None  # the transformer has at least one block
        keys = FactoredKeys(state.scale, state.low, state.values)
        return self.transformer.norm_final_attn(queries + update), keys

    def dense(self, image: torch.Tensor, keys: FactoredKeys) -> torch.Tensor:
        """The (B, N, C) image tokens that ``keys`` stand for; ``image`` (1, N, C) as prepared.

        For tests and debugging: decoding never forms them.
        """
        shared = image[0] @ self._plan.final_map.to(image.dtype)
        return keys.scale[..., None] * shared + keys.low.transpose(1, 2) @ keys.values

    def first_upscaling(self, image: FactoredImage, keys: FactoredKeys, j: int) -> torch.Tensor:
        """Prompt ``j``'s (N, 4 c1) first transposed convolution, from its factored tokens."""
        small = keys.values[j] @ self._upscaling_weight.T  # (r, 4 c1)
        out = torch.addmm(self._upscaling_bias, keys.low[j].T, small)
        return out.addcmul_(image.products["upscaling"], keys.scale[j][:, None])

    def _token_to_image(
        self, attn: Attention, tokens: torch.Tensor, products, name: str, state: _Tokens
    ) -> torch.Tensor:
        """(B, t, C) tokens attend to the factored image tokens (keys with PE, values without)."""
        heads, scale, low, values = self.heads, state.scale, state.low, state.values
        q = attn.q_proj(tokens)  # (B, t, I)
        b, t, i = q.shape
        d = i // heads
        q = q.view(b, t, heads, d).transpose(1, 2) * d**-0.5  # (B, h, t, d)
        scores = _shared_scores(q, products, f"{name}.key", scale)  # (B, h*t, N)
        if low.shape[1]:
            small_keys = (values @ attn.k_proj.weight.T).view(b, -1, heads, d)  # (B, r, h, d)
            folded = torch.einsum("bhtd,brhd->bhtr", q, small_keys).reshape(b, heads * t, -1)
            scores.baddbmm_(folded, low)
        weights = torch.softmax(scores.view(b, heads, t, -1), dim=-1)  # (B, h, t, N)
        scaled = weights if scale is None else weights * scale[:, None, None, :]
        mixed = heads_mix(scaled, products[f"{name}.value"])  # (B, t, h, d)
        if low.shape[1]:
            through_low = torch.bmm(weights.view(b, heads * t, -1), low.transpose(1, 2))
            small_values = (values @ attn.v_proj.weight.T).view(b, -1, heads, d)
            mixed = mixed + torch.einsum(
                "bhtr,brhd->bthd", through_low.view(b, heads, t, -1), small_values
            )
        mixed = mixed + attn.v_proj.bias.view(heads, d)
        return attn.out_proj(mixed.reshape(b, t, i))

    def _image_to_token(
        self,
        attn: Attention,
        token_keys: torch.Tensor,
        token_values: torch.Tensor,
        products,
        name: str,
        state: _Tokens,
    ):
        """Image tokens attend to tokens.

        Returns the (B, h*t, N) attention weights, the (B, h, t, d) token values and the
        (B, h*t, C) values with the output projection folded in.
        """
        heads, scale, low, values = self.heads, state.scale, state.low, state.values
        k = attn.k_proj(token_keys)
        b, t, i = k.shape
        d = i // heads
        k = k.view(b, t, heads, d).transpose(1, 2) * d**-0.5  # (B, h, t, d)
        scores = _shared_scores(k, products, f"{name}.query", scale)
        if low.shape[1]:
            small = (values @ attn.q_proj.weight.T).view(b, -1, heads, d)
            folded = torch.einsum("bhtd,brhd->bhtr", k, small).reshape(b, heads * t, -1)
            scores.baddbmm_(folded, low)
        weights = torch.softmax(scores.view(b, heads, t, -1), dim=2).view(b, heads * t, -1)
        v = attn.v_proj(token_values).view(b, t, heads, d).transpose(1, 2)  # (B, h, t, d)
        w_o = attn.out_proj.weight.view(-1, heads, d)  # (C, h, d)
        folded_values = torch.einsum("bhtd,chd->bhtc", v, w_o).reshape(b, heads * t, -1)
        return weights, v, folded_values

    def _norm_statistics(self, image: FactoredImage, index: int, state: _Tokens) -> torch.Tensor:
        """(B, N) reciprocal standard deviation of block ``index``'s norm input."""
        scale, low, values, coefs = state.scale, state.low, state.values, state.coefs
        products = image.products
        channels = values.shape[-1]
        eps = self.layers[index].norm4.eps
        row_means = values.mean(-1)  # (B, r)
        # G L + 2 s <shared centred part, value rows>, one block of rows at a time
        centred = values - row_means[..., None]
        gram = centred @ centred.transpose(1, 2)  # (B, r, r)
        terms = torch.bmm(gram, low)
        twice = low.new_full((1, 1, 1), 2.0) if scale is None else 2.0 * scale[:, None, :]
        fixed = products[f"{index}.rows"]  # (n_fixed, N): bias and shift rows
        start, taken = 0, 0
        for block, coef in enumerate(coefs):
            cross = heads_dot(coef, products[f"{index}.cross{block}"])  # (B, h*t, N)
            width = cross.shape[1]
            terms[:, start : start + width].addcmul_(cross, twice)
            start += width
            extra = 1 if block == len(coefs) - 1 else 2  # a bias row, then a shift row
            terms[:, start : start + extra].addcmul_(fixed[taken : taken + extra], twice)
            start, taken = start + extra, taken + extra
        low_part = terms.mul_(low).sum(1)
        square = image.centred_squares[index]
        total = low_part + (square if scale is None else scale * scale * square)
        var = (total / channels).clamp_min(0)
        return torch.rsqrt(var + eps)
