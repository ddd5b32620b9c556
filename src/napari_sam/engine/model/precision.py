"""The encoder's arithmetic: float32 everywhere, or bfloat16 where the CPU computes it natively.

CPUs with AVX-512 BF16 (AMD Zen 4 and 5, Intel Cooper Lake and later Xeons), Intel AMX
or Arm's BF16 extension have bfloat16 instructions; others (AVX2-only x86) emulate it,
several times slower than float32. Having the instructions is not enough: on an Intel
Xeon our encoder ran 1.43x faster in bfloat16 with AMX, and 0.86x (slower) with AMX
masked off, using AVX-512 BF16 alone (docs/precision.md). ``"auto"`` therefore runs the
encoder in bfloat16 only where it was measured faster, on CPUs with AMX
(:data:`AUTO_BF16_FLAGS`), and in float32 everywhere else: auto is never slower than
float32 where we measured. ``NAPARI_SAM_NO_AUTO_BF16=1`` keeps ``"auto"`` at float32
everywhere (the same masks on every machine). The capability is read from the CPU's
flags (Linux ``/proc/cpuinfo``: ``flags`` on x86, ``Features`` on aarch64); where they
cannot be read, the CPU counts as having no native bfloat16.
:func:`capability_from_cpuinfo` is a pure function of that text, so tests fake it.
The encoder runs under ``torch.autocast`` (:func:`encoder_autocast`) and its embedding
leaves as float32, so the decoder is the same in both precisions (docs/precision.md).
Nothing here imports torch until :func:`encoder_autocast` is entered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from napari_sam.errors import InvalidInputError

if TYPE_CHECKING:
    from napari_sam.engine.model.loading import SamModel

log = logging.getLogger(__name__)

AUTO, FP32, BF16 = "auto", "fp32", "bf16"
PRECISIONS = (AUTO, FP32, BF16)  # what a user may ask for, the default first
CPUINFO = Path("/proc/cpuinfo")
# CPU flags that mean bfloat16 products at native speed, in the order they are reported:
# Intel AMX tiles, AVX-512 BF16 (x86 ``flags``), Arm's BF16 extension (aarch64 ``Features``).
X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
ARM_BF16_FEATURE = "bf16"
# The flags under which ``auto`` picks bf16: where bf16 was measured faster than fp32.
# With AMX: 1.43x on a 2-core Intel Xeon. Not AVX-512 BF16 alone: on the same CPU with
# AMX masked off bf16 was 0.86x; AMD Zen 4/5 (avx512_bf16, no AMX) and Arm BF16 are not
# measured with this encoder (docs/precision.md). ``--precision bf16`` asks for it there.
AUTO_BF16_FLAGS = ("amx_bf16",)
NO_AUTO_BF16 = "NAPARI_SAM_NO_AUTO_BF16"  # set (to anything but "" or "0"): auto is fp32


@dataclass(frozen=True)
class CpuCapability:
    """What the CPU offers for bfloat16, as read from its flags."""

    native_bf16: bool  # the CPU has bfloat16 instructions (not emulated)
    evidence: str  # the flag found, or why none counts, e.g. "avx512_bf16", "no bf16 flag"

    @property
    def auto_bf16(self) -> bool:
        """Whether ``"auto"`` encodes in bf16 on this CPU (:data:`AUTO_BF16_FLAGS`)."""
        return self.native_bf16 and self.evidence in AUTO_BF16_FLAGS

    def describe(self) -> str:
        """One line for logs and benchmarks, e.g. "native bf16 (avx512_bf16)"."""
        kind = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{kind} ({self.evidence})"


def capability_from_cpuinfo(text: str) -> CpuCapability:
    """The bfloat16 capability that the text of ``/proc/cpuinfo`` describes.

    Parameters
    ----------
    text : str
        The file's contents: ``flags : ...`` lines on x86, ``Features : ...`` on aarch64.
        Only the first such line counts (every core of one machine lists the same).

    Returns
    -------
    CpuCapability
        Native when x86 flags hold ``amx_bf16`` or ``avx512_bf16``, or aarch64 features
        hold ``bf16``; not native otherwise, or when neither line is there.
    """
    for line in text.splitlines():
        name, _, values = line.partition(":")
        key, flags = name.strip().lower(), set(values.split())
        if key == "flags":
            found = [flag for flag in X86_BF16_FLAGS if flag in flags]
            return CpuCapability(bool(found), found[0] if found else "x86, no bf16 flag")
        if key == "features":
            if ARM_BF16_FEATURE in flags:
                return CpuCapability(True, f"arm {ARM_BF16_FEATURE}")
            return CpuCapability(False, "arm, no bf16 feature")
    return CpuCapability(False, "no CPU flags listed")


@cache  # the CPU does not change while a process runs
def cpu_capability(path: Path = CPUINFO) -> CpuCapability:
    """The bfloat16 capability of this machine's CPU, read from ``path`` once.

    Returns
    -------
    CpuCapability
        Not native when ``path`` cannot be read (not Linux, a restricted container).
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        log.debug("CPU flags not readable from %s: %s", path, error)
        return CpuCapability(False, f"{path} not readable")
    return capability_from_cpuinfo(text)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` (case and spaces ignored).

    Raises
    ------
    InvalidInputError
        Anything else.
    """
    text = str(precision).strip().lower()
    if text not in PRECISIONS:
        raise InvalidInputError(
            f"Unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)} "
            "(auto: bf16 on CPUs with AMX, fp32 elsewhere)."
        )
    return text


def resolve_precision(precision: str, device: str, capability: CpuCapability | None = None) -> str:
    """The precision the encoder runs in: ``"fp32"`` or ``"bf16"``.

    Parameters
    ----------
    precision : str
        ``"auto"``, ``"fp32"`` or ``"bf16"``.
    device : str
        The model's torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
    capability : CpuCapability, optional
        The CPU's; read from this machine (:func:`cpu_capability`) when omitted.

    Returns
    -------
    str
        ``"auto"`` is ``"bf16"`` on a CPU where bf16 was measured faster
        (:attr:`CpuCapability.auto_bf16`: with AMX) and ``"fp32"`` elsewhere: other CPUs,
        GPUs (no GPU is verified in bf16), and everywhere when the environment variable
        ``NAPARI_SAM_NO_AUTO_BF16`` is set.

    Raises
    ------
    InvalidInputError
        ``precision`` is not one of :data:`PRECISIONS`, or is ``"bf16"`` on a device
        other than the CPU (only the CPU's bfloat16 path is tested).
    """
    chosen = check_precision(precision)
    on_cpu = str(device).split(":")[0] == "cpu"
    if chosen == BF16 and not on_cpu:
        raise InvalidInputError(
            f"precision='bf16' runs on the CPU only; the model is on {device!r}, where "
            "bf16 is not verified (docs/devices.md): use precision='fp32' or 'auto'."
        )
    if chosen != AUTO:
        return chosen
    if not on_cpu or auto_bf16_disabled():
        return FP32
    if capability is None:  # this machine: its flags, and what oneDNN may use of them
        capability = cpu_capability()
        if not onednn_may_use_amx(os.environ):
            return FP32
    return BF16 if capability.auto_bf16 else FP32


def onednn_may_use_amx(environ: Mapping[str, str]) -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) caps oneDNN below AMX.

    Such a cap turns bf16's matrix products into AVX-512 BF16 ones, measured slower than
    fp32 (docs/precision.md).
    """
    limit = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return limit.strip() in ("", "ALL", "DEFAULT") or "AMX" in limit


def auto_bf16_disabled() -> bool:
    """Whether ``NAPARI_SAM_NO_AUTO_BF16`` keeps ``"auto"`` at fp32 (set, not "" or "0")."""
    return os.environ.get(NO_AUTO_BF16, "").strip() not in ("", "0")


def encoder_precision(precision: str, model: SamModel) -> str:
    """The precision ``model``'s encoder runs in, for ``precision`` asked of it.

    An encoder that runs in one precision only says so in its ``precision`` attribute
    (the ONNX Runtime encoder: fp32); any other is resolved by :func:`resolve_precision`.

    Raises
    ------
    InvalidInputError
        As for :func:`resolve_precision`, or another precision than the one an encoder
        with a fixed precision runs in.
    """
    fixed = getattr(model.module.image_encoder, "precision", None)
    if fixed is None:
        return resolve_precision(precision, model.device)
    chosen = check_precision(precision)
    if chosen not in (AUTO, fixed):
        raise InvalidInputError(
            f"This model's encoder ({type(model.module.image_encoder).__name__}) runs in "
            f"{fixed} only; got precision={chosen!r}: use precision='auto' or {fixed!r}."
        )
    return fixed


@contextmanager
def encoder_autocast(precision: str, device: str) -> Iterator[None]:
    """Run the block's matrix products in ``precision`` on ``device`` (a resolved one).

    ``"bf16"``: under ``torch.autocast`` with bfloat16 (matrix products in bfloat16;
    reductions, normalisations and the encoders' convolutions, which are
    :class:`~napari_sam.engine.network.common.Float32Conv2d`, in float32); ``"fp32"``:
    unchanged.
    """
    if precision != BF16:
        yield
        return
    import torch

    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield
