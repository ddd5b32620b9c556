"""The factored transformer against SAM's two-way transformer, with every norm made non-trivial.

The random tiny model's layer norms start as gain 1 and shift 0, which would hide a wrong
gain or centring in the expansion; these tests draw them, and give the image tokens a
large mean per token, so that each term of the expanded statistics matters.
"""

import copy

import pytest
import torch

from napari_sam.engine.network.factored_transformer import FactoredTransformer, heads_dot
from napari_sam.engine.network.fast_decoder import FastDecoder
from napari_sam.engine.network.fast_upscaling import channel_last_transposed_conv


@pytest.fixture(scope="module")
def decoder_parts(tiny_model):
    torch.manual_seed(11)
    sam = copy.deepcopy(tiny_model.module)
    with torch.no_grad():
        for module in sam.mask_decoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
                module.bias.copy_(0.3 * torch.randn_like(module.bias))
    with torch.inference_mode():
        embedding = torch.randn(1, 256, 64, 64) * 0.2 + torch.randn(1, 1, 64, 64)
        pe = sam.prompt_encoder.dense_positional_encoding()
        coords = torch.rand(5, 2, 2) * 1000
        labels = torch.tensor([[1, 0]] * 5)
        sparse, _ = sam.prompt_encoder((coords, labels), None, None)
    return sam, embedding, pe, sparse


def _reference(sam, embedding, pe, tokens):
    """The plain transformer's queries and image tokens."""
    transformer = sam.mask_decoder.transformer
    keys = embedding.flatten(2).transpose(1, 2).expand(tokens.shape[0], -1, -1)
    key_pe = pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in transformer.layers:
        queries, keys = layer(queries, keys, tokens, key_pe)
    q, k = queries + tokens, keys + key_pe
    final = transformer.final_attn_token_to_image(q, k, keys)
    return transformer.norm_final_attn(queries + final), keys


def test_factored_transformer_equals_two_way_transformer(decoder_parts):
    sam, embedding, pe, sparse = decoder_parts
    decoder = sam.mask_decoder
    no_mask = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    with torch.inference_mode():
        image = embedding + no_mask
        tokens = torch.cat(
            [
                torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).expand(5, -1, -1),
                sparse,
            ],
            dim=1,
        )
        expected, expected_keys = _reference(sam, image, pe, tokens)
        factored = FactoredTransformer(
            decoder.transformer, channel_last_transposed_conv(decoder.output_upscaling[0])
        )
        flat = image.flatten(2).transpose(1, 2)
        shared = factored.prepare_image(flat, pe.flatten(2).transpose(1, 2))
        read = list(range(tokens.shape[1]))
        queries, keys = factored(shared, tokens, read)
        dense = factored.dense(flat, keys)
    torch.testing.assert_close(queries, expected, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(dense, expected_keys, atol=2e-4, rtol=2e-4)


def test_fast_decoder_with_drawn_norms_equals_mask_decoder(decoder_parts):
    sam, embedding, pe, sparse = decoder_parts
    fast = FastDecoder(sam.mask_decoder)
    no_mask = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    with torch.inference_mode():
        dense = no_mask.expand(sparse.shape[0], -1, 64, 64)
        logits, iou = sam.mask_decoder(embedding, pe, sparse, dense)
        shared = fast.prepare(embedding, pe, no_mask)
        plain = fast.prepare(embedding, pe, no_mask, shared=False)
        assert shared.factored == {} and plain.factored is None
        for context in (shared, plain, shared):
            fast_logits, fast_iou = fast(context, sparse, slice(0, 4))
            assert (fast_logits - logits).abs().max() < 2e-4 * float(logits.abs().max())
            torch.testing.assert_close(fast_iou, iou, atol=1e-4, rtol=1e-4)
        assert "image" in shared.factored  # a batch of 5 made the factored products
        # a single prompt keeps the direct path on a fresh context
        single = fast.prepare(embedding, pe, no_mask)
        one_logits, _ = fast(single, sparse[:1], slice(0, 4))
        assert single.factored == {}
        assert (one_logits - logits[:1]).abs().max() < 2e-4 * float(logits.abs().max())


def test_heads_dot_contracts_each_head_with_its_own_block():
    torch.manual_seed(2)
    coef = torch.randn(3, 4, 5, 6)  # (B, h, t, d)
    shared = torch.randn(4, 6, 7)  # (h, d, N)
    out = heads_dot(coef, shared)
    expected = torch.einsum("bhtd,hdn->bhtn", coef, shared).reshape(3, 20, 7)
    torch.testing.assert_close(out, expected)
