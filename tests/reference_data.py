"""Data the tests read but do not make: where it is looked for, and what a missing piece does.

Meta's reference outputs (``dsb2018_vit_t.npz`` and ``dsb2018_vit_t_amg.npz``, described in
``shared/reference/README.md``) are looked for in ``$NAPARI_SAM_REFERENCE``, else in
``../shared/reference`` beside the clone; the default weights in the user cache, where
``make test`` fetches them. A test that needs a missing piece fails under CI (``CI`` set
and non-empty), where a skipped parity test would pass unnoticed; elsewhere it is skipped,
and :class:`MissingData` gathers the skips into one report at the end of the session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REFERENCE_ENV = "NAPARI_SAM_REFERENCE"
REFERENCE_FILES = ("dsb2018_vit_t.npz", "dsb2018_vit_t_amg.npz")


@dataclass(frozen=True)
class Missing:
    """A piece of test data that is not where the tests look for it."""

    what: str  # e.g. "Meta's reference outputs (dsb2018_vit_t.npz)"
    where: Path  # where it was looked for
    remedy: str  # how to provide it, as a command or a setting

    def reason(self) -> str:
        """One line: what is missing, where it was looked for, how to provide it."""
        return f"{self.what} not found in {self.where}; {self.remedy}"


def reference_folder() -> Path:
    """``$NAPARI_SAM_REFERENCE`` when set, else ``../shared/reference`` beside the clone."""
    beside_the_clone = Path(__file__).resolve().parents[2] / "shared" / "reference"
    return Path(os.environ.get(REFERENCE_ENV) or beside_the_clone).expanduser()


def missing_reference(folder: Path) -> Missing | None:
    """None when ``folder`` holds every reference file, else what is missing."""
    absent = [name for name in REFERENCE_FILES if not (folder / name).is_file()]
    if not absent:
        return None
    return Missing(
        f"Meta's reference outputs ({', '.join(absent)})",
        folder,
        f"set {REFERENCE_ENV}=/path/to/a/folder/with/them (default: ../shared/reference)",
    )


def missing_default_weights() -> Missing | None:
    """None when the default model's weights are cached and verified, else what is missing."""
    from napari_sam.engine.model import DEFAULT_MODEL
    from napari_sam.engine.model.registry import MODELS
    from napari_sam.engine.model.weights import CACHE_ENV, is_cached, weights_path

    spec = MODELS[DEFAULT_MODEL]
    if is_cached(spec):
        return None
    return Missing(
        f"the default weights ({spec.name}, {spec.filename})",
        weights_path(spec).parent,
        f"run `napari-sam weights fetch {spec.name}` (make test does), or set {CACHE_ENV} to a "
        f"folder holding weights/{spec.filename}",
    )


@dataclass
class MissingData:
    """The missing pieces met in one test session, for one report at its end."""

    found: dict[str, Missing] = field(default_factory=dict)  # by reason

    def require(self, missing: Missing | None) -> None:
        """Nothing when ``missing`` is None; else fail under CI, skip elsewhere."""
        if missing is None:
            return
        if os.environ.get("CI"):
            ci = os.environ["CI"]
            pytest.fail(
                f"{missing.what} not found in {missing.where}, and under CI (CI={ci!r}) a test "
                f"never skips for missing data: {missing.remedy}.",
                pytrace=False,
            )
        self.found[missing.reason()] = missing
        pytest.skip(missing.reason())

    def report(self, skipped: list) -> list[str]:
        """One paragraph per missing piece: how many tests it skipped, in which files, why.

        ``skipped`` holds the session's skip reports (``terminalreporter.stats["skipped"]``).
        """
        lines = []
        for reason, missing in self.found.items():
            matching = [report for report in skipped if reason in _text(report)]
            files = sorted({report.nodeid.split("::")[0] for report in matching})
            lines += [
                f"{missing.what} not found in {missing.where}: {len(matching)} test(s) skipped in",
                *(f"    {name}" for name in files),
                f"  Fix: {missing.remedy}.",
            ]
        return lines


def _text(report) -> str:
    """The message of a skip report (pytest keeps it as (path, line, message))."""
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
