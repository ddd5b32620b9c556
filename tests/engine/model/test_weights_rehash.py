"""Weights are hashed again whenever the file changed, whatever a rewrite kept.

The ``.verified`` note beside a weights file spares hashing it on every start. A rewrite
that keeps the size and restores the mtime (``os.utime``) must not keep the note valid:
the note records the ctime, inode and device too. Loading the tiny SAM through a fake
registry entry shows what a user of ``load_model`` sees.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

from napari_sam.engine.model import registry, weights
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.model.loading import build_sam, load_model
from napari_sam.engine.model.weights import is_cached, read_state_dict, weights_path
from napari_sam.errors import CheckpointError, DownloadError

NAME = "tiny_test"


@pytest.fixture(autouse=True)
def _no_malloc_tuning(monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_NO_MALLOC_TUNING", "1")  # keep this process as it was


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_architecture):
    """A tiny-SAM checkpoint, the same bytes with one changed, and one with a NaN weight."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    state = build_sam(_tiny_spec(tiny_architecture, "", 0)).state_dict()
    good, changed, nan = folder / "good.pt", folder / "changed.pt", folder / "nan.pt"
    torch.save(state, good)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot, or someone's edit: same size
    changed.write_bytes(bytes(data))
    state["mask_decoder.iou_token.weight"][0, 0] = math.nan
    torch.save(state, nan)
    return good, changed, nan


def _tiny_spec(architecture, sha256: str, size: int, urls: tuple[str, ...] = ()):
    return registry.ModelSpec(
        name=NAME,
        description="tiny SAM for tests",
        architecture=architecture,
        filename=f"{NAME}.pt",
        sha256=sha256,
        size=size,
        license="none",
        urls=urls,
    )


@pytest.fixture
def registered(cache_dir, checkpoints, tiny_architecture, monkeypatch):
    """The good checkpoint registered as NAME, cached and verified, with a file:// source."""
    good = checkpoints[0]
    spec = _tiny_spec(tiny_architecture, file_sha256(good), good.stat().st_size, (good.as_uri(),))
    monkeypatch.setitem(registry.MODELS, NAME, spec)
    path = weights_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(good.read_bytes())
    assert is_cached(spec)  # hashed once, note written
    return spec, path


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Overwrite ``path`` in place with ``data`` and set its mtime back."""
    before = path.stat()
    _wait_for_the_ctime_clock(path)
    with open(path, "r+b") as handle:  # same inode
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
        before.st_dev,
    )
    assert after.st_ctime_ns != before.st_ctime_ns  # the one thing a user cannot set back


def _wait_for_the_ctime_clock(path: Path) -> None:
    """Wait until a write gets a later ctime than ``path`` has: kernels stamp ctimes
    with a coarse clock, and a rewrite within the same tick would look untouched."""
    scratch = path.with_name(path.name + ".clock")
    while True:
        scratch.write_bytes(b"tick")
        if scratch.stat().st_ctime_ns > path.stat().st_ctime_ns:
            scratch.unlink()
            return


def _count_hashes(monkeypatch) -> list[Path]:
    hashed: list[Path] = []

    def spy(path):
        hashed.append(Path(path))
        return file_sha256(path)

    monkeypatch.setattr(weights, "file_sha256", spy)
    return hashed


def test_a_rewrite_with_the_old_size_and_mtime_is_hashed_again_and_refused(
    registered, checkpoints, monkeypatch
):
    spec, path = registered
    _rewrite_keeping_size_and_mtime(path, checkpoints[1].read_bytes())
    hashed = _count_hashes(monkeypatch)
    with pytest.raises(
        CheckpointError,
        match=rf"{NAME}.pt does not match sha256 {spec.sha256}: delete it and run "
        "`napari-sam weights fetch` again",
    ):
        read_state_dict(path, spec.sha256)
    assert hashed == [path]


def test_load_model_replaces_a_rewritten_file_from_its_source(
    registered, checkpoints, monkeypatch, caplog
):
    spec, path = registered
    good, changed, _ = checkpoints
    _rewrite_keeping_size_and_mtime(path, changed.read_bytes())
    hashed = _count_hashes(monkeypatch)
    model = load_model(NAME, device="cpu")
    assert f"{path} fails its checksum; fetching it again" in caplog.text
    assert hashed == [path]  # re-hashed once; the fresh download was verified while stored
    assert path.read_bytes() == good.read_bytes()
    assert all(torch.isfinite(p).all() for p in model.module.parameters())
    assert model.model_id == f"{NAME}@{spec.sha256[:12]}"


def test_load_model_without_a_source_says_the_cached_file_changed(
    registered, checkpoints, monkeypatch
):
    spec, path = registered
    monkeypatch.setitem(registry.MODELS, NAME, dataclasses.replace(spec, urls=()))
    _rewrite_keeping_size_and_mtime(path, checkpoints[1].read_bytes())
    with pytest.raises(
        DownloadError,
        match=rf"(?s)Could not fetch the weights of '{NAME}'\. The file at {path} fails its "
        r"checksum \(it changed since it was verified\)\. Tried:\n  - no source is registered",
    ):
        load_model(NAME, device="cpu")
    assert path.read_bytes() == checkpoints[1].read_bytes()  # left for the user to inspect


def test_an_old_three_field_note_is_hashed_once_and_upgraded(registered, monkeypatch):
    spec, path = registered
    note = path.with_name(path.name + ".verified")
    stat = path.stat()
    note.write_text(f"{stat.st_size} {stat.st_mtime_ns} {spec.sha256}\n")
    hashed = _count_hashes(monkeypatch)
    assert is_cached(spec) and is_cached(spec)
    assert hashed == [path]  # once, then the upgraded note vouches for it
    fields = note.read_text().split()
    assert fields == [
        str(stat.st_size),
        str(stat.st_mtime_ns),
        str(path.stat().st_ctime_ns),
        str(stat.st_ino),
        str(stat.st_dev),
        spec.sha256,
    ]


def test_an_old_note_that_matches_size_and_mtime_no_longer_vouches(registered, checkpoints):
    # The case: the old note (size, mtime, sha256) still matched the rewritten file.
    spec, path = registered
    _rewrite_keeping_size_and_mtime(path, checkpoints[1].read_bytes())
    stat = path.stat()
    path.with_name(path.name + ".verified").write_text(
        f"{stat.st_size} {stat.st_mtime_ns} {spec.sha256}\n"
    )
    assert not is_cached(spec)


def test_a_moved_file_is_hashed_again(registered, monkeypatch):
    spec, path = registered
    moved = path.with_name("elsewhere.pt")
    _wait_for_the_ctime_clock(path)
    os.replace(path, moved)
    os.replace(moved, path)  # same bytes, size and mtime; the rename changed its ctime
    hashed = _count_hashes(monkeypatch)
    assert is_cached(spec)
    assert hashed == [path]


def test_a_checkpoint_file_with_nan_weights_is_refused_at_load(checkpoints, tmp_path):
    path = tmp_path / "finetuned_vit_t.pt"
    path.write_bytes(checkpoints[2].read_bytes())
    with pytest.raises(
        CheckpointError,
        match=r"finetuned_vit_t\.pt holds NaN weights in 1 tensor\(s\) "
        r"\(mask_decoder\.iou_token\.weight\): the model would return NaN for every image\. "
        r"The file is damaged or comes from a training run that diverged",
    ):
        load_model(path, device="cpu")
