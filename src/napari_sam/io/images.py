"""Reading 2D images and writing masks and label images.

TIFF goes through tifffile (the microscopy standard), PNG and JPEG through Pillow,
``.npy`` through numpy. Errors name the file and say what was expected; a file that
exists but cannot be decoded or written is described by
:mod:`napari_sam.io.file_errors`, so every reader and writer words it alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_sam.errors import InvalidInputError
from napari_sam.io.file_errors import unreadable_file, unwritable_file

TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
LABEL_SUFFIXES = TIFF_SUFFIXES | {".png", ".npy"}
IMAGE_FORMATS = ".tif, .png, .jpg, .bmp or .npy"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into a numpy array.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.tif``/``.tiff``, ``.png``, ``.jpg``, ``.bmp`` or ``.npy`` file.

    Returns
    -------
    numpy.ndarray
        (rows, cols) or (rows, cols, channels) for 2D images; stacks keep their leading
        axes.

    Raises
    ------
    InvalidInputError
        The file does not exist, is a folder, has an unsupported suffix, or cannot be
        decoded (empty, truncated, or not of the format its suffix says).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(
            f"{path} is a folder, not an image file: read_image reads one {IMAGE_FORMATS} "
            "file; open a zarr store or OME-Zarr folder with napari_sam.io.volumes.open_volume."
        )
    if not path.is_file():
        raise InvalidInputError(f"Image file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            from napari_sam.io.tiff_files import open_tiff

            with open_tiff(path) as tif:
                return np.asarray(tif.asarray())
        if suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                return np.asarray(image)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
    except InvalidInputError:
        raise
    except Exception as error:  # decoders raise many types for a damaged file
        raise unreadable_file(path, format_name(path), error) from error
    raise InvalidInputError(f"Unsupported image format {suffix!r} for {path}: use {IMAGE_FORMATS}.")


def format_name(path: Path) -> str:
    """What a file's suffix says it is, as a message names it (``"a TIFF file"``)."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "a TIFF file"
    if suffix == ".npy":
        return "a numpy .npy file"
    return f"a {suffix.lstrip('.').upper()} image" if suffix else "an image"


def check_label_path(path: str | Path) -> Path:
    """Refuse, before any work, a mask or label output whose format cannot be written.

    Raises
    ------
    InvalidInputError
        The suffix is not ``.tif``/``.tiff``, ``.png`` or ``.npy``.
    """
    path = Path(path)
    if path.suffix.lower() not in LABEL_SUFFIXES:
        raise InvalidInputError(
            f"Unsupported output format {path.suffix!r} for {path}: use .tif, .png or .npy."
        )
    return path


def write_labels(path: str | Path, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a mask or label image as a zlib-compressed TIFF (or PNG/.npy by suffix).

    Raises
    ------
    InvalidInputError
        The file exists and ``overwrite`` is False, the suffix is unsupported, or the
        file cannot be written (no permission, a file where a folder should be, disk
        full).
    """
    path = check_label_path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} already exists: choose another name or pass --overwrite.")
    suffix = path.suffix.lower()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(path, labels, compression="zlib")
        elif suffix == ".png":
            from PIL import Image

            Image.fromarray(labels.astype(np.uint16 if labels.max() > 255 else np.uint8)).save(path)
        else:
            np.save(path, labels)
    except OSError as error:
        raise unwritable_file(path, error) from error
    return path
