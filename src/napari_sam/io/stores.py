"""What napari-sam may do with a folder it keeps a store in, and reading stores safely.

napari-sam writes two kinds of zarr v3 store, the embedding cache and the
segment-everything store (:data:`KINDS`). Rules shared by both:

- **Only ours is ever removed.** ``overwrite`` replaces a folder only when everything in
  it is ours: a group ``zarr.json`` and arrays named as that kind's (each holding only
  ``zarr.json`` and numbered chunks under ``c/``, and zarr's ``*.partial`` temporaries).
  A user's file anywhere in it stops the replacement, naming the file, even with
  ``overwrite``; a store of the other kind is never replaced by this one. Replacing
  empties the folder rather than removing it, so a symlinked folder stays a link.
- **Never the input.** A store folder that is, holds or lies inside its input is refused
  before anything is written (:func:`check_store_path`); so is a path that is a file.
- **Format versions, not package versions.** A signature carries the kind's format and
  version; every version in ``StoreKind.versions`` opens (older ones are migrated or read
  by their module), a newer one is refused with the remedy, never discarded.
- **Damage is named.** Group or array metadata that is missing or not JSON raises
  :class:`~napari_sam.errors.CacheMismatchError` saying the store is damaged and that
  ``--overwrite`` replaces it; a flag, count or checksum chunk of one unit (plane, tile,
  slice) that fails to decode only marks that unit as not done (:func:`read_units`).
  Errors of the disk itself (``OSError``: permissions, a full disk) are never taken for
  damage: they raise :class:`~napari_sam.errors.StoreAccessError`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import CacheMismatchError, InvalidInputError, StoreAccessError

# What a damaged chunk raises when read: numcodecs' zstd "decompression error"
# (RuntimeError) or a chunk that decodes to the wrong size (ValueError). OSError is not
# among them: a disk error is reported, never mistaken for damage.
DECODE_ERRORS = (RuntimeError, ValueError)
PARTIAL = re.compile(r".*\.[0-9a-f]{32}\.partial")  # zarr's atomic-write temporaries
CHUNK = re.compile(r"[0-9]+(\.[0-9a-f]{32}\.partial)?")  # c/<i>/<j>/... in zarr v3
MAX_NAMED = 5  # foreign entries a message lists


@dataclass(frozen=True)
class StoreKind:
    """One kind of store napari-sam writes."""

    format: str  # the signature's "format"
    noun: str  # what messages call it
    option: str  # the command-line flag naming its folder
    arrays: frozenset[str]  # the names of its arrays, in any format version
    required: dict[int, frozenset[str]] = field(default_factory=dict)  # version: arrays it needs

    @property
    def versions(self) -> tuple[int, ...]:
        """Format versions this release opens."""
        return tuple(sorted(self.required))


EVERYTHING_STORE = StoreKind(
    "napari-sam segment-everything",
    "segment-everything store",
    "--out",
    frozenset({"sections", "labels", "objects", "complete", "checksum"}),
    {  # labels is rebuilt by every run, so it is not required
        1: frozenset({"sections", "objects", "complete"}),
        2: frozenset({"sections", "objects", "complete", "checksum"}),
    },
)
EMBEDDING_CACHE = StoreKind(
    "napari-sam embedding cache",
    "embedding cache",
    "--cache",
    frozenset({"features", "input_size", "checksum", "complete"}),
    {
        1: frozenset({"features", "input_size", "checksum", "complete"}),
        2: frozenset({"features", "input_size", "checksum", "complete"}),
    },
)
KINDS = (EVERYTHING_STORE, EMBEDDING_CACHE)


def check_store_path(path: str | Path, kind: StoreKind, source: str | Path | None = None) -> Path:
    """``path`` as a Path, refused when it is a file or nests with the input ``source``.

    Raises
    ------
    InvalidInputError
        ``path`` is a file (it is left untouched), is ``source``, holds it, or lies
        inside it (e.g. an output inside a zarr input).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(
            f"{kind.option} {path} is a file, not a folder: a {kind.noun} is a .zarr folder. "
            f"Choose another {kind.option}; the file is left untouched."
        )
    if source is None:
        return path
    store, data = path.resolve(), Path(source).resolve()
    problem = relation_to_input(store, data)
    if problem:
        raise InvalidInputError(
            f"{kind.option} {path} {problem}: napari-sam never puts a {kind.noun} over or "
            f"inside its input, nor removes one holding it (not even with --overwrite). "
            f"Choose a {kind.option} apart from the input, e.g. {_beside(data)}."
        )
    return path


def claim_store(path: Path, kind: StoreKind, overwrite: bool) -> dict | None:
    """What is at ``path``, read under the caller's lock: a signature to compare, or None.

    Returns the signature attribute (a dict) of a readable store of ``kind``, for the
    caller to compare (and to :func:`replace_store` on a mismatch with ``overwrite``);
    None when the caller should create a new store there: nothing is there yet, the
    folder is empty, or it was ours but unusable and ``overwrite`` emptied it.

    Raises
    ------
    CacheMismatchError
        The folder holds files that are not ours, a store of the other kind, or (without
        ``overwrite``) a damaged store, one without a signature, or one of a newer format.
    StoreAccessError
        The folder cannot be read.
    """
    if not path.exists() or not _entries(path):
        return None
    state, payload, detail = _inspect(path, kind)
    if state == "ours":
        return payload
    if state == "foreign":
        raise CacheMismatchError(_foreign_message(path, kind, _foreign(path, kind)))
    if state == "other":
        raise CacheMismatchError(
            f"{path} holds a napari-sam {detail}, not a {kind.noun}: choose another "
            f"{kind.option}. napari-sam never replaces one with the other, not even with "
            "--overwrite."
        )
    if not overwrite:
        raise CacheMismatchError(_unusable_message(path, kind, state, detail))
    replace_store(path, kind)
    return None


def replace_store(path: Path, kind: StoreKind) -> None:
    """Empty the folder of a store of ``kind``, after checking that all of it is ours.

    The group metadata goes first, so a store half-removed by a kill reads as one without
    a signature (refused without ``overwrite``), never as a valid one.

    Raises
    ------
    CacheMismatchError
        Something in the folder is not ours (named in the message); nothing is removed.
    """
    foreign = _foreign(path, kind)
    if foreign:
        raise CacheMismatchError(_foreign_message(path, kind, foreign))
    entries = sorted(_entries(path), key=lambda entry: entry.name != "zarr.json")
    try:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    except OSError as error:
        raise StoreAccessError(
            f"Cannot empty the {kind.noun} {path} to replace it: {error}. Check the folder's "
            "permissions, then rerun."
        ) from error


def damaged_error(path: Path, kind: StoreKind, detail: str) -> CacheMismatchError:
    """The error for a store whose metadata cannot be read (see the module docstring)."""
    return CacheMismatchError(_unusable_message(path, kind, "damaged", detail))


def read_units(array: Any, path: Path, kind: StoreKind, what: str) -> tuple[np.ndarray, np.ndarray]:
    """All values of a small per-unit array (flags, counts, checksums; one chunk per unit).

    Returns
    -------
    values : ndarray, the array's shape and dtype
        0 where the chunk fails to decode.
    unreadable : ndarray of bool, the array's shape
        True where the chunk fails to decode.

    Raises
    ------
    StoreAccessError
        The disk refused a read.
    """
    try:
        return np.asarray(read_or_raise(array, ..., path, kind, what)), np.zeros(array.shape, bool)
    except DECODE_ERRORS:
        pass
    values, unreadable = np.zeros(array.shape, array.dtype), np.zeros(array.shape, bool)
    for index in np.ndindex(*array.shape):
        try:
            values[index] = read_or_raise(array, index, path, kind, what)
        except DECODE_ERRORS:
            unreadable[index] = True
    return values, unreadable


def read_or_raise(array: Any, where: Any, path: Path, kind: StoreKind, what: str) -> Any:
    """``array[where]``; a disk error becomes :class:`~napari_sam.errors.StoreAccessError`
    (decode errors propagate for the caller to treat as damage)."""
    try:
        return array[where]
    except OSError as error:
        raise access_error(path, kind, f"read {what}", error) from error


def access_error(path: Path, kind: StoreKind, action: str, error: OSError) -> StoreAccessError:
    """A disk error while reading or writing part of a store, said plainly."""
    return StoreAccessError(
        f"Cannot {action} of the {kind.noun} {path}: {error}. Check the folder's permissions "
        "and free space, then rerun; nothing was discarded."
    )


def _inspect(path: Path, kind: StoreKind) -> tuple[str, dict | None, str]:
    """(state, signature, detail): state "ours" (signature set), "foreign", "other"
    (detail: the other kind's noun), "damaged", "unsigned" or "newer" (detail: why)."""
    document, detail = _read_json(path / "zarr.json", kind)
    payload = document.get("attributes", {}).get("napari_sam") if document else None
    if not isinstance(payload, dict) or not any(payload.get("format") == k.format for k in KINDS):
        if _foreign(path, kind):
            return "foreign", None, ""
        return ("damaged", None, detail) if detail else ("unsigned", None, "")
    if payload["format"] != kind.format:
        return "other", None, next(k.noun for k in KINDS if k.format == payload["format"])
    version = payload.get("version")
    if version not in kind.required:
        newer = isinstance(version, int) and version > max(kind.versions)
        return ("newer", None, str(version)) if newer else ("damaged", None, f"version {version!r}")
    for name in sorted(kind.required[version]):
        array, problem = _read_json(path / name / "zarr.json", kind)
        if array is None:
            return "damaged", None, problem.replace("zarr.json", f"{name}/zarr.json")
    return "ours", payload, ""


def _read_json(path: Path, kind: StoreKind) -> tuple[dict | None, str]:
    """(document, "") or (None, what is wrong with it)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, "its metadata zarr.json is missing"
    except OSError as error:
        raise access_error(path.parent, kind, f"read {path.name}", error) from error
    try:
        document = json.loads(text)
    except ValueError:
        return None, "its metadata zarr.json is not valid JSON"
    if not isinstance(document, dict):
        return None, "its metadata zarr.json is not a JSON object"
    return document, ""


def _entries(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as found:
            return list(found)
    except OSError as error:
        raise StoreAccessError(f"Cannot list the folder {path}: {error}.") from error


def _foreign(path: Path, kind: StoreKind) -> list[str]:
    """Entries under ``path`` that are not part of a store of ``kind`` (relative paths)."""
    foreign = []
    for entry in sorted(_entries(path), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and (
            entry.name == "zarr.json" or PARTIAL.fullmatch(entry.name)
        ):
            continue
        if entry.name in kind.arrays and entry.is_dir(follow_symlinks=False):
            foreign += [f"{entry.name}/{inner}" for inner in _foreign_in_array(Path(entry.path))]
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _foreign_in_array(folder: Path) -> list[str]:
    """Entries of an array folder other than its metadata and numbered chunks under c/."""
    foreign, pending = [], []
    for entry in _entries(folder):
        if entry.is_file(follow_symlinks=False) and (
            entry.name == "zarr.json" or PARTIAL.fullmatch(entry.name)
        ):
            continue
        if entry.name == "c" and entry.is_dir(follow_symlinks=False):
            pending.append(Path(entry.path))
        else:
            foreign.append(entry.name)
    while pending:
        inner = pending.pop()
        for entry in _entries(inner):
            if not CHUNK.fullmatch(entry.name) or entry.is_symlink():
                foreign.append(str(Path(entry.path).relative_to(folder)))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return foreign


def _foreign_message(path: Path, kind: StoreKind, foreign: list[str]) -> str:
    named = ", ".join(foreign[:MAX_NAMED])
    more = f" and {len(foreign) - MAX_NAMED} more" if len(foreign) > MAX_NAMED else ""
    return (
        f"{path} exists but is not a napari-sam {kind.noun}: it holds {named}{more}, which "
        "napari-sam never deletes, not even with --overwrite. Choose for "
        f"{kind.option} a path that does not exist yet."
    )


def _unusable_message(path: Path, kind: StoreKind, state: str, detail: str) -> str:
    remedy = "pass overwrite=True to replace it"
    if state == "damaged":
        return (
            f"The {kind.noun} {path} is damaged ({detail}): {remedy} (what it holds is "
            f"lost), or choose another {kind.option} and keep it to inspect."
        )
    if state == "newer":
        return (
            f"{path} is a {kind.noun} of format version {detail}, newer than this napari-sam "
            f"reads (versions {', '.join(map(str, kind.versions))}): upgrade napari-sam to "
            f"reuse it, choose another {kind.option}, or {remedy}."
        )
    return (
        f"{path} exists but is not a napari-sam {kind.noun}: it holds zarr arrays named like "
        "one but no napari-sam signature (its creation was interrupted, or other software "
        f"made it): choose another {kind.option}, or {remedy}."
    )


def _beside(data: Path) -> str:
    return str(data.parent / (data.name.split(".")[0] + "_out.zarr"))


def relation_to_input(output: Path, source: Path) -> str | None:
    """How a resolved output path sits against the resolved input, or None when apart.

    One of "is the input itself", "lies inside the input SOURCE", "contains the input
    SOURCE": the three ways an output could overwrite, or be deleted with, its input.
    """
    if output == source:
        return "is the input itself"
    if output.is_relative_to(source):
        return f"lies inside the input {source}"
    if source.is_relative_to(output):
        return f"contains the input {source}"
    return None
