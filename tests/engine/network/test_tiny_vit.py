import pytest
import torch

from napari_sam.engine.network.tiny_vit import (
    MBConv,
    PatchEmbed,
    PatchMerging,
    TinyViTBlock,
    TinyViTConfig,
    TinyViTImageEncoder,
    WindowAttention,
)

# MobileSAM's layout at a small scale: the last width 320 keeps its stage's resolution.
SMALL = {
    "embed_dims": (16, 32, 40, 320),
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 2, 2, 4),
    "window_sizes": (7, 7, 14, 7),
    "classifier_classes": 0,
}


@pytest.mark.parametrize(("kernel", "side"), [(3, 8), (1, 32)])
def test_patch_embed_stems(kernel, side):
    stem = PatchEmbed(16, kernel)
    assert stem(torch.zeros(2, 3, 32, 32)).shape == (2, 16, side, side)


def test_mbconv_keeps_shape():
    torch.manual_seed(0)
    assert MBConv(16, 4.0).eval()(torch.randn(2, 16, 9, 9)).shape == (2, 16, 9, 9)


@pytest.mark.parametrize(("out_dim", "tokens"), [(32, 16), (320, 64)])
def test_patch_merging_halves_the_grid_except_for_width_320(out_dim, tokens):
    torch.manual_seed(0)
    merge = PatchMerging(8, 16, out_dim).eval()
    as_tokens = torch.randn(2, 64, 16)
    as_grid = as_tokens.transpose(1, 2).reshape(2, 16, 8, 8)
    with torch.no_grad():
        out = merge(as_tokens)
        assert out.shape == (2, tokens, out_dim)
        torch.testing.assert_close(merge(as_grid), out)


def test_window_attention_bias_index_counts_distinct_offsets():
    attn = WindowAttention(16, 2, 3)
    assert attn.attention_biases.shape == (2, 9)  # (|drow|, |dcol|) in {0, 1, 2}^2
    index = attn.bias_index
    assert index.shape == (9, 9)
    assert torch.equal(index, index.T)
    assert torch.equal(index.diagonal(), torch.zeros(9, dtype=torch.long))
    assert index[0, 8] == index[2, 6]  # (0,0)-(2,2) and (0,2)-(2,0): offset (2, 2)
    assert index[0, 1] != index[0, 3]  # offsets (0, 1) and (1, 0) differ


def test_window_attention_matches_mobile_sam_formula():
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, 3)
    with torch.no_grad():
        attn.attention_biases.normal_()
        x = torch.randn(4, 9, 16)
        out = attn(x)
        # MobileSAM's TinyViT Attention, written out (attn_ratio 1, key_dim 8)
        b, n, c = x.shape
        qkv = attn.qkv(attn.norm(x)).view(b, n, 2, -1)
        q, k, v = qkv.split([8, 8, 8], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        scores = (q @ k.transpose(-2, -1)) * 8**-0.5 + attn.attention_biases[:, attn.bias_index]
        expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))
    assert out.shape == (4, 9, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("side", "window"), [(6, 4), (4, 4)])
def test_tiny_vit_block_keeps_shape_with_and_without_padding(side, window):
    torch.manual_seed(0)
    block = TinyViTBlock(16, side, 2, window, 4.0).eval()
    with torch.no_grad():
        out = block(torch.randn(2, side * side, 16))
    assert out.shape == (2, side * side, 16)


@pytest.mark.parametrize(("kernel", "img_size"), [(3, 128), (1, 32)])
def test_small_tiny_vit_encoder_output_shape(kernel, img_size):
    torch.manual_seed(0)
    config = TinyViTConfig(img_size=img_size, stem_kernel=kernel, **SMALL)
    encoder = TinyViTImageEncoder(config).eval()
    assert encoder.out_resolution == 8
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, img_size, img_size))
    assert out.shape == (2, 256, 8, 8)
    assert not torch.allclose(out[0], out[1])


def test_classifier_head_only_when_asked():
    with torch.device("meta"):
        with_head = TinyViTImageEncoder(
            TinyViTConfig(img_size=128, **{**SMALL, "classifier_classes": 10})
        )
        without = TinyViTImageEncoder(TinyViTConfig(img_size=128, **SMALL))
    assert with_head.head.weight.shape == (10, 320)
    assert not hasattr(without, "head") and not hasattr(without, "norm_head")
    assert not any("head" in key for key in without.state_dict())
