"""Shared fixtures: a tiny SAM with seeded random weights, images, an isolated cache, and
the data the tests read but do not make (Meta's reference outputs, the default weights).

The tiny SAM is built from the package's real modules (only the image encoder is
shrunk: width 32, two blocks, windowed attention only, since global attention over
64x64 tokens is slow), so shapes, coordinates and error paths are those of the real
models while every test stays fast on a CPU. Missing data fails a test under CI and skips
it elsewhere, reported once at the end of the session (tests/reference_data.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from reference_data import MissingData, missing_default_weights, missing_reference, reference_folder
from tiny_sam import tiny_architecture as _tiny_architecture

TINY_ARCHITECTURE = _tiny_architecture()
MISSING_DATA = pytest.StashKey[MissingData]()
# "auto" stays fp32 in the whole suite (and in the processes it starts), so that results
# do not depend on whether the machine running it has AMX; bf16 is tested by name, and
# auto's choice with faked CPUs (engine/model/test_precision.py).
os.environ["NAPARI_SAM_NO_AUTO_BF16"] = "1"


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
def reference_dir(request) -> Path:
    """The folder of Meta's reference outputs (see tests/reference_data.py).

    Missing: the test fails under CI and is skipped elsewhere, with one report at the end.
    """
    folder = reference_folder()
    _missing_data(request.config).require(missing_reference(folder))
    return folder


@pytest.fixture(scope="session")
def default_weights(request) -> Path:
    """The cached, verified file of the default model's weights (missing: as reference_dir)."""
    from napari_sam.engine.model import DEFAULT_MODEL
    from napari_sam.engine.model.registry import MODELS
    from napari_sam.engine.model.weights import weights_path

    _missing_data(request.config).require(missing_default_weights())
    return weights_path(MODELS[DEFAULT_MODEL])


@pytest.fixture(scope="session")
def dsb_every_point(default_weights, reference_dir):
    """(fp32 predictor, embedding, candidates): the reference DSB2018 image with every grid
    point decoded (30 s), once per test run for the segment-everything quality and the
    bf16 parity tests, which both need it."""
    from napari_sam.engine.everything.segmenter import AutomaticSegmenter
    from napari_sam.engine.everything.settings import EverythingSettings
    from napari_sam.engine.prediction.predictor import Predictor

    image = np.load(reference_dir / "dsb2018_vit_t.npz")["image"]
    predictor = Predictor("vit_t", device="cpu", precision="fp32")
    embedding = predictor.encode(image)
    segmenter = AutomaticSegmenter(predictor, EverythingSettings().every_point())
    plane = np.zeros(embedding.original_size)
    return predictor, embedding, segmenter.initialise(plane, embed=lambda window: embedding)


def _missing_data(config) -> MissingData:
    return config.stash.setdefault(MISSING_DATA, MissingData())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say once, after the run, which tests were skipped for want of data and how to run them."""
    lines = _missing_data(config).report(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.section("tests skipped for missing data", sep="-", yellow=True)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cells3d_cache(default_weights, tmp_path_factory):
    """(cache folder, volume, labels): the cells3d nuclei with every plane's embedding in an
    embedding cache, encoded once per test run and shared by the propagation tests."""
    from napari_sam.batch.embedding import embed_volume, open_cached_session
    from napari_sam.io.samples import load_cells3d_nuclei

    volume, labels = load_cells3d_nuclei()
    path = tmp_path_factory.mktemp("cells3d") / "cells3d.emb"
    embed_volume(open_cached_session(volume, path, capacity=2))
    return path, volume, labels


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
