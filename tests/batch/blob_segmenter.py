"""A model-free stand-in for segment_plane, for the store tests: bright blobs are objects.

Fast and deterministic, so the tests can count objects exactly; a module-level function,
so a subprocess (or a dask worker) imports it by reference. ``NAPARI_SAM_TEST_SLICE_DELAY``
(seconds) slows each slice down, so that a second run or a kill can land mid-run.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
from skimage.measure import label as connected_components

from napari_sam.batch.everything import StackSummary, segment_stack
from napari_sam.batch.settings import Execution, StackSettings
from napari_sam.batch.tasks import StackSource
from napari_sam.engine.everything.linking import LinkingSettings
from tiny_sam import random_model, tiny_architecture

DEFAULT_LINKING = LinkingSettings()


@dataclass(frozen=True)
class BlobSettings:
    """Settings of the stand-in (recorded in the store's signature like EverythingSettings)."""

    threshold: int = 100  # grey level (0..255 after normalisation) of an object pixel

    def to_dict(self) -> dict:
        return asdict(self)


def blob_segmenter(predictor, plane, normalization, settings, *, tile=None, halo=0):
    """Connected bright regions of the normalised plane, numbered 1..n (int32)."""
    grey = normalization.apply(plane)[..., 0]
    labels = connected_components(grey > settings.threshold).astype(np.int32)
    time.sleep(float(os.environ.get("NAPARI_SAM_TEST_SLICE_DELAY", "0")))
    return type("Segmentation", (), {"labels": labels})


@functools.cache
def tiny_factory():
    return functools.partial(random_model, tiny_architecture(), seed=0)


def run_blobs(
    source: str | Path,
    out: str | Path,
    settings: BlobSettings = BlobSettings(),
    linking: LinkingSettings | None = DEFAULT_LINKING,
    **options,
) -> StackSummary:
    """segment_stack with the stand-in, in this process on one torch thread."""
    stack_settings = StackSettings(model=tiny_factory(), settings=settings, linking=linking)
    return segment_stack(
        StackSource(str(source)),
        out,
        stack_settings,
        Execution(threads=1),
        segmenter=blob_segmenter,
        **options,
    )


def write_stack(path: Path, slices: int, seed: int = 4, shape=(64, 80)) -> Path:
    """A (slices, 64, 80) uint16 ZYX TIFF of blobs drifting along z (2D when slices is 0)."""
    base = blobs(shape, seed)
    if slices == 0:
        tifffile.imwrite(path, base, metadata={"axes": "YX"})
        return path
    stack = np.stack([np.roll(base, z, axis=0) for z in range(slices)])
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Gaussian spots on a jittered 3 x 4 grid, apart, on a dim noisy background, uint16."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 200.0)
    for r in (np.arange(3) + 0.5) * shape[0] / 3:
        for c in (np.arange(4) + 0.5) * shape[1] / 4:
            r0, c0 = r + rng.uniform(-3, 3), c + rng.uniform(-3, 3)
            radius = rng.uniform(2.5, 4)
            image += 3000 * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * radius**2))
    image += rng.normal(0, 30, shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


def subprocess_environment(delay: float) -> dict:
    """The environment of a child that imports this module and the tests' helpers."""
    tests = Path(__file__).parents[1]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(tests)]),
        "NAPARI_SAM_TEST_SLICE_DELAY": str(delay),
    }
