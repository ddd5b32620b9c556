import pytest
import torch
import torch.nn.functional as F

from napari_sam.engine.prediction.preprocess import resized_shape
from napari_sam.engine.prediction.upsampling import LogitUpsampler, axis_weights


def _reference(logits: torch.Tensor, original, resized, frame=1024) -> torch.Tensor:
    """Meta's postprocess_masks: to the padded frame, crop the padding, to the original."""
    x = F.interpolate(logits[:, None], (frame, frame), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    return F.interpolate(x, original, mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("original", [(512, 512), (300, 500), (1000, 37), (2000, 1500)])
def test_upsampler_equals_two_step_interpolation(original):
    # The reference runs in float64: in float32, torch's interpolate itself rounds its
    # source positions and is off by up to 1.3e-4 per unit of logit at 2000x1500, while
    # the upsampler's weights (computed in float64) stay within 1e-6.
    torch.manual_seed(0)
    logits = torch.randn(2, 256, 256) * 4  # SAM's logits span about -20..20
    resized = resized_shape(original, 1024)
    out = LogitUpsampler(original, resized, 1024)(logits)
    assert out.shape == (2, *original) and out.dtype == torch.float32
    exact = _reference(logits.double(), original, resized)
    assert (out.double() - exact).abs().max() < 1e-5
    # and it agrees with Meta's float32 computation to that computation's rounding
    assert (out - _reference(logits, original, resized)).abs().max() < 1e-3


def test_upsampler_for_a_256_pixel_encoder():
    # LiteMedSAM: the 256x256 logits already cover the 256-pixel frame
    torch.manual_seed(0)
    logits = torch.randn(1, 256, 256)
    original = (300, 180)
    resized = resized_shape(original, 256)
    out = LogitUpsampler(original, resized, 256)(logits)
    exact = _reference(logits.double(), original, resized, frame=256)
    assert (out.double() - exact).abs().max() < 1e-5


def test_axis_weights_are_sparse_and_sum_to_one():
    index, weight = axis_weights(256, 1024, 614, 300)
    assert index.shape == weight.shape
    assert index.shape[0] == 300 and index.shape[1] <= 4
    assert index.dtype == torch.int64 and weight.dtype == torch.float32
    torch.testing.assert_close(weight.sum(1), torch.ones(300))
    # the valid part of the frame is rows 0..613 of 1024, i.e. logits rows 0..~153
    assert int(index[weight != 0].max()) <= 154


def test_weights_are_made_once_per_geometry_and_left_unchanged_by_upsampling():
    first = axis_weights(256, 1024, 1024, 512)  # the rows and columns below
    saved = [t.clone() for t in first]
    torch.manual_seed(1)
    upsampler = LogitUpsampler((512, 512), (1024, 1024), 1024)
    out = upsampler(torch.randn(3, 256, 256))
    again = LogitUpsampler((512, 512), (1024, 1024), 1024)
    assert again.row_index is upsampler.row_index and again.col_weight is upsampler.col_weight
    for cached, before in zip(axis_weights(256, 1024, 1024, 512), saved):
        assert torch.equal(cached, before)
    # a second upsampler of the same geometry gives the same masks
    torch.manual_seed(1)
    assert torch.equal(again(torch.randn(3, 256, 256)), out)
