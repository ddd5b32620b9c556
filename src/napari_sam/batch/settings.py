"""What a batch segment-everything run does and where it runs, apart from the drivers.

Kept free of torch and dask so that the command line reads the defaults without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from napari_sam.engine.everything.linking import LinkingSettings
from napari_sam.engine.model import DEFAULT_MODEL

if TYPE_CHECKING:
    from napari_sam.batch.tasks import ModelSource


@dataclass(frozen=True)
class StackSettings:
    """What to run on each slice and how to link (recorded in the output's attributes)."""

    model: ModelSource = DEFAULT_MODEL  # registry name, checkpoint path, or picklable factory
    settings: Any = None  # EverythingSettings; None: the engine's defaults
    tile: int | None = None  # tile interior side in pixels; None: whole planes
    halo: int = 0  # tile overlap in pixels
    linking: LinkingSettings | None = field(default_factory=LinkingSettings)  # None: no linking


@dataclass(frozen=True)
class Execution:
    """Where slice tasks run."""

    workers: int = 0  # 0: in this process; N: a local cluster of N worker processes
    scheduler: str | None = None  # address of an existing dask scheduler (overrides workers)
    threads: int | None = (
        None  # torch threads per worker; None: cores / workers (in-process: unchanged)
    )

    def describe(self) -> str:
        if self.scheduler:
            return f"scheduler {self.scheduler}"
        return "in-process" if self.workers == 0 else f"{self.workers} local workers"
