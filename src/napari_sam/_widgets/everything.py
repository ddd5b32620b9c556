"""The "SAM segment everything" dock widget: preview a plane, re-threshold live, run the stack.

Thin by design: :class:`~napari_sam.engine.everything.session.EverythingSession` does the
work on a :class:`~napari_sam.engine.model.threads.TorchThread` through a
:class:`~napari_sam._widgets._jobs.JobSlot`; the model loads (and downloads on first use)
there too, so the GUI never waits on torch.
Previews go to one reusable "SAM everything preview" layer; a stack run always creates a
new labels layer, so nothing the user made is overwritten. The form's controls live in
:mod:`napari_sam._widgets._everything_form`; the instance head (learn it from a labels
layer, load, save, segment with it instead of the point grid) in
:mod:`napari_sam._widgets._everything_head`.
"""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from napari_sam._widgets._everything_form import PREVIEW, RESULT, EverythingForm, free_name
from napari_sam._widgets._everything_head import HeadActions
from napari_sam._widgets._jobs import Download, JobSlot, open_predictor, predictor_fits, report
from napari_sam.errors import NapariSamError, OperationCancelled


class EverythingWidget(HeadActions, EverythingForm):
    """Dock widget running segment-everything on an image layer."""

    def __init__(self, napari_viewer, model: str = "vit_t") -> None:
        from napari_sam.engine.everything.settings import EverythingSettings

        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model
        self.settings = EverythingSettings()
        self.session = None
        self.session_key = None  # (layer, channel, tiling) the session was made for
        self.jobs = JobSlot(self._show_busy, self._failed)
        self._download = Download()  # of the model being loaded
        self._pending = False  # a re-threshold was asked for while one was running
        self._timer = QTimer(self, singleShot=True, interval=150)
        self._timer.timeout.connect(self.rethreshold)
        self._done = None  # (done, total) reported from the torch thread, shown by _poll
        self._poll_timer = QTimer(self, interval=250)
        self._poll_timer.timeout.connect(self._poll)
        self._build_ui()
        self.reset_choices()
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)

    def closeEvent(self, event) -> None:  # Qt names it
        """Cancel a running job, end the torch thread, and disconnect from the viewer."""
        self.jobs.shutdown()
        self._timer.stop()
        self._poll_timer.stop()
        self.viewer.layers.events.inserted.disconnect(self.reset_choices)
        self.viewer.layers.events.removed.disconnect(self.reset_choices)
        super().closeEvent(event)

    # --------------------------------------------------------------- actions
    @property
    def worker(self):
        """The napari worker of the running job (loading or decoding), or None."""
        return self.jobs.worker

    def preview(self) -> None:
        """Decode the visible plane in the background, then show its labels."""
        if not self._session_ready(self.preview):
            return
        key, settings = self.plane_key(), self.current_settings()

        def job(stop):
            self.session.initialise(key, should_stop=stop)
            return key, self.session.generate(key, settings)

        doing = "decoding the point grid" if self.session.method is None else "segmenting"
        self._start(job, self._show_preview, f"{_plane_name(key)}: {doing}...")

    def rethreshold(self) -> None:
        """Re-run only the cheap filtering on the decoded plane (live from the threshold boxes)."""
        key = self.plane_key()
        if self.session is None or not self.session.has_candidates(key):
            return
        if self.jobs.worker is not None:
            self._pending = True
            return
        if self.session.method is not None:  # a head has no cheap re-threshold: segment again
            self.preview()
            return
        settings = self.current_settings()
        self._start(
            lambda stop: (key, self.session.generate(key, settings)),
            self._show_preview,
            "Re-thresholding...",
        )

    def run_stack(self) -> None:
        """Segment every plane (and link in 3D) into a new labels layer."""
        if not self._session_ready(self.run_stack):
            return
        link = self.link_box.isChecked()
        layer = self.viewer.layers[self.image_box.currentText()]
        self._done = None
        self._start(
            lambda stop: self.session.segment_stack(
                should_stop=stop, link=link, progress=self._report
            ),
            lambda result: self._add_result(result, layer),
            "Segmenting every plane...",
            kind="run",
        )
        self._poll_timer.start()

    def _report(self, done: int, total: int) -> None:
        self._done = (done, total)  # from the torch thread; the GUI reads it in _poll

    def _poll(self) -> None:
        if self.jobs.kind == "load" and self.session is None:
            self.status.setText(self._download.describe(self.model_name))
        if self.jobs.kind == "learn":
            self.status.setText(self.learning_text())
        if self._done is not None and self.jobs.kind == "run":
            done, total = self._done
            self.status.setText(
                f"Segmenting every plane: {done} of {total} done"
                + (", linking..." if done == total else "...")
            )

    def cancel(self) -> None:
        """Stop the running model loading or decoding; nothing is written."""
        if self.jobs.kind == "load":
            self._download.cancel()
            self.status.setText("Cancelled; press Preview to try again.")
        self.jobs.cancel()

    # --------------------------------------------------------------- helpers
    def plane_key(self) -> tuple[int, ...]:
        if self.session is None:
            return ()
        return tuple(
            int(i) for i in self.viewer.dims.current_step[: self.session.layout.stack_ndim]
        )

    def _session_request(self) -> tuple | None:
        """(key, options) of the session the form asks for; None (and a message) if none."""
        name = self.image_box.currentText()
        if not name:
            show_error("napari-sam: add an image layer first (File > Open, or a sample).")
            return None
        layer = self.viewer.layers[name]
        channel = None if self.channel_box.value() < 0 else self.channel_box.value()
        tile = self.tile_box.value() or None
        key = (
            id(layer),
            channel,
            tile,
            self.halo_box.value(),
            self.points_box.value(),
            self.every_point_box.isChecked(),
            self.precision_box.currentText(),
        )
        options = dict(
            data=layer.data,
            channel_axis=bool(layer.rgb) or channel is not None,
            channel=channel,
            settings=self.current_settings(),
            tile=tile,
            halo=self.halo_box.value() if tile else 0,
        )
        return key, options

    def _open_session(self, options: dict):
        """A new EverythingSession, with the current predictor or a newly loaded one."""
        from napari_sam.engine.everything.session import EverythingSession

        precision = self.precision_box.currentText()
        keep = self.session is not None and predictor_fits(
            self.session.predictor, self.model_name, precision
        )
        predictor = (
            self.session.predictor
            if keep
            else open_predictor(self.model_name, self._download, precision)
        )
        options = dict(options)
        return EverythingSession(predictor, options.pop("data"), **options)

    def _session_ready(self, then) -> bool:
        """True if the session for the form is open (segmenting with the chosen method);
        else open it in the background, then call ``then()`` (the model loads off the GUI
        thread)."""
        request = self._session_request()
        if request is None:
            return False
        key, options = request
        if self.session is not None and self.session_key == key:
            self.session.settings = options["settings"]
            return self.apply_method()
        if self.jobs.worker is not None:
            show_error("napari-sam: segment everything is already running; cancel it first.")
            return False
        self._download = Download()
        loads = self.session is None
        self.jobs.start(
            lambda stop: self._open_session(options),
            lambda session: self._session_opened(session, key, then),
            kind="load",
        )
        self.status.setText(
            self._download.describe(self.model_name) if loads else "Preparing the image..."
        )
        if loads:
            self._poll_timer.start()
        return False

    def _session_opened(self, session, key, then) -> None:
        self.session, self.session_key = session, key
        then()

    def _ensure_session(self) -> bool:
        """Open the session for the form now, on the calling thread (scripts and tests)."""
        request = self._session_request()
        if request is None:
            return False
        key, options = request
        try:
            if self.session is None or self.session_key != key:
                self.session, self.session_key = self._open_session(options), key
            self.session.settings = options["settings"]
        except NapariSamError as error:
            show_error(f"napari-sam: {error}")
            return False
        return self.apply_method()

    def _start(self, job, done, message: str, kind: str = "decode") -> None:
        if self.jobs.worker is not None:
            show_error("napari-sam: segment everything is already running; cancel it first.")
            return
        self.jobs.start(job, done, kind=kind, progress={"desc": "SAM: segment everything"})
        self.status.setText(message)

    def _show_busy(self, kind: str | None) -> None:
        """Buttons for the running job: none, "load", "decode", "run" or "learn"."""
        for control in (
            self.preview_button,
            self.run_button,
            self.method_box,
            self.learn_button,
            self.load_button,
        ):
            control.setEnabled(kind is None)
        self.cancel_button.setEnabled(kind is not None)
        if kind is None:
            self._finished()

    def _finished(self) -> None:
        self._poll_timer.stop()
        if self._pending:
            self._pending = False
            self.rethreshold()

    def _failed(self, error: Exception) -> None:
        if isinstance(error, OperationCancelled):
            self.status.setText("Cancelled; nothing was written.")
            return
        if isinstance(error, NapariSamError):
            self.status.setText(f"Error: {error}")
        report(error)

    def _show_preview(self, keyed) -> None:
        key, result = keyed
        if PREVIEW in self.viewer.layers:
            self.viewer.layers[PREVIEW].data = result.labels
        else:
            layer = self.viewer.add_labels(result.labels, name=PREVIEW, opacity=0.5)
            image = self.viewer.layers[self.image_box.currentText()]
            layer.scale, layer.translate = image.scale[-2:], image.translate[-2:]
        if self.session is not None and self.session.method is not None:
            self.status.setText(f"{_plane_name(key)}: {self.head_preview_text(result)}")
            return
        self.status.setText(
            f"{_plane_name(key)}: {result.count} objects from "
            f"{result.points_decoded} decoded grid points "
            f"({result.points_skipped} skipped). Thresholds re-apply live."
        )

    def _add_result(self, result, image) -> None:
        name = free_name(self.viewer.layers, RESULT)
        spatial = image.ndim - int(bool(image.rgb))
        self.viewer.add_labels(
            result.labels,
            name=name,
            scale=image.scale[:spatial],
            translate=image.translate[:spatial],
        )
        self.status.setText(
            f"{result.objects} objects in {result.planes} planes -> new layer {name!r}."
        )


def _plane_name(key: tuple[int, ...]) -> str:
    return f"Plane {', '.join(map(str, key))}" if key else "The image"
