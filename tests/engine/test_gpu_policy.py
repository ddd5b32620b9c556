"""Which device runs the model (engine/model/runtime.py: resolve_device), on any machine.

The CPU unless the user asks for a device, until an accelerator type is listed as verified
by the GPU tests (tests/engine/test_gpu_parity.py); an explicit device this machine lacks is
a clear InvalidInputError. CUDA and MPS are faked with monkeypatch, so these run everywhere.
"""

import dataclasses

import numpy as np
import pytest
import torch

from napari_sam.engine.model import runtime
from napari_sam.errors import InvalidInputError, NapariSamError


@pytest.fixture
def machine(monkeypatch):
    """``machine(cuda=0, mps=False, verified=())``: fake the accelerators this machine has."""

    def fake(cuda: int = 0, mps: bool = False, verified: tuple[str, ...] = ()) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(runtime, "VERIFIED_DEVICE_TYPES", verified)

    return fake


@pytest.fixture
def tiny_weights(tiny_model, monkeypatch):
    """Any model name loads the tiny architecture with random weights (nothing is read)."""
    from napari_sam.engine.model import loading

    spec = dataclasses.replace(tiny_model.spec, sha256="0" * 64)
    monkeypatch.setattr(loading, "get_model_spec", lambda model, architecture: spec)
    monkeypatch.setattr(loading, "fetch_weights", lambda spec, progress: None)
    monkeypatch.setattr(loading, "read_state_dict", lambda path, sha256: None)


def test_nothing_is_verified_yet():
    assert runtime.VERIFIED_DEVICE_TYPES == ()


def test_no_device_asked_for_is_the_cpu_while_no_accelerator_is_verified(machine):
    machine(cuda=1, mps=True)
    assert runtime.resolve_device() == "cpu"
    assert runtime.resolve_device(None) == "cpu"


def test_a_verified_accelerator_is_used_without_asking(machine):
    machine(cuda=1, mps=True, verified=("cuda",))
    assert runtime.resolve_device() == "cuda"
    machine(cuda=0, mps=True, verified=("cuda",))
    assert runtime.resolve_device() == "cpu"  # mps is there but not verified
    machine(cuda=0, mps=True, verified=("cuda", "mps"))
    assert runtime.resolve_device() == "mps"
    machine(cuda=0, mps=False, verified=("cuda", "mps"))
    assert runtime.resolve_device() == "cpu"


def test_auto_picks_cuda_then_mps_then_cpu_verified_or_not(machine):
    machine(cuda=0, mps=False)
    assert runtime.resolve_device("auto") == "cpu"
    machine(cuda=0, mps=True)
    assert runtime.resolve_device("auto") == "mps"
    machine(cuda=2, mps=True)
    assert runtime.resolve_device("auto") == "cuda"
    assert runtime.resolve_device(" AUTO ") == "cuda"


def test_an_explicit_device_that_exists_is_kept(machine):
    machine(cuda=2, mps=True)
    assert runtime.resolve_device("cpu") == "cpu"
    assert runtime.resolve_device("cuda") == "cuda"
    assert runtime.resolve_device("cuda:1") == "cuda:1"
    assert runtime.resolve_device("mps") == "mps"


def test_cuda_asked_for_without_cuda_says_so_and_how_to_fix_it(machine):
    machine(cuda=0, mps=True)
    expected = (
        r"'cuda' was asked for, but there is no CUDA device: torch\.cuda\.is_available\(\) "
        r"is False; drop --device or install a CUDA build of torch\."
    )
    with pytest.raises(InvalidInputError, match=expected) as error:
        runtime.resolve_device("cuda")
    assert isinstance(error.value, ValueError)
    with pytest.raises(InvalidInputError, match=r"'cuda:0' was asked for, but there is no CUDA"):
        runtime.resolve_device("cuda:0")


def test_a_cuda_index_beyond_the_devices_is_refused(machine):
    machine(cuda=2)
    with pytest.raises(
        InvalidInputError, match=r"'cuda:2' was asked for, but this machine has 2 CUDA device"
    ):
        runtime.resolve_device("cuda:2")


def test_mps_asked_for_without_mps_says_so(machine):
    machine(cuda=1, mps=False)
    with pytest.raises(
        InvalidInputError, match=r"no MPS device: torch\.backends\.mps\.is_available\(\) is False"
    ):
        runtime.resolve_device("mps")


def test_an_unknown_device_name_lists_the_accepted_ones(machine):
    machine(cuda=1)
    with pytest.raises(
        InvalidInputError, match=r"Unknown device 'gpu': expected cpu, cuda, cuda:N, mps or auto"
    ):
        runtime.resolve_device("gpu")


def test_load_model_checks_the_device_and_defaults_to_the_cpu(tiny_weights, machine):
    """load_model, the one builder, resolves the device through the same policy."""
    from napari_sam.engine.model import loading

    machine(cuda=0)
    with pytest.raises(NapariSamError, match="no CUDA device"):
        loading.load_model("random", device="cuda")
    assert loading.load_model("random").device == "cpu"
    machine(cuda=1, mps=True)  # present but not verified
    assert loading.load_model("random").device == "cpu"


def test_the_cli_prints_one_line_for_a_missing_cuda_device(tmp_path, machine, tiny_weights, capsys):
    import tifffile

    from napari_sam import cli

    machine(cuda=0)
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    argv = ["predict", str(image), "--point", "10,10", "--out", str(tmp_path / "mask.tif")]
    assert cli.main([*argv, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-sam: error: 'cuda' was asked for, but there is no CUDA device")
    assert "Traceback" not in err
    assert not (tmp_path / "mask.tif").exists()
