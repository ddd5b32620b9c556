"""Where a batch run executes when the user does not say: a cluster only where it can pay."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.batch.settings import (
    MAX_AUTO_WORKERS,
    MIN_CORES_FOR_WORKERS,
    MIN_SLICES_PER_WORKER,
    Execution,
)
from napari_sam.batch.tasks import ModelChoice, model_identity
from napari_sam.cli import main
from napari_sam.engine.model.registry import MODELS
from napari_sam.io.samples import load_dsb2018


@pytest.mark.parametrize(
    ("cores", "slices", "workers"),
    [
        (1, 100, 0),  # one core: nothing to run in parallel
        (2, 100, 0),  # two cores: one two-thread process beat two workers (docs/everything.md)
        (MIN_CORES_FOR_WORKERS, 1, 0),  # one slice never pays for a cluster's start
        (MIN_CORES_FOR_WORKERS, MIN_SLICES_PER_WORKER * MIN_CORES_FOR_WORKERS - 1, 0),
        (MIN_CORES_FOR_WORKERS, MIN_SLICES_PER_WORKER * MIN_CORES_FOR_WORKERS, 4),
        (16, 1000, MAX_AUTO_WORKERS),  # each worker holds a model: at most 4
        (16, 7, 0),
    ],
)
def test_workers_chosen_per_run(cores, slices, workers):
    chosen = Execution(workers=None).resolve(slices, cores=cores)
    assert chosen.workers == workers
    assert chosen.describe() == ("in-process" if workers == 0 else f"{workers} local workers")


def test_what_the_user_asked_for_is_kept():
    assert Execution(workers=3).resolve(1, cores=2).workers == 3
    assert Execution(workers=0).resolve(1000, cores=64).workers == 0
    remote = Execution(workers=None, scheduler="tcp://127.0.0.1:8786")
    assert remote.resolve(1000, cores=64) == remote


def test_a_checkpoint_with_its_architecture_is_identified_without_loading(tmp_path):
    path = tmp_path / "finetuned.pt"
    path.write_bytes(b"not weights: model_identity must not load them")
    identity = model_identity(ModelChoice(str(path), "vit_b", device="cuda"))
    assert identity.startswith("finetuned@") and len(identity.split("@")[1]) == 12
    assert MODELS["vit_b"].architecture  # the architecture named exists


def test_a_small_image_runs_in_process_and_a_checkpoint_takes_its_architecture(
    default_weights, tmp_path, capsys
):
    image, _ = load_dsb2018()
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, image[:160, :160])
    checkpoint = tmp_path / "finetuned.pt"  # no registry name in it
    checkpoint.symlink_to(default_weights)
    out = tmp_path / "labels.zarr"
    argv = ["segment-everything", str(path), "--out", str(out), "--points-per-side", "8"]
    assert main(argv + ["--model", str(checkpoint), "--architecture", "vit_t"]) == 0
    line = capsys.readouterr().out
    assert "(in-process, finetuned@" in line, line
    labels = np.asarray(zarr.open_group(out, mode="r")["labels"][...])
    assert labels.shape == (1, 160, 160) and labels.max() > 0
    cache = tmp_path / "cache.zarr"
    argv = ["embed", str(path), "--cache", str(cache), "--model", str(checkpoint)]
    assert main(argv + ["--architecture", "vit_t"]) == 0
    assert "finetuned@" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["embed", "segment-everything"])
def test_batch_commands_take_a_device_and_check_it(command, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image, _ = load_dsb2018()
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, image[:64, :64])
    out = "--cache" if command == "embed" else "--out"
    argv = [command, str(path), out, str(tmp_path / "o.zarr"), "--device", "cuda"]
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'cuda' was asked for, but there is no CUDA device" in error[0]
    assert "drop --device" in error[0]
