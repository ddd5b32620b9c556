"""A dock widget's one background job: model loading and torch calls, never on the GUI thread.

Each widget owns one :class:`JobSlot`. A job runs on the widget's
:class:`~napari_sam.engine.model.threads.TorchThread`; a napari worker waits for it and
delivers its result or error on the GUI thread. Starting a job replaces (quits) the running
one, and the replaced worker's ``returned``, ``errored`` and ``finished`` signals, which
arrive later, are dropped: they must not touch the state of its successor (the Cancel
button stays enabled while the new job runs). A replaced job's errors other than its own
cancellation are still reported. :class:`Download` carries a model download's progress to
the GUI and lets Cancel stop it; :func:`open_predictor` loads a model with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from napari_sam.errors import NapariSamError, OperationCancelled

Job = Callable[[Callable[[], bool]], Any]  # job(should_stop) -> result, on the torch thread


class JobSlot:
    """The running job of one widget, and the TorchThread its jobs run on.

    Parameters
    ----------
    on_change : callable
        ``on_change(kind)`` on the GUI thread whenever the running job changes: its
        ``kind`` (as given to :meth:`start`), or None when no job runs. Widgets set their
        buttons here.
    on_error : callable
        ``on_error(error)`` for an exception of the running job (cancellations included).
        A replaced job's errors are shown (NapariSamError) or raised, never passed here.
    """

    def __init__(
        self, on_change: Callable[[str | None], None], on_error: Callable[[Exception], None]
    ) -> None:
        self.worker: Any = None  # the napari worker of the running job
        self.kind: str | None = None
        self._on_change, self._on_error = on_change, on_error
        self._torch: Any = None  # TorchThread, made with the first job

    def start(
        self,
        job: Job,
        returned: Callable[[Any], None],
        kind: str,
        progress: dict | bool = False,
    ) -> Any:
        """Run ``job(should_stop)`` on the torch thread, replacing a running job.

        Parameters
        ----------
        job : callable
            Runs on the torch thread; ``should_stop()`` turns True once the job is
            replaced or cancelled.
        returned : callable
            ``returned(result)`` on the GUI thread, only while this job is the current one.
        kind : str
            What the job does ("load", "encode", ...), passed to ``on_change``.
        progress : dict or bool
            napari's progress bar options (False: none).

        Returns
        -------
        napari worker
        """
        if self._torch is None:
            from napari_sam.engine.model.threads import TorchThread

            self._torch = TorchThread()  # allocates from the main arena: docs/threading.md
        torch_thread, holder = self._torch, []

        def work():  # the napari worker only waits; the job runs on the torch thread
            return torch_thread.run(job, lambda: holder[0].abort_requested)

        # Our errored handler replaces superqt's default, which would re-raise a cancellation.
        worker = create_worker(
            work,
            _progress=progress,
            _connect={"errored": lambda error: self._errored(worker, error)},
            _start_thread=False,
        )
        holder.append(worker)
        worker.returned.connect(lambda value: self._returned(worker, returned, value))
        worker.finished.connect(lambda: self._finished(worker))
        replaced, self.worker, self.kind = self.worker, worker, kind
        if replaced is not None:
            replaced.quit()
        self._on_change(kind)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop (its ``should_stop()`` turns True)."""
        if self.worker is not None:
            self.worker.quit()

    def shutdown(self) -> None:
        """Cancel the running job, drop its signals, and let the torch thread end after it."""
        self.cancel()
        self.worker, self.kind = None, None  # the widget may be gone when they arrive
        if self._torch is not None:
            self._torch.shutdown(wait=False)
            self._torch = None

    def _returned(self, worker, handler: Callable[[Any], None], value: Any) -> None:
        if worker is self.worker:
            self._end(handler, value)

    def _errored(self, worker, error: Exception) -> None:
        if worker is self.worker:
            self._end(self._on_error, error)
        elif not isinstance(error, OperationCancelled):
            report(error)

    def _finished(self, worker) -> None:
        # Still current: quit after its job had finished, so superqt dropped the result.
        if worker is self.worker:
            self._end(lambda _: None, None)

    def _end(self, handler: Callable[[Any], None], value: Any) -> None:
        self.worker, self.kind = None, None
        try:
            handler(value)  # may start the next job
        finally:
            if self.worker is None:
                self._on_change(None)


def report(error: Exception) -> None:
    """Show a NapariSamError as a notification; raise anything else (never swallowed)."""
    if not isinstance(error, NapariSamError):
        raise error
    show_error(f"napari-sam: {error}")


class Download:
    """Progress of a model download, written by the torch thread and read by a GUI timer.

    Passed as ``progress`` to :func:`~napari_sam.engine.model.loading.load_model`;
    after :meth:`cancel`, the next chunk raises :class:`OperationCancelled` (the partial
    file is removed by the download itself).
    """

    def __init__(self) -> None:
        self.done = self.total = 0
        self.cancelled = False

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.cancelled:
            raise OperationCancelled("The model download was cancelled; nothing was kept.")

    def cancel(self) -> None:
        self.cancelled = True

    def describe(self, model: object) -> str:
        """The status line while ``model`` loads, e.g. "loading model vit_b: 12 of 375 MB"."""
        name = model if isinstance(model, str) else getattr(model, "model_id", model)
        name = Path(name).name if isinstance(name, str) else name
        if not self.done:
            return f"loading model {name} ... (the first use downloads it)"
        total = f" of {self.total / 1e6:.0f}" if self.total else ""
        return f"loading model {name}: downloaded {self.done / 1e6:.0f}{total} MB ..."


def open_predictor(model: Any, download: Download | None = None, precision: str = "auto") -> Any:
    """A Predictor for a registry name, checkpoint file or loaded model (torch thread),
    encoding in ``precision`` (auto, fp32 or bf16)."""
    from napari_sam.engine.model.loading import SamModel, load_model
    from napari_sam.engine.prediction.predictor import Predictor

    if isinstance(model, SamModel):
        return Predictor(model, precision=precision)
    return Predictor(load_model(model, progress=download), precision=precision)


def predictor_fits(predictor: Any, model: Any, precision: str) -> bool:
    """True when ``predictor`` holds ``model`` (a registry name or that loaded model) and
    encodes in ``precision`` as resolved on its device, so a widget may keep it."""
    from napari_sam.engine.model.precision import resolve_precision

    same_model = predictor.model is model or predictor.model.spec.name == model
    return same_model and predictor.precision == resolve_precision(
        precision, predictor.model.device
    )
