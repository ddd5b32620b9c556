"""Shared fixtures: a tiny SAM with seeded random weights, images, an isolated cache.

The tiny SAM is built from the package's real modules (only the image encoder is
shrunk: width 32, two blocks, windowed attention only, since global attention over
64x64 tokens is slow), so shapes, coordinates and error paths are those of the real
models while every test stays fast on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tiny_sam import tiny_architecture as _tiny_architecture

TINY_ARCHITECTURE = _tiny_architecture()


@pytest.fixture(scope="session")
def tiny_architecture():
    """The tiny architecture, to build more models (e.g. with another seed)."""
    return TINY_ARCHITECTURE


@pytest.fixture(scope="session")
def make_image():
    """``make_image(shape, seed)``: a uint16 image of blobs, for other geometries."""
    return _blobs


@pytest.fixture(scope="session")
def tiny_model():
    """A :class:`SamModel` with the tiny architecture and seed 0 (shared; never mutate)."""
    from tiny_sam import random_model

    return random_model(TINY_ARCHITECTURE, seed=0)


@pytest.fixture(scope="session")
def image_300x500() -> np.ndarray:
    """A (300, 500) uint16 image: smooth blobs plus noise, wider than tall."""
    return _blobs((300, 500), seed=1)


@pytest.fixture(scope="session")
def predictor_300x500(tiny_model, image_300x500):
    """A predictor holding the embedding of ``image_300x500`` (read-only use)."""
    from napari_sam.engine.prediction.predictor import Predictor

    predictor = Predictor(tiny_model)
    predictor.set_image(image_300x500)
    return predictor


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (or ``$NAPARI_SAM_REFERENCE``): Meta's reference outputs.

    Tests that need it skip when it is absent, except under CI, where it must be present.
    """
    repo = Path(__file__).resolve().parents[1]
    folder = Path(os.environ.get("NAPARI_SAM_REFERENCE", repo.parent / "shared" / "reference"))
    if not (folder / "dsb2018_vit_t.npz").is_file():
        if os.environ.get("CI"):
            raise RuntimeError(f"CI needs the reference outputs in {folder}")
        pytest.skip(f"reference outputs not found in {folder}")
    return folder


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Point ``NAPARI_SAM_CACHE`` at an empty temporary folder."""
    from napari_sam.engine.model.weights import CACHE_ENV

    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Gaussian spots on a dim background with Poisson-like noise, uint16."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 200.0)
    for _ in range(12):
        r, c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius = rng.uniform(8, 25)
        image += 3000 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * radius**2))
    image += rng.normal(0, 30, shape)
    return np.clip(image, 0, 65535).astype(np.uint16)
