"""What a batch segment-everything run does and where it runs, apart from the drivers.

Kept free of torch and dask so that the command line reads the defaults without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
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
    head: str | None = None  # an instance head file to segment with instead of the grid
    head_mode: str = "apg"  # "apg": SAM decodes one prompt per seed; "ais": the head alone
    learn: int | None = None  # learn a head first, from this many planes (docs/instance_head.md)


# When ``workers`` is left to the run (None), a local cluster is started only where it can
# pay for its start-up (a few seconds, and a model per worker): on our 2-core machines one
# two-thread process beat two one-thread workers on a quiet machine (20.6 against 15.9
# slices/min, docs/everything.md), and a run of a few slices never earns back the start.
MAX_AUTO_WORKERS = 4  # each worker holds its own model and buffers (vit_t: about 1.1 GB)
MIN_CORES_FOR_WORKERS = 4  # below this, in-process torch uses the cores as well as workers
MIN_SLICES_PER_WORKER = 2  # fewer slices to do than this per worker: in-process


@dataclass(frozen=True)
class Execution:
    """Where slice tasks run."""

    workers: int | None = 0  # 0: in this process; N: N local worker processes; None: chosen
    scheduler: str | None = None  # address of an existing dask scheduler (overrides workers)
    threads: int | None = (
        None  # torch threads per worker; None: cores / workers (in-process: unchanged)
    )

    def resolve(self, slices: int, cores: int | None = None) -> Execution:
        """This execution with ``workers`` chosen for ``slices`` slices to segment.

        Explicit worker counts and schedulers are kept. ``workers=None`` becomes a local
        cluster of one worker per core (at most :data:`MAX_AUTO_WORKERS`) when the machine
        has at least :data:`MIN_CORES_FOR_WORKERS` cores and there are at least
        :data:`MIN_SLICES_PER_WORKER` slices per worker; otherwise 0 (in this process).
        """
        if self.workers is not None or self.scheduler:
            return self
        cores = (os.cpu_count() or 1) if cores is None else cores
        workers = min(cores, MAX_AUTO_WORKERS)
        if cores < MIN_CORES_FOR_WORKERS or slices < MIN_SLICES_PER_WORKER * workers:
            workers = 0
        return replace(self, workers=workers)

    def describe(self) -> str:
        if self.scheduler:
            return f"scheduler {self.scheduler}"
        if self.workers is None:
            return "workers chosen per run"
        return "in-process" if self.workers == 0 else f"{self.workers} local workers"
