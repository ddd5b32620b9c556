"""Slice tasks on dask.distributed: a local cluster by default, or an existing scheduler.

Each worker loads the model once, when it joins, through a :class:`ModelPlugin` (a
``distributed.WorkerPlugin``), and keeps its opened input; tasks then carry only a small
:class:`~napari_sam.batch.tasks.SliceJob`. Workers run one task at a time with torch
limited to ``threads`` threads, so N workers on N cores do not oversubscribe them. Local
clusters listen on the loopback interface only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from napari_sam.batch.tasks import (
    ModelSource,
    OpenStack,
    SliceJob,
    SliceResult,
    StackSource,
    load_predictor,
)
from napari_sam.errors import NapariSamError

if TYPE_CHECKING:
    from napari_sam.engine.prediction.predictor import Predictor

log = logging.getLogger(__name__)

PLUGIN_NAME = "napari-sam-everything-model"


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker process and keeps the opened inputs.

    Parameters
    ----------
    model : str or callable
        Registry name, checkpoint path, or a picklable factory returning a SamModel.
    threads : int, optional
        torch threads of the worker; None leaves the worker's default (its cores).
    """

    name = PLUGIN_NAME

    def __init__(self, model: ModelSource, threads: int | None = 1) -> None:
        self.model, self.threads = model, threads
        self.predictor: Predictor | None = None
        self.stacks: dict[StackSource, OpenStack] = {}

    def setup(self, worker) -> None:
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        predictor = load_predictor(self.model)
        self.predictor = predictor
        log.info(
            "worker %s loaded %s (%d torch threads)",
            worker.address,
            predictor.model.model_id,
            torch.get_num_threads(),
        )

    def stack(self, source: StackSource) -> OpenStack:
        """The worker's opened input (opened on first use)."""
        if source not in self.stacks:
            self.stacks[source] = source.open()
        return self.stacks[source]


def segment_slice_on_worker(job: SliceJob) -> SliceResult | NapariSamError:
    """The task function: one slice with the worker's model and opened input.

    An error the user can act on (a damaged plane, say) comes back as the task's value,
    so that the driver raises it as one clear line; raised on the worker, distributed
    would first log it there as a failed task with its traceback.
    """
    from napari_sam.batch.tasks import segment_slice

    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, ModelPlugin) and plugin.predictor is not None  # setup() ran
    try:
        return segment_slice(job, plugin.predictor, plugin.stack(job.source))
    except NapariSamError as error:
        return error


@contextmanager
def cluster_client(workers: int, scheduler: str | None) -> Iterator[Client]:
    """A client of ``scheduler``, or of a new loopback LocalCluster of ``workers`` processes.

    The local cluster (and its worker processes) is closed on exit, also on errors.
    """
    with _quiet_distributed():
        if scheduler is not None:
            with Client(scheduler) as client:
                yield client
            return
        with _local_client(workers) as client:
            yield client


@contextmanager
def _local_client(workers: int) -> Iterator[Client]:
    # LocalCluster writes OMP_NUM_THREADS=1 and friends into this process's environment for
    # its workers; left there, they would change torch in every later subprocess we start.
    environ = dict(os.environ)
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    finally:
        os.environ.clear()
        os.environ.update(environ)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@contextmanager
def _quiet_distributed() -> Iterator[None]:
    """distributed's INFO lines (cluster start, each worker joining and leaving) held back.

    Users see our progress bars and summary; ``napari-sam -v`` (the ``napari_sam`` logger at
    INFO) lets them through. The levels are restored on exit.
    """
    if logging.getLogger("napari_sam").isEnabledFor(logging.INFO):
        yield
        return
    names = {"distributed"} | {
        name for name in logging.root.manager.loggerDict if name.startswith("distributed.")
    }
    loggers = [logging.getLogger(name) for name in sorted(names)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_on_cluster(
    client: Client,
    jobs: Sequence[SliceJob],
    model: ModelSource,
    threads: int | None,
    done: Callable[[SliceResult], None],
) -> None:
    """Run slice jobs on the client's workers, calling ``done`` as each one finishes.

    The first task that fails cancels the others and raises its error here (slices
    already written stay complete, so a rerun resumes after it).
    """
    client.register_plugin(ModelPlugin(model, threads), name=PLUGIN_NAME)
    futures = client.map(segment_slice_on_worker, list(jobs), pure=False)
    try:
        for future in as_completed(futures):
            result = future.result()
            if isinstance(result, NapariSamError):
                raise result
            done(result)
    finally:
        client.cancel(futures)
