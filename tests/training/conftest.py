"""Fixtures for the training tests: small labelled images and a tiny trainable SAM."""

from __future__ import annotations

import numpy as np
import pytest


def disc_labels(shape=(96, 96), centres=((24, 24), (24, 70), (70, 40), (66, 76)), radius=11):
    """(rows, cols) int32 labels with one disc per centre, ids 1..N."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, 1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


def disc_image(labels, seed=0):
    """A uint16 fluorescence-like image of the labels: bright objects, noise."""
    rng = np.random.default_rng(seed)
    image = 200 + 2000 * (labels > 0) + rng.normal(0, 60, labels.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="session")
def discs():
    """``(disc_labels, disc_image)``: the helpers above, for tests that build their own."""
    return disc_labels, disc_image


@pytest.fixture
def labelled_images():
    """Three small labelled images (different object layouts), one group each."""
    from napari_sam.training.datasets import images_from_arrays

    layouts = (
        ((24, 24), (24, 70), (70, 40), (66, 76)),
        ((30, 30), (60, 60), (30, 70)),
        ((20, 50), (50, 20), (75, 75), (50, 50)),
    )
    images = []
    for index, centres in enumerate(layouts):
        labels = disc_labels(centres=centres)
        images += images_from_arrays(disc_image(labels, index), labels, name=f"discs{index}")
    return images


@pytest.fixture
def trainable(tiny_architecture):
    """A fresh tiny trainable SAM (seed 0) per test: tests change its weights."""
    from napari_sam.training.network import load_trainable
    from tiny_sam import random_model

    return load_trainable(random_model(tiny_architecture, seed=0))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on our shared 2-core machines it was faster than two for the
    full-size decoder of the tiny SAM, and it leaves a core to the rest of the suite."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
