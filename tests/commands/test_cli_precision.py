"""``--precision`` of ``predict``, ``embed`` and ``segment-everything``: parsed, checked
before any work, carried to batch workers in the ModelChoice, recorded in caches.

A tiny random SAM registered as ``tiny_precision`` stands in for the real weights; no bf16
encode runs here (seconds on CPUs without native bf16): bf16 is asked for only where the
run stops before the encoder.
"""

from __future__ import annotations

import pytest
import tifffile
import torch
import zarr

from napari_sam.batch.tasks import ModelChoice, load_predictor
from napari_sam.cli import build_parser, main
from napari_sam.commands.everything import model_source
from napari_sam.engine.model import registry
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.model.loading import build_sam
from napari_sam.engine.model.weights import weights_path
from napari_sam.errors import InvalidInputError

NAME = "tiny_precision"
COMMANDS = {
    "predict": ["IMAGE", "--point", "10,10", "--out", "m.tif"],
    "embed": ["IMAGE", "--cache", "c.zarr"],
    "segment-everything": ["IMAGE", "--out", "o.zarr"],
}


@pytest.fixture
def tiny_registered(cache_dir, tmp_path, monkeypatch, tiny_architecture):
    """``tiny_precision`` in the registry, its weights in the (temporary) cache."""
    monkeypatch.setenv("NAPARI_SAM_NO_MALLOC_TUNING", "1")
    torch.manual_seed(0)
    source = tmp_path / "tiny.pt"
    torch.save(build_sam(_spec(tiny_architecture, "", 0)).state_dict(), source)
    spec = _spec(tiny_architecture, file_sha256(source), source.stat().st_size)
    monkeypatch.setitem(registry.MODELS, NAME, spec)
    weights_path(spec).parent.mkdir(parents=True)
    weights_path(spec).write_bytes(source.read_bytes())
    return spec


def _spec(architecture, sha256: str, size: int) -> registry.ModelSpec:
    return registry.ModelSpec(
        name=NAME,
        description="tiny SAM for tests",
        architecture=architecture,
        filename=f"{NAME}.pt",
        sha256=sha256,
        size=size,
        license="none",
    )


@pytest.fixture
def image(tmp_path, make_image):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, make_image((64, 80), seed=2))
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_takes_precision_with_auto_as_default(command):
    parser = build_parser()
    assert parser.parse_args([command, *COMMANDS[command]]).precision == "auto"
    for value in ("fp32", "bf16"):
        assert parser.parse_args([command, *COMMANDS[command], "--precision", value]).precision == (
            value
        )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_precision_exits_2_naming_the_choices(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, *COMMANDS[command], "--precision", "fp16"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.replace("'", "")  # quoting differs between Pythons
    assert "--precision: invalid choice: fp16 (choose from auto, fp32, bf16)" in error


def test_predict_says_which_precision_encoded(tiny_registered, image, tmp_path, capsys):
    out = tmp_path / "mask.tif"
    argv = ["predict", str(image), "--point", "30,40", "--out", str(out), "--model", NAME]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert "encoder fp32)" in capsys.readouterr().out


def test_embed_records_the_precision_and_refuses_to_mix(tiny_registered, image, tmp_path, capsys):
    cache = tmp_path / "cache.zarr"
    argv = ["embed", str(image), "--cache", str(cache), "--model", NAME]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert "encoder fp32" in capsys.readouterr().out
    assert zarr.open_group(cache, mode="r").attrs["napari_sam"]["precision"] == "fp32"
    assert main([*argv, "--precision", "bf16"]) == 1
    error = capsys.readouterr().err
    assert "precision: cache has 'fp32', expected 'bf16'" in error
    assert "--precision" in error and "--overwrite" in error


def test_bf16_on_a_gpu_is_refused_before_any_work(image, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "o.zarr"
    argv = ["segment-everything", str(image), "--out", str(out), "--device", "cuda"]
    assert main([*argv, "--precision", "bf16"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "--precision bf16 runs on the CPU only; the model is on 'cuda'" in error[0]
    assert "use --precision fp32" in error[0] and not out.exists()


def test_workers_get_the_precision_in_the_model_choice(tiny_registered):
    assert model_source(NAME, None) == NAME  # nothing asked: the name travels alone
    choice = model_source(NAME, None, None, "fp32")
    assert choice == ModelChoice(NAME, None, None, "fp32")
    assert load_predictor(choice).precision == "fp32"
    assert load_predictor(ModelChoice(NAME, precision="bf16")).precision == "bf16"
    with pytest.raises(InvalidInputError, match="Unknown precision 'half'"):
        model_source(NAME, None, None, "half")


def test_auto_is_resolved_on_the_workers_cpu(tiny_registered, monkeypatch):
    from napari_sam.engine.model import precision
    from napari_sam.engine.model.precision import CpuCapability

    monkeypatch.delenv(precision.NO_AUTO_BF16)  # the suite keeps auto at fp32 (conftest)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(precision, "cpu_capability", lambda: CpuCapability(True, "amx_bf16"))
    assert load_predictor(ModelChoice(NAME)).precision == "bf16"
    monkeypatch.setattr(precision, "cpu_capability", lambda: CpuCapability(True, "avx512_bf16"))
    assert load_predictor(ModelChoice(NAME)).precision == "fp32"
