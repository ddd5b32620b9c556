"""What ``napari-sam`` prints for the numeric faults of issue 13: a constant image, a
model that returns NaN, and a plane that needs tens of thousands of tiles."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from napari_sam.engine.model import registry
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.model.loading import build_sam
from napari_sam.engine.model.weights import weights_path


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_predict_on_a_constant_image_exits_1_and_writes_nothing(tmp_path, capsys, dtype):
    image = tmp_path / "blank.tif"
    tifffile.imwrite(image, np.full((64, 80), 200, dtype))
    out = tmp_path / "mask.tif"
    assert main(["predict", str(image), "--point", "10,10", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "napari-sam: error: The image is constant (every pixel is 200): there is nothing to "
        "segment."
    )
    assert "Traceback" not in err and not out.exists()


def test_predict_with_weights_that_return_nan_exits_1_and_writes_nothing(
    cache_dir, tmp_path, capsys, monkeypatch, tiny_architecture, make_image
):
    monkeypatch.setenv("NAPARI_SAM_NO_MALLOC_TUNING", "1")
    torch.manual_seed(0)
    state = build_sam(_spec(tiny_architecture, "", 0)).state_dict()
    state["image_encoder.patch_embed.proj.bias"].fill_(math.nan)
    source = tmp_path / "poisoned.pt"
    torch.save(state, source)  # passes its checksum: the registry vouches for these bytes
    spec = _spec(tiny_architecture, file_sha256(source), source.stat().st_size)
    monkeypatch.setitem(registry.MODELS, "tiny_cli", spec)
    weights_path(spec).parent.mkdir(parents=True)
    weights_path(spec).write_bytes(source.read_bytes())
    image, out = tmp_path / "cells.tif", tmp_path / "mask.tif"
    tifffile.imwrite(image, make_image((64, 80), seed=2))
    command = ["predict", str(image), "--point", "30,40", "--out", str(out)]
    assert main([*command, "--model", "tiny_cli", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "napari-sam: error: The model tiny_cli@"
        f"{spec.sha256[:12]} returned NaN or infinite values in its image embedding"
    )
    assert "run `napari-sam weights fetch tiny_cli` to download it again" in err
    assert "IoU nan" not in err and not out.exists()


def _spec(architecture, sha256: str, size: int) -> registry.ModelSpec:
    return registry.ModelSpec(
        name="tiny_cli",
        description="tiny SAM for tests",
        architecture=architecture,
        filename="tiny_cli.pt",
        sha256=sha256,
        size=size,
        license="none",
    )


def test_embed_shows_the_tile_warning(default_weights, tmp_path):
    """In a real process (pytest's log capture would swallow it in-process): the warning
    is on stderr before the first tile is encoded; the run is stopped there."""
    data = tmp_path / "plane.npy"
    np.save(data, np.random.default_rng(0).integers(0, 4000, (300, 404), np.uint16))
    command = [sys.executable, "-m", "napari_sam.cli", "embed", str(data)]
    command += ["--cache", str(tmp_path / "c.zarr"), "--tile", "2"]  # 150 x 202 tiles
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 300  # a safety net, not a measurement
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "tiles of 2 pixels" in line:
                break
    finally:
        process.terminate()
        process.wait(timeout=60)
    shown = "".join(lines)
    assert (
        "WARNING napari_sam.engine.tiling.grid: A plane of 300 x 404 pixels needs 30,300 "
        "tiles of 2 pixels (halo 0): about 118 GiB of embeddings per plane"
    ) in shown, shown
