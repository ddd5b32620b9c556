"""Opening a TIFF file so that a damaged one is an error, not a smaller image.

tifffile opens a file whose page index is cut short (a copy interrupted, a file still
being written) by logging an error and keeping the pages it could find: an ImageJ stack
of 20 planes cut in half opens as one plane. :func:`open_tiff` collects those reports
while the file opens and raises :class:`~napari_sam.errors.InvalidInputError` instead,
worded by :func:`~napari_sam.io.file_errors.unreadable_file` like every other unreadable
input. Damage that the index does not show (pages whose bytes are missing or altered)
is found when the page is read; see :mod:`napari_sam.io.transposed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

# Words of tifffile's log records (tifffile 2024-2025) that mean a broken page index.
DAMAGE_WORDS = ("invalid page offset", "invalid offset to page", "corrupted file")


class _DamageReports(logging.Filter):
    """Holds back tifffile's reports of a damaged file (others pass) and keeps them."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.levelno < logging.ERROR or not any(w in text for w in DAMAGE_WORDS):
            return True
        self.reports.append(text.split("> ", 1)[-1])  # without tifffile's object repr
        return False


def open_tiff(path: Path):
    """Open a TIFF file and its series, refusing one whose page index is damaged.

    Parameters
    ----------
    path : pathlib.Path

    Returns
    -------
    tifffile.TiffFile
        Open (the caller closes it, or keeps it open for lazy reads), series parsed.

    Raises
    ------
    InvalidInputError
        The file is empty, not a TIFF, or its header or page index is damaged.
    """
    import tifffile

    from napari_sam.io.file_errors import unreadable_file

    damage = _DamageReports()
    logger = logging.getLogger("tifffile")
    logger.addFilter(damage)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as error:  # not a TIFF, empty, a header cut short
        logger.removeFilter(damage)
        raise unreadable_file(path, "a TIFF file", error) from error
    try:
        tif.series  # noqa: B018 -- parses the series, where a broken index shows
    except Exception as error:
        damage.reports.append(str(error) or type(error).__name__)
    finally:
        logger.removeFilter(damage)
    if damage.reports:
        tif.close()
        raise unreadable_file(path, "a TIFF file", ValueError("; ".join(damage.reports)))
    return tif
