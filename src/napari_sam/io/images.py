"""Reading 2D images and writing masks and label images.

TIFF goes through tifffile (the microscopy standard), PNG and JPEG through Pillow,
``.npy`` through numpy. Errors name the file and say what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_sam.errors import InvalidInputError

TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


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
        The file does not exist, has an unsupported suffix, or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"Image file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                return np.asarray(image)
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
    except Exception as error:  # decoders raise many types for a damaged file
        raise InvalidInputError(f"Cannot read {path} as an image: {error}") from error
    raise InvalidInputError(
        f"Unsupported image format {suffix!r} for {path}: use .tif, .png, .jpg, .bmp or .npy."
    )


def write_labels(path: str | Path, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a mask or label image as a zlib-compressed TIFF (or PNG/.npy by suffix).

    Raises
    ------
    InvalidInputError
        The file exists and ``overwrite`` is False, or the suffix is unsupported.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} already exists: choose another name or pass --overwrite.")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(path, labels, compression="zlib")
    elif suffix == ".png":
        from PIL import Image

        Image.fromarray(labels.astype(np.uint16 if labels.max() > 255 else np.uint8)).save(path)
    elif suffix == ".npy":
        np.save(path, labels)
    else:
        raise InvalidInputError(
            f"Unsupported output format {suffix!r} for {path}: use .tif, .png or .npy."
        )
    return path
