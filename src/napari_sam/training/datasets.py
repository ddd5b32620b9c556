"""Labelled images for training and evaluation: image + instance-label pairs.

A :class:`LabelledImage` is one 2D plane with its instance labels (0 = background). They
come from numpy arrays or napari layers (:func:`images_from_arrays`; a 3D pair becomes
its planes), from files (TIFF, zarr, OME-Zarr, PNG, .npy: :func:`images_from_files`), or
from a folder and a glob pattern (:func:`images_from_folder`). Planes of one volume share
one intensity normalisation and are grouped in contiguous z-blocks, so that
:func:`split_images` holds out whole images or whole z-ranges, never single objects of an
image it trains on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.prediction.preprocess import Normalization, compute_normalization
from napari_sam.errors import InvalidInputError

Z_BLOCK = 5  # planes of a volume per split group: held-out planes are contiguous


@dataclass(frozen=True, eq=False)
class LabelledImage:
    """One 2D image and its instance labels."""

    image: np.ndarray  # (rows, cols) or (rows, cols, channels), any real dtype
    labels: np.ndarray  # (rows, cols) integer, 0 = background, one id per object
    name: str  # shown in reports, e.g. "cells3d[z=12]"
    normalization: Normalization  # intensity mapping to SAM's uint8 input
    group: str  # images with the same group are split together

    @property
    def key(self) -> str:
        """A content hash of pixels and normalisation (names the cached embedding)."""
        digest = hashlib.sha1(np.ascontiguousarray(self.image).tobytes())
        digest.update(repr((self.image.shape, str(self.image.dtype), self.normalization)).encode())
        return digest.hexdigest()[:20]

    def object_ids(self, min_area: int = 1) -> np.ndarray:
        """(N,) int64 ids of the objects with at least ``min_area`` pixels, sorted."""
        ids, counts = np.unique(self.labels, return_counts=True)
        keep = (ids != 0) & (counts >= min_area)
        return ids[keep].astype(np.int64)


def make_labelled_image(
    image: np.ndarray,
    labels: np.ndarray,
    name: str,
    normalization: Normalization | None = None,
    group: str | None = None,
    channel: int | None = None,
) -> LabelledImage:
    """Check one image + labels pair and wrap it.

    Parameters
    ----------
    image : numpy.ndarray, shape (rows, cols) or (rows, cols, channels)
    labels : numpy.ndarray, shape (rows, cols), integer
    name : str
    normalization : Normalization, optional
        Computed from the image (0.5/99.5 percentiles) when omitted.
    group : str, optional
        Split group; the name by default.
    channel : int, optional
        Channel to use for images with other than 1 or 3 channels.

    Raises
    ------
    InvalidInputError
        Shapes differ, labels are not integers, or the labels hold no object.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim != 2 or image.shape[:2] != labels.shape:
        raise InvalidInputError(
            f"{name}: labels must have the image's (rows, cols) shape; got image "
            f"{image.shape} and labels {labels.shape}."
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InvalidInputError(
            f"{name}: labels must be integers (one id per object, 0 = background); got "
            f"dtype {labels.dtype}. Convert with labels.astype(np.int32) if they are ids."
        )
    if not labels.any():
        raise InvalidInputError(f"{name}: the labels hold no object (all zero).")
    normalization = normalization or compute_normalization(image, channel=channel)
    return LabelledImage(image, labels.astype(np.int64), name, normalization, group or name)


def images_from_arrays(
    image: np.ndarray,
    labels: np.ndarray,
    name: str = "image",
    z_range: tuple[int, int] | None = None,
    channel: int | None = None,
) -> list[LabelledImage]:
    """Labelled planes from an in-memory pair (numpy arrays, napari layer data).

    Parameters
    ----------
    image : numpy.ndarray, shape (rows, cols[, channels]) or (z, rows, cols[, channels])
    labels : numpy.ndarray, shape (rows, cols) or (z, rows, cols)
        A 3D ``labels`` makes ``image`` a volume; planes without objects are skipped.
    name : str
    z_range : (int, int), optional
        ``[start, stop)`` planes of a volume to take.
    channel : int, optional
        Channel of multichannel data.

    Returns
    -------
    list of LabelledImage
        Planes of one volume share one normalisation (computed from the whole range)
        and are grouped in blocks of contiguous planes.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim == 2:
        if z_range is not None:
            raise InvalidInputError(f"{name}: z_range needs a 3D pair; the labels are 2D.")
        return [make_labelled_image(image, labels, name, channel=channel)]
    if labels.ndim != 3 or image.shape[:3] != labels.shape:
        raise InvalidInputError(
            f"{name}: expected labels (rows, cols) or (z, rows, cols) matching the image; "
            f"got image {image.shape} and labels {labels.shape}."
        )
    start, stop = _check_range(z_range, labels.shape[0], name)
    normalization = compute_normalization(_sample_planes(image[start:stop]), channel=channel)
    planes = []
    for z in range(start, stop):
        if labels[z].any():
            group = f"{name}[z{(z - start) // Z_BLOCK * Z_BLOCK + start}]"
            planes.append(
                make_labelled_image(image[z], labels[z], f"{name}[z={z}]", normalization, group)
            )
    if not planes:
        raise InvalidInputError(f"{name}: no plane in z {start}..{stop - 1} holds an object.")
    return planes


def images_from_files(
    image_path: str | Path,
    labels_path: str | Path,
    z_range: tuple[int, int] | None = None,
    channel: int | None = None,
    key: str | None = None,
) -> list[LabelledImage]:
    """Labelled planes from an image file and its labels file (TIFF, zarr, PNG, .npy).

    Parameters
    ----------
    image_path, labels_path : str or pathlib.Path
    z_range, channel
        As in :func:`images_from_arrays`.
    key : str, optional
        Series (TIFF) or array path (zarr) inside both files.
    """
    image = _read_array(image_path, key)
    labels = _read_array(labels_path, key)
    return images_from_arrays(image, labels, Path(image_path).stem, z_range, channel)


def images_from_folder(
    folder: str | Path,
    pattern: str = "*.tif",
    label_suffix: str = "_labels",
    channel: int | None = None,
) -> list[LabelledImage]:
    """Every image matching ``pattern`` whose labels lie beside it as ``STEM{suffix}.EXT``.

    Parameters
    ----------
    folder : str or pathlib.Path
    pattern : str
        Glob pattern relative to ``folder``; ``"**/*.tif"`` searches subfolders.
    label_suffix : str
        Added to an image's stem to name its labels file (same extension).

    Raises
    ------
    InvalidInputError
        The folder does not exist, no image matches, or an image has no labels file.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder.")
    paths = sorted(p for p in root.glob(pattern) if not p.stem.endswith(label_suffix))
    if not paths:
        raise InvalidInputError(
            f"No image matches {pattern!r} in {root} (label files ending in "
            f"{label_suffix!r} are skipped). Pass another pattern."
        )
    missing = [p.name for p in paths if not _labels_beside(p, label_suffix).exists()]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} image(s) in {root} have no labels file named "
            f"STEM{label_suffix}.EXT beside them: {', '.join(missing[:5])}."
        )
    images = []
    for path in paths:
        images += images_from_files(path, _labels_beside(path, label_suffix), channel=channel)
    return images


def split_images(
    images: list[LabelledImage], fraction: float, seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split by whole groups: (kept, held out), about ``fraction`` of the groups held out.

    Raises
    ------
    InvalidInputError
        ``fraction`` is outside (0, 1) or there are fewer than two groups.
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidInputError(f"The held-out fraction must be in (0, 1); got {fraction}.")
    groups = sorted({image.group for image in images})
    if len(groups) < 2:
        raise InvalidInputError(
            f"Cannot hold out whole images: all {len(images)} image(s) form one group. "
            "Give more images (or more planes of a volume), or no validation split."
        )
    count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(np.random.default_rng(seed).choice(groups, size=count, replace=False).tolist())
    return (
        [image for image in images if image.group not in held],
        [image for image in images if image.group in held],
    )


def _check_range(z_range, depth: int, name: str) -> tuple[int, int]:
    start, stop = z_range if z_range is not None else (0, depth)
    if not 0 <= start < stop <= depth:
        raise InvalidInputError(f"{name}: z_range {z_range} does not fit planes 0..{depth - 1}.")
    return int(start), int(stop)


def _sample_planes(volume: np.ndarray) -> np.ndarray:
    """At most 8 evenly spaced planes side by side, for one normalisation of a volume."""
    picks = np.linspace(0, len(volume) - 1, min(8, len(volume))).round().astype(int)
    return np.concatenate([volume[i] for i in picks], axis=0)


def _labels_beside(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


def _read_array(path: str | Path, key: str | None) -> np.ndarray:
    from napari_sam.io.images import read_image
    from napari_sam.io.volumes import open_volume

    path = Path(path).expanduser()
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist.")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".npy"):
        return np.asarray(read_image(path))
    return np.asarray(open_volume(path, key=key).planes_view())
