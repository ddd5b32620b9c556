import numpy as np
import pytest

from napari_sam.engine.prediction.planes import plane_layout, read_plane, stack_normalization
from napari_sam.errors import InvalidInputError


class CountingArray:
    """Array-like that records which planes were read (a stand-in for dask/zarr)."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


@pytest.mark.parametrize(
    "shape, channel_axis, stack, plane",
    [
        ((40, 50), False, (), (40, 50)),
        ((3, 40, 50), False, (3,), (40, 50)),
        ((2, 3, 40, 50), False, (2, 3), (40, 50)),
        ((40, 50, 3), True, (), (40, 50)),
        ((5, 40, 50, 3), True, (5,), (40, 50)),
    ],
)
def test_layouts(shape, channel_axis, stack, plane):
    layout = plane_layout(shape, channel_axis)
    assert layout.stack_shape == stack and layout.plane_shape == plane


def test_read_plane_reads_one_plane_only():
    volume = CountingArray(np.arange(4 * 6 * 7).reshape(4, 6, 7))
    layout = plane_layout(volume.shape)
    plane = read_plane(volume, layout, (2,))
    np.testing.assert_array_equal(plane, volume.data[2])
    assert volume.reads == [(2,)]


def test_stack_normalization_samples_few_planes_and_matches_whole_volume():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 100.0, size=(40, 64, 64)).astype(np.float32)
    volume = CountingArray(data)
    norm = stack_normalization(volume, plane_layout(data.shape), planes=8)
    assert len(volume.reads) == 8
    low, high = np.percentile(data, [0.5, 99.5])
    assert abs(norm.low - low) / low < 0.2 and abs(norm.high - high) / high < 0.05


@pytest.mark.parametrize(
    "shape, channel_axis, message",
    [((50,), False, "no 2D plane"), ((40, 3), True, "no 2D plane"), ((0, 40, 50), False, "empty")],
)
def test_bad_layouts(shape, channel_axis, message):
    with pytest.raises(InvalidInputError, match=message):
        plane_layout(shape, channel_axis)


@pytest.mark.parametrize("key", [(5,), (-1,), (1, 2), ()])
def test_bad_plane_keys(key):
    with pytest.raises(InvalidInputError, match="does not exist"):
        plane_layout((3, 10, 10)).check_key(key)
