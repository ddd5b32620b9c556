import math

import pytest
import torch

from napari_sam.engine.network.vit_encoder import (
    Attention,
    Block,
    PatchEmbed,
    ViTConfig,
    ViTImageEncoder,
    merge_windows,
    partition_windows,
    relative_position_table,
)

SMALL = ViTConfig(
    embed_dim=16, depth=2, num_heads=2, global_blocks=(1,), img_size=128, window_size=4
)


def test_relative_position_table_indexes_by_offset():
    table = torch.arange(2 * 5 - 1, dtype=torch.float32)[:, None] * torch.tensor([1.0, 10.0])
    out = relative_position_table(5, table)
    assert out.shape == (5, 5, 2)
    for i in range(5):
        for j in range(5):
            torch.testing.assert_close(out[i, j], table[i - j + 4])


def test_relative_position_table_resizes_a_table_of_other_length():
    table = torch.full((7, 3), 2.5)  # made for 4 tokens, used for 6
    out = relative_position_table(6, table)
    assert out.shape == (6, 6, 3)
    torch.testing.assert_close(out, torch.full((6, 6, 3), 2.5))


def test_partition_and_merge_windows_round_trip_with_padding():
    x = torch.arange(2 * 10 * 13 * 3, dtype=torch.float32).view(2, 10, 13, 3)
    windows, hp, wp = partition_windows(x, 4)
    assert (hp, wp) == (12, 16)
    assert windows.shape == (2 * 3 * 4, 4, 4, 3)
    torch.testing.assert_close(windows[0], x[0, :4, :4])
    torch.testing.assert_close(windows[1], x[0, :4, 4:8])  # windows go along a row first
    torch.testing.assert_close(windows[4], x[0, 4:8, :4])
    # the last window of image 0 holds rows 8..9 and col 12; the rest is zero padding
    torch.testing.assert_close(windows[11, :2, 0], x[0, 8:10, 12])
    assert windows[11, 2:].abs().sum() == 0 and windows[11, :, 1:].abs().sum() == 0
    assert torch.equal(merge_windows(windows, 4, (hp, wp), (10, 13)), x)


def _reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Meta's segment-anything attention with decomposed relative positions, written out."""
    b, h, w, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    rel_h = relative_position_table(h, attn.rel_pos_h)
    rel_w = relative_position_table(w, attn.rel_pos_w)
    r_q = q.reshape(b * heads, h, w, -1)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w)
    scores = (
        scores.view(b * heads, h, w, h, w) + bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    ).view(b * heads, h * w, h * w)
    out = (scores.softmax(dim=-1) @ v).view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4)
    return attn.proj(out.reshape(b, h, w, -1))


def test_attention_matches_reference_with_relative_positions():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2, token_grid=5)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
        x = torch.randn(2, 5, 5, 16)
        out = attn(x)
        expected = _reference_attention(attn, x)
    assert out.shape == (2, 5, 5, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the relative-position bias matters: the same layer without it differs
    with torch.no_grad():
        attn.rel_pos_h.zero_()
        attn.rel_pos_w.zero_()
        assert (attn(x) - out).abs().max() > 1e-2


@pytest.mark.parametrize("window", [4, 0])
def test_block_keeps_the_token_grid_shape(window):
    torch.manual_seed(0)
    block = Block(SMALL, window)
    x = torch.randn(2, 6, 9, 16)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 6, 9, 16)
    expected_table = 2 * (window or SMALL.img_size // SMALL.patch_size) - 1
    assert block.attn.rel_pos_h.shape == (expected_table, 8)


def test_windowed_block_only_mixes_tokens_within_a_window():
    torch.manual_seed(0)
    block = Block(SMALL, 4).eval()
    x = torch.randn(1, 8, 8, 16)
    changed = x.clone()
    changed[0, 7, 7] += 1.0  # bottom-right window only
    with torch.no_grad():
        diff = (block(changed) - block(x)).abs().amax(-1)[0]
    assert diff[4:, 4:].max() > 0
    assert diff[:4].max() == 0 and diff[:, :4].max() == 0


def test_patch_embed_shape():
    embed = PatchEmbed(16, 24)
    assert embed(torch.zeros(2, 3, 64, 96)).shape == (2, 4, 6, 24)


def test_small_vit_encoder_output_shape():
    torch.manual_seed(0)
    encoder = ViTImageEncoder(SMALL).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 128, 128))
    grid = SMALL.img_size // SMALL.patch_size
    assert out.shape == (2, 256, grid, grid)
    assert [b.window_size for b in encoder.blocks] == [4, 0]
    # the neck ends with a LayerNorm2d of unit weight: each pixel is normalised
    torch.testing.assert_close(out.mean(1), torch.zeros(2, grid, grid), atol=1e-5, rtol=0)
    assert math.isclose(float(out.pow(2).mean()), 1.0, rel_tol=1e-3)
    assert not torch.allclose(out[0], out[1])
