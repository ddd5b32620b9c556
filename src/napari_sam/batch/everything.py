"""Segment everything in every slice of a stack, in parallel and resumably, then link in 3D.

The driver behind ``napari-sam segment-everything``. It opens the input lazily, computes
one intensity normalisation for the whole stack from a few planes, and creates (or
reopens) the output :class:`~napari_sam.io.everything_store.EverythingStore`. One task
per slice segments that plane (tiles, when asked for, are handled inside
:func:`~napari_sam.engine.everything.segmenter.segment_plane`, which merges objects across tile
borders) and writes only that slice's chunks, so tasks never race. Tasks run in this
process (``workers=0``), on a new loopback ``distributed.LocalCluster``, or on an
existing dask scheduler. Slices already complete, and found intact by the store's
checksums, are skipped, so a killed run resumes; damaged ones are segmented again. The
driver holds the store's lock for the whole run, so a second run on the same output
stops at once. Last, :func:`~napari_sam.engine.everything.linking.link_slices` streams
over the stored sections and writes the 3D labels (``min_extent`` capped at the slices
of the run, so a 2D image keeps its objects). See docs/everything.md, "Batch on a
cluster".
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from napari_sam.batch.settings import Execution, StackSettings
from napari_sam.batch.tasks import (
    ModelSource,
    OpenStack,
    Segmenter,
    SliceJob,
    SliceResult,
    StackSource,
    load_predictor,
    model_identity,
    segment_slice,
)
from napari_sam.engine.everything.linking import (
    LinkedLabels,
    LinkingSettings,
    label_sections,
    link_slices,
)
from napari_sam.engine.everything.segmenter import segment_plane
from napari_sam.engine.prediction.planes import stack_normalization
from napari_sam.errors import InvalidInputError
from napari_sam.io.everything_store import EverythingStore, StoreSignature
from napari_sam.io.store_lock import StoreLock
from napari_sam.io.stores import EVERYTHING_STORE, check_store_path

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage "segment" or "link", done, total)


@dataclass(frozen=True)
class StackSummary:
    """What a batch run did."""

    out: str  # the output store
    slices: int  # slices in the run's z-range
    segmented: int  # slices segmented by this run
    reused: int  # slices already complete in the store (and intact)
    repaired: int  # slices found damaged on resume and segmented again (among segmented)
    sections: int  # 2D objects over the z-range
    objects: int  # 3D objects in the labels
    removed: int  # linked objects dropped as shorter than the minimum extent
    segment_seconds: float  # wall time from the start to the last slice stored (start-up included)
    slice_seconds: float  # median wall time of one slice's task (0 when none ran)
    link_seconds: float  # wall time of linking and writing the labels
    seconds: float  # wall time of the whole run
    model_id: str
    execution: str  # Execution.describe()
    method: str = "grid"  # "grid", or "head-apg" / "head-ais" with the head's file

    @property
    def slices_per_minute(self) -> float:
        """Throughput of this run's segmentation (0 when nothing was segmented)."""
        return (
            60.0 * self.segmented / self.segment_seconds
            if self.segmented and self.segment_seconds
            else 0.0
        )


def segment_stack(
    source: StackSource,
    out: str | Path,
    stack_settings: StackSettings = StackSettings(),
    execution: Execution = Execution(),
    *,
    z_range: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    segmenter: Segmenter = segment_plane,
) -> StackSummary:
    """Segment everything in each slice of ``source`` into ``out``, then link slices in 3D.

    Parameters
    ----------
    source : StackSource
        A (z, y, x[, c]) stack or a 2D image on disk.
    out : str or pathlib.Path
        The output ``.zarr`` folder; an existing run with the same signature is resumed
        (its finished slices checked first, damaged ones segmented again).
    stack_settings : StackSettings
    execution : Execution
    z_range : (int, int), optional
        Only slices ``start <= z < stop``; the labels then hold those slices linked.
    overwrite : bool
        Replace an output of ours made for other data or settings, or damaged; a folder
        holding anything else, or the input, is never replaced.
    progress : callable, optional
        ``progress(stage, done, total)`` after each slice, stage "segment" then "link".
    segmenter : callable
        The per-plane function, by default the engine's
        :func:`~napari_sam.engine.everything.segmenter.segment_plane`; a module-level
        function, so that workers can import it.

    Returns
    -------
    StackSummary

    Raises
    ------
    InvalidInputError
        Bad ``z_range`` or worker count, an input with both t and z axes, or an ``out``
        that is a file, is the input, holds it or lies inside it.
    CacheMismatchError
        ``out`` holds a run for other data or settings and ``overwrite`` is False, is
        damaged, or holds files that are not ours.
    StoreInUseError
        Another run is writing ``out`` (checked before the input is read).
    """
    start = time.perf_counter()
    if execution.workers is not None and execution.workers < 0:
        raise InvalidInputError(
            f"workers must be >= 0 (0 runs in this process); got {execution.workers}."
        )
    out = check_store_path(out, EVERYTHING_STORE, source=source.path)
    with StoreLock(out, EVERYTHING_STORE.noun) as lock:  # a second run on out stops here
        stack = source.open()
        first, stop = _check_z_range(z_range, stack.layout.stack_shape[0])
        job = _job_template(source, out, stack, stack_settings, segmenter)
        model_id = model_identity(stack_settings.model)
        with _torch_threads(execution.threads):  # --learn's training is the heavy part
            job = _with_head(
                job, stack, stack_settings, model_id, (first, stop), overwrite, progress
            )
        signature = _signature(
            source, stack, model_id, job.normalization, job.settings, stack_settings
        )
        store = EverythingStore.open(
            out, signature, stack.layout.plane_shape, stack.layout.stack_shape[0], overwrite, lock
        )
        repaired = store.verify(first, stop)
        done = store.completed()
        jobs = [replace(job, z=z) for z in range(first, stop) if not done[z]]
        execution = execution.resolve(len(jobs))
        results: list[SliceResult] = []
        report = _counter(progress, "segment", stop - first, (stop - first) - len(jobs), results)
        _run_jobs(jobs, stack, stack_settings.model, execution, report)
        segmented_at = time.perf_counter()
        linked = link_range(store, first, stop, stack_settings.linking, progress)
        summary = StackSummary(
            out=str(out),
            slices=stop - first,
            segmented=len(jobs),
            reused=(stop - first) - len(jobs),
            repaired=len(repaired),
            sections=linked.sections,
            objects=linked.objects,
            removed=linked.removed,
            segment_seconds=round(segmented_at - start, 3),
            slice_seconds=round(float(np.median([r.seconds for r in results])), 3)
            if results
            else 0.0,
            link_seconds=round(time.perf_counter() - segmented_at, 3),
            seconds=round(time.perf_counter() - start, 3),
            model_id=model_id,
            execution=execution.describe(),
            method=_method(job),
        )
        store.record_run(_run_record(summary, (first, stop), stack_settings.linking, linked))
    return summary


def link_range(
    store: EverythingStore,
    first: int,
    stop: int,
    linking: LinkingSettings | None,
    progress: Progress | None = None,
) -> LinkedLabels:
    """Link the stored sections of slices ``first..stop-1`` into the store's labels.

    Labels outside the range are cleared. With ``linking`` None every section gets its
    own id. An object cannot span more slices than the range has, so ``min_extent`` is
    capped at the range's length: a 2D image, a one-slice range or a short stack keeps
    its objects whatever the linking settings. Streams one slice at a time (see
    :mod:`napari_sam.engine.everything.linking`).
    """
    store.clear_labels()
    sections, labels = _ZWindow(store.sections, first, stop), _ZWindow(store.labels, first, stop)
    report = None if progress is None else (lambda done, total: progress("link", done, total))
    if linking is None:
        return label_sections(sections, out=labels, progress=report)
    linking = replace(linking, min_extent=min(linking.min_extent, stop - first))
    return link_slices(sections, linking, out=labels, progress=report)


def _job_template(source, out, stack: OpenStack, stack_settings, segmenter) -> SliceJob:
    """The task of slice 0; each slice's is this one with its own ``z``."""
    settings = (
        stack_settings.settings if stack_settings.settings is not None else _default_settings()
    )
    return SliceJob(
        source,
        str(out),
        0,
        stack_normalization(stack.planes, stack.layout, channel=source.channel),
        settings,
        stack_settings.tile,
        stack_settings.halo,
        segmenter,
    )


def _with_head(job: SliceJob, stack, stack_settings, model_id, z_range, overwrite, progress):
    """The slice task with a head when one is given or to be learnt (else unchanged)."""
    from napari_sam.batch.head_tasks import head_plan, learn_head, segment_with_head
    from napari_sam.training.head_distillation import spread_planes

    if stack_settings.learn is None and stack_settings.head is None:
        return job
    if stack_settings.learn is not None and stack_settings.head is not None:
        raise InvalidInputError("Give a head file or learn one (--learn K), not both.")
    path = stack_settings.head
    if stack_settings.learn is not None:
        first, stop = z_range
        planes = [first + z for z in spread_planes(stop - first, stack_settings.learn)]
        from napari_sam.io.cache_signature import data_fingerprint

        provenance = (
            f"{Path(job.source.path).name} ({data_fingerprint(stack.planes, stack.layout)[:12]}), "
            f"{model_id}"
        )
        path = learn_head(
            stack,
            job.out,
            planes,
            lambda: load_predictor(stack_settings.model),
            job.normalization,
            job.settings,
            provenance,
            progress,
            overwrite=overwrite,
        )
    plan = head_plan(path, stack_settings.head_mode, job.settings, model_id)
    return replace(job, settings=plan, segmenter=segment_with_head)


def _method(job: SliceJob) -> str:
    plan = job.settings
    head = getattr(plan, "head", None)
    return "grid" if head is None else f"head-{plan.mode} {head}"


def _run_jobs(
    jobs: list[SliceJob],
    stack: OpenStack,
    model: ModelSource,
    execution: Execution,
    done: Callable[[SliceResult], None],
) -> None:
    if not jobs:
        return
    if execution.scheduler is None and execution.workers == 0:
        with _torch_threads(execution.threads):
            predictor = load_predictor(model)
            for job in jobs:
                done(segment_slice(job, predictor, stack))
        return
    from napari_sam.batch.cluster import cluster_client, run_on_cluster

    threads, workers = execution.threads, execution.workers or 0
    if threads is None and execution.scheduler is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    with cluster_client(workers, execution.scheduler) as client:
        run_on_cluster(client, jobs, model, threads, done)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set for a block, then restored (None: unchanged)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _counter(
    progress: Progress | None,
    stage: str,
    total: int,
    already: int,
    results: list[SliceResult],
) -> Callable[[SliceResult], None]:
    """A callback that collects each finished slice's result and reports progress."""
    if progress is not None:
        progress(stage, already, total)

    def done(result: SliceResult) -> None:
        results.append(result)
        if progress is not None:
            progress(stage, already + len(results), total)

    return done


def _check_z_range(z_range: tuple[int, int] | None, slices: int) -> tuple[int, int]:
    if z_range is None:
        return 0, slices
    first, stop = (int(v) for v in z_range)
    if not 0 <= first < stop <= slices:
        raise InvalidInputError(
            f"z-range {first}:{stop} does not fit slices 0..{slices} of the input."
        )
    return first, stop


def _default_settings():
    from napari_sam.engine.everything.settings import EverythingSettings

    return EverythingSettings()


def _signature(
    source, stack: OpenStack, model_id, normalization, settings, stack_settings
) -> StoreSignature:
    from napari_sam.io.cache_signature import data_fingerprint

    n = normalization
    return StoreSignature(
        source=str(Path(source.path).resolve()),
        key=None if source.key is None else str(source.key),
        level=int(source.level),
        axes=stack.axes,
        channel=source.channel,
        data_shape=tuple(int(s) for s in stack.planes.shape),
        fingerprint=data_fingerprint(stack.planes, stack.layout),
        model_id=model_id,
        normalization=(n.low, n.high, n.channel, n.channel_weights),
        settings=dict(settings.to_dict()),
        tile=stack_settings.tile,
        halo=int(stack_settings.halo),
    )


def _run_record(
    summary: StackSummary,
    z_range: tuple[int, int],
    linking: LinkingSettings | None,
    linked: LinkedLabels,
) -> dict:
    from napari_sam import __version__

    record = asdict(summary)
    record["slices_per_minute"] = round(summary.slices_per_minute, 2)
    record["z_range"] = list(z_range)
    record["linking"] = None if linking is None else linking.to_dict()
    if linking is not None:  # capped at the range's slices, see link_range
        record["min_extent_applied"] = min(linking.min_extent, z_range[1] - z_range[0])
    record["links"], record["gap_links"] = linked.links, linked.gap_links
    record["package_version"] = __version__  # information only, never compared
    return record


class _ZWindow:
    """Slices ``first..stop-1`` of a (Z, Y, X) zarr array as a (stop - first, Y, X) array."""

    def __init__(self, array, first: int, stop: int) -> None:
        self.array, self.first = array, first
        self.shape = (stop - first,) + tuple(array.shape[1:])
        self.dtype = array.dtype

    def __getitem__(self, z: int):
        return self.array[self.first + z]

    def __setitem__(self, z: int, value) -> None:
        self.array[self.first + z] = value
