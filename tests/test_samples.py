"""The bundled DSB2018 sample must equal the files it was copied from, value for value."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam.samples import load_dsb2018, make_dsb2018_sample, read_sample_file

# sha256 of `array.tobytes()` for stardist 0.9.2's img2d.tif and mask2d.tif (uint16,
# C order), computed from the wheel; see src/napari_sam/data/README.md.
IMAGE_SHA256 = "8952cab7611450bd761f81e14b95bdd197d5b17487ed98f6814fd35720e65963"
LABELS_SHA256 = "13ef0db2a960a93cf97cc419d9e02aa90038feb4b143fe6e0623bcfcc10ad5f4"


def _find_stardist_wheel() -> Path | None:
    """The stardist 0.9.2 wheel, from $NAPARI_SAM_STARDIST_WHEEL or the dev download folder."""
    candidates = [os.environ.get("NAPARI_SAM_STARDIST_WHEEL", "")]
    candidates += sorted(glob.glob("/tmp/dl/stardist-0.9.2-*.whl"))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


STARDIST_WHEEL = _find_stardist_wheel()
# The parity references shipped beside the repository (../shared in CI) hold the same pair.
REFERENCE_NPZ = Path(__file__).resolve().parents[1].parent / "shared/reference/dsb2018_vit_t.npz"


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_load_dsb2018_shapes_and_dtypes():
    image, labels = load_dsb2018()
    assert image.shape == (512, 512) and image.dtype == np.uint16
    assert labels.shape == (512, 512) and labels.dtype == np.int32


def test_load_dsb2018_matches_original_checksums():
    image, labels = load_dsb2018()
    assert _sha256(image) == IMAGE_SHA256
    assert _sha256(labels.astype(np.uint16)) == LABELS_SHA256


def test_load_dsb2018_statistics():
    image, labels = load_dsb2018()
    assert (image.min(), image.max()) == (0, 235)
    ids = np.unique(labels)
    assert len(ids) == 126  # background + 125 nuclei
    assert (ids[0], ids[-1]) == (0, 183)  # ids are not consecutive


@pytest.mark.skipif(STARDIST_WHEEL is None, reason="stardist 0.9.2 wheel not on this machine")
def test_load_dsb2018_equals_stardist_wheel():
    with zipfile.ZipFile(STARDIST_WHEEL) as wheel:
        original_image = tifffile.imread(io.BytesIO(wheel.read("stardist/data/images/img2d.tif")))
        original_labels = tifffile.imread(io.BytesIO(wheel.read("stardist/data/images/mask2d.tif")))
    image, labels = load_dsb2018()
    assert original_image.dtype == image.dtype
    np.testing.assert_array_equal(image, original_image)
    np.testing.assert_array_equal(labels, original_labels)


@pytest.mark.skipif(not REFERENCE_NPZ.is_file(), reason="../shared/reference not beside the clone")
def test_load_dsb2018_equals_parity_reference():
    reference = np.load(REFERENCE_NPZ)
    image, labels = load_dsb2018()
    np.testing.assert_array_equal(image, reference["image"])
    np.testing.assert_array_equal(labels, reference["labels"])


def test_make_dsb2018_sample_gives_image_then_labels_layer():
    (image, image_kwargs, image_type), (labels, labels_kwargs, labels_type) = make_dsb2018_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image_kwargs["name"] == "DSB2018 nuclei"
    assert labels_kwargs["name"] == "DSB2018 nuclei labels"
    expected_image, expected_labels = load_dsb2018()
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(labels, expected_labels)


def test_read_sample_file_unknown_name():
    with pytest.raises(FileNotFoundError, match="no_such_sample"):
        read_sample_file("no_such_sample.tif")
