"""CPU bfloat16 detection from faked /proc/cpuinfo text, precision resolution and errors."""

from __future__ import annotations

import dataclasses

import pytest

from napari_sam.engine.model.precision import (
    CpuCapability,
    capability_from_cpuinfo,
    check_precision,
    cpu_capability,
    encoder_autocast,
    encoder_precision,
    resolve_precision,
)
from napari_sam.errors import InvalidInputError

# Abridged /proc/cpuinfo of each kind of CPU (the flags that matter, some that do not).
ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD Ryzen 9 9950X 16-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni vaes
bugs\t\t: sysret_ss_attrs
"""
ZEN4_EPYC = "model name\t: AMD EPYC 9654\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = (
    "model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16\n"
)
AVX2_ONLY = (
    "model name\t: AMD EPYC 7B13\n"
    "flags\t\t: fpu sse2 avx f16c fma avx2 bmi2 sha_ni vaes vpclmulqdq\n"
    "processor\t: 1\nflags\t\t: fpu sse2 avx f16c fma avx2 bmi2 sha_ni vaes vpclmulqdq\n"
)
SKYLAKE_AVX512 = "flags\t\t: avx2 avx512f avx512bw avx512vl avx512_vnni\n"  # no bf16
GRAVITON3 = (
    "processor\t: 0\nBogoMIPS\t: 2100.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve i8mm bf16 svebf16\n"
    "CPU implementer\t: 0x41\n"
)
GRAVITON2 = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


@pytest.mark.parametrize(
    ("text", "native", "evidence"),
    [
        (ZEN5, True, "avx512_bf16"),
        (ZEN4_EPYC, True, "avx512_bf16"),
        (SAPPHIRE_RAPIDS, True, "amx_bf16"),
        (AVX2_ONLY, False, "x86, no bf16 flag"),
        (SKYLAKE_AVX512, False, "x86, no bf16 flag"),
        (GRAVITON3, True, "arm bf16"),
        (GRAVITON2, False, "arm, no bf16 feature"),
        ("", False, "no CPU flags listed"),
    ],
    ids=["zen5", "zen4", "sapphire-rapids", "avx2", "skylake", "arm-bf16", "arm", "empty"],
)
def test_capability_is_read_from_the_flags(text, native, evidence):
    capability = capability_from_cpuinfo(text)
    assert capability == CpuCapability(native, evidence)
    assert capability.describe().startswith("native bf16" if native else "no native bf16")


def test_only_whole_flags_count():
    """``svebf16`` or ``avx512_bf16x`` are not the flags looked for."""
    assert not capability_from_cpuinfo("Features\t: fp asimd svebf16\n").native_bf16
    assert not capability_from_cpuinfo("flags\t: avx2 xavx512_bf16\n").native_bf16


def test_unreadable_cpuinfo_counts_as_no_native_bf16(tmp_path):
    missing = tmp_path / "cpuinfo"  # never written
    capability = cpu_capability(missing)
    assert not capability.native_bf16
    assert "not readable" in capability.evidence
    directory = tmp_path / "a folder"
    directory.mkdir()
    assert not cpu_capability(directory).native_bf16


def test_capability_is_read_from_the_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(SAPPHIRE_RAPIDS)
    assert cpu_capability(path) == CpuCapability(True, "amx_bf16")


AMX = CpuCapability(True, "amx_bf16")
NATIVE, EMULATED = CpuCapability(True, "avx512_bf16"), CpuCapability(False, "x86, no bf16 flag")
ARM_BF16 = CpuCapability(True, "arm bf16")


@pytest.fixture
def auto_allowed(monkeypatch):
    """Let auto choose bf16 (the suite keeps it at fp32, see conftest.py)."""
    from napari_sam.engine.model import precision as module

    monkeypatch.delenv(module.NO_AUTO_BF16)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return module


@pytest.mark.parametrize(
    ("precision", "device", "capability", "expected"),
    [
        ("auto", "cpu", AMX, "bf16"),  # measured 1.43x faster
        ("auto", "cpu", NATIVE, "fp32"),  # AVX-512 BF16 alone: measured 0.86x on an Intel
        ("auto", "cpu", ARM_BF16, "fp32"),  # not measured
        ("auto", "cpu", EMULATED, "fp32"),  # never slower than fp32
        ("auto", "cuda", AMX, "fp32"),  # no GPU is verified
        ("auto", "cuda:1", EMULATED, "fp32"),
        ("auto", "mps", NATIVE, "fp32"),
        ("fp32", "cpu", NATIVE, "fp32"),
        ("bf16", "cpu", EMULATED, "bf16"),  # asked for: slow, but what was asked
        (" BF16 ", "cpu", NATIVE, "bf16"),
        ("fp32", "cuda", NATIVE, "fp32"),
    ],
)
def test_resolve_precision(precision, device, capability, expected, auto_allowed):
    assert resolve_precision(precision, device, capability) == expected


def test_auto_reads_this_machines_cpu_when_no_capability_is_given(auto_allowed, monkeypatch):
    monkeypatch.setattr(auto_allowed, "cpu_capability", lambda: AMX)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(auto_allowed, "cpu_capability", lambda: NATIVE)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(auto_allowed, "cpu_capability", lambda: EMULATED)
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_the_environment_keeps_auto_at_fp32(auto_allowed, monkeypatch, value):
    monkeypatch.setenv(auto_allowed.NO_AUTO_BF16, value)
    assert resolve_precision("auto", "cpu", AMX) == "fp32"
    assert resolve_precision("bf16", "cpu", AMX) == "bf16"  # asked for by name: still bf16
    monkeypatch.setenv(auto_allowed.NO_AUTO_BF16, "0")
    assert resolve_precision("auto", "cpu", AMX) == "bf16"


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", False),
        ("ONEDNN_MAX_CPU_ISA", "avx2", False),
        ("DNNL_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
        ("ONEDNN_MAX_CPU_ISA", "ALL", True),
        ("ONEDNN_MAX_CPU_ISA", "", True),
    ],
)
def test_a_onednn_cap_below_amx_keeps_auto_at_fp32(
    auto_allowed, monkeypatch, variable, value, allowed
):
    monkeypatch.setenv(variable, value)
    assert auto_allowed.onednn_may_use_amx({variable: value}) is allowed
    monkeypatch.setattr(auto_allowed, "cpu_capability", lambda: AMX)
    assert resolve_precision("auto", "cpu") == ("bf16" if allowed else "fp32")


@pytest.mark.parametrize("value", ["fp16", "float32", "half", "", "bfloat16"])
def test_unknown_precision_says_what_is_allowed(value):
    with pytest.raises(InvalidInputError, match=r"Unknown precision .*auto, fp32, bf16"):
        check_precision(value)
    with pytest.raises(InvalidInputError, match=r"Unknown precision"):
        resolve_precision(value, "cpu", NATIVE)


def test_bf16_on_a_gpu_is_refused():
    with pytest.raises(InvalidInputError, match=r"runs on the CPU only.*'cuda'.*fp32"):
        resolve_precision("bf16", "cuda", NATIVE)


def test_an_encoder_with_a_fixed_precision_keeps_it(tiny_model, monkeypatch):
    class FixedEncoder:
        precision = "fp32"

    module = type("Module", (), {"image_encoder": FixedEncoder()})()
    fixed = dataclasses.replace(tiny_model, module=module)
    assert encoder_precision("auto", fixed) == "fp32"
    assert encoder_precision("fp32", fixed) == "fp32"
    with pytest.raises(InvalidInputError, match=r"FixedEncoder\) runs in fp32 only.*'bf16'"):
        encoder_precision("bf16", fixed)
    assert encoder_precision("bf16", tiny_model) == "bf16"


def test_encoder_autocast_runs_products_in_bf16_only_when_asked():
    import torch

    a = torch.ones(4, 4)
    with encoder_autocast("bf16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with encoder_autocast("fp32", "cpu"):
        assert (a @ a).dtype == torch.float32


def test_importing_the_module_loads_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; import napari_sam.engine.model.precision as p; "
        "p.resolve_precision('auto', 'cpu'); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
