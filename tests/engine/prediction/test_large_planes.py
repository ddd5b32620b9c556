"""Huge planes are normalised from a bounded sample, never read whole.

A 200000 x 200000 plane (80 GB as uint16) used to be read whole by the intensity
normalisation. Planes above ``LARGE_PLANE_PIXELS`` are now read in a grid of windows;
ordinary images keep exactly the mapping they had (numbers measured with the code before
this change on the bundled and the cells3d samples).
"""

from __future__ import annotations

import os
import threading
import tracemalloc

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_sam.engine.prediction import preprocess
from napari_sam.engine.prediction.planes import plane_layout, stack_normalization
from napari_sam.engine.prediction.preprocess import (
    SAMPLE_PIXELS,
    compute_normalization,
    window_grid,
)
from napari_sam.errors import InvalidInputError
from napari_sam.io.samples import load_dsb2018, samples_cache_dir

HUGE = 200_000
CHUNK = 2048  # 8 MiB of uint16 per chunk


def test_the_bundled_sample_keeps_its_mapping_exactly():
    image, _ = load_dsb2018()
    norm = compute_normalization(image)
    assert (norm.low, norm.high) == (6.0, 157.0)
    stack = np.stack([np.roll(image, 5 * z, axis=0) for z in range(10)])
    norm = stack_normalization(stack, plane_layout(stack.shape))
    assert (norm.low, norm.high) == (6.0, 157.0)


def test_the_cells3d_sample_keeps_its_mapping_exactly():
    path = samples_cache_dir() / "cells3d_nuclei.tif"
    if not path.is_file():  # `make test` fetches it: under CI a missing file is a failure
        message = f"cells3d is not cached in {path.parent} (run `make samples`)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    import tifffile

    volume = tifffile.imread(path)
    norm = compute_normalization(volume[30])
    assert (norm.low, norm.high) == (2371.0, 32530.0)
    norm = stack_normalization(volume, plane_layout(volume.shape))
    assert (norm.low, norm.high) == (2561.0, 25512.0)


def test_windows_estimate_the_percentiles_of_the_whole_plane(monkeypatch):
    image, _ = load_dsb2018()
    rng = np.random.default_rng(0)
    plane = np.block([[np.rot90(image, rng.integers(4)) for _ in range(6)] for _ in range(6)])
    exact = compute_normalization(plane)  # 9.4 Mpx: read whole
    monkeypatch.setattr(preprocess, "LARGE_PLANE_PIXELS", 1 << 20)
    reads = []

    class Recording:
        shape, dtype = plane.shape, plane.dtype

        def __getitem__(self, window):
            reads.append(window)
            return plane[window]

    sampled = compute_normalization(Recording())
    assert len(reads) == 64 and sum(plane[w].size for w in reads) == SAMPLE_PIXELS
    span = exact.high - exact.low
    assert abs(sampled.low - exact.low) <= 0.05 * span  # 6 and 6
    assert abs(sampled.high - exact.high) <= 0.05 * span  # 162 and 157: 3.3% of the span


@pytest.mark.parametrize(
    "shape, count, size",
    [
        ((HUGE, HUGE), 64, (256, 256)),
        ((100, 10**6), 64, (100, 256)),
        ((9000, 9000), 64, (256, 256)),
    ],
)
def test_window_grid_spreads_equal_windows_inside_the_plane(shape, count, size):
    grid = window_grid(shape, SAMPLE_PIXELS, 64)
    assert len(grid) == count
    for rows, cols in grid:
        assert (rows.stop - rows.start, cols.stop - cols.start) == size
        assert (
            0 <= rows.start and rows.stop <= shape[0] and 0 <= cols.start and cols.stop <= shape[1]
        )
    starts = sorted({(r.start, c.start) for r, c in grid})
    assert len(starts) == count  # no window twice
    if shape[0] > 8 * size[0]:  # 8 x 8, one centred in each cell of the grid
        assert {r.start for r, _ in grid} == {
            round((i + 0.5) * shape[0] / 8 - 128) for i in range(8)
        }


def _lazy_plane(computed: list) -> da.Array:
    """A 200000 x 200000 uint16 dask array whose chunks are made on demand (noise on a
    gradient), recording each chunk it makes."""
    lock = threading.Lock()

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        with lock:
            computed.append((r0, c0))
        rng = np.random.default_rng(r0 * 7 + c0)
        base = 1000 + (r0 + c0) // 400  # a slow gradient across the slide
        return (base + rng.integers(0, 200, (r1 - r0, c1 - c0))).astype(np.uint16)

    return da.map_blocks(
        block, chunks=((CHUNK,) * (HUGE // CHUNK) + (HUGE % CHUNK,),) * 2, dtype=np.uint16
    )


def test_a_lazy_200000_squared_plane_normalises_with_bounded_memory():
    computed: list = []
    plane = _lazy_plane(computed)
    tracemalloc.start()
    try:
        norm = compute_normalization(plane)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400 * 2**20  # the plane is 80 GB; its windows' chunks are 8 MiB each
    assert len(computed) <= 4 * 64  # each window lies in at most 4 chunks
    assert len(computed) < (HUGE // CHUNK) ** 2 / 30  # of 9409 chunks
    assert 1000 < norm.low < norm.high < 1000 + 2 * HUGE // 400 + 200


def test_a_stack_of_lazy_huge_planes_reads_windows_of_a_few_planes():
    computed: list = []
    plane = _lazy_plane(computed)
    stack = da.stack([plane] * 3)
    norm = stack_normalization(stack, plane_layout(stack.shape))
    assert len(computed) <= 3 * 4 * 16  # 16 windows in each of the 3 planes
    assert 1000 < norm.low < norm.high


def test_a_sparse_zarr_plane_is_sampled_and_the_error_says_so(tmp_path):
    plane = zarr.create_array(
        tmp_path / "slide.zarr",
        shape=(HUGE, HUGE),
        chunks=(CHUNK, CHUNK),
        dtype="uint16",
        fill_value=0,
    )
    plane[:CHUNK, :CHUNK] = 500  # the one written chunk, in a corner no window reaches
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidInputError,
            match=r"The image is constant in the 4,194,304 pixels sampled from 64 windows spread "
            r"over its 200000 x 200000 pixels \(every sampled pixel is 0\): there is nothing to "
            r"segment there\. If the data lies elsewhere, crop to it or pass Normalization",
        ):
            compute_normalization(plane)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400 * 2**20
    plane[12000:13000, 12000:13000] = np.arange(10**6, dtype=np.uint16).reshape(1000, 1000) % 3000
    norm = compute_normalization(plane)  # a window of the first cell now holds data
    assert norm.low == 0.0 and 0 < norm.high <= 2999
