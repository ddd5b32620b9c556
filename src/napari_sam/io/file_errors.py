"""The errors for a file that exists but cannot be read, or cannot be written.

Every reader of :mod:`napari_sam.io` (images, volumes, TIFF files) words an undecodable
input the same way: what the file should have been, the decoder's reason, and what to
check; writers say what the system refused.
"""

from __future__ import annotations

from pathlib import Path

from napari_sam.errors import InvalidInputError


def unreadable_file(path: Path, kind: str, error: BaseException) -> InvalidInputError:
    """The error for a file or store that exists but cannot be decoded as ``kind``.

    Parameters
    ----------
    path : pathlib.Path
    kind : str
        What it should have been, e.g. ``"a TIFF file"``, ``"a zarr store"``.
    error : Exception
        The decoder's error; its text is quoted (callers chain it with ``from``).
    """
    empty = path.is_file() and path.stat().st_size == 0
    detail = "the file is empty, 0 bytes" if empty else str(error) or type(error).__name__
    return InvalidInputError(
        f"Cannot read {path} as {kind} ({detail}). It may be truncated, still being "
        "written or copied, or not the format its name says: check that it opens in "
        "another program, or copy it again."
    )


def unwritable_file(path: Path, error: OSError) -> InvalidInputError:
    """The error for an output that the system refused to write."""
    return InvalidInputError(
        f"Cannot write {path} ({error.strerror or error}): choose a folder you can write to."
    )
