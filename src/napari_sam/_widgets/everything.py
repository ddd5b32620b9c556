"""The "SAM segment everything" dock widget: preview a plane, re-threshold live, run the stack.

Thin by design: :class:`~napari_sam.engine.everything.session.EverythingSession` does the
work on a :class:`~napari_sam.engine.model.threads.TorchThread` (the GUI never waits on torch).
Previews go to one reusable "SAM everything preview" layer; a stack run always creates a
new labels layer, so nothing the user made is overwritten.
"""

from __future__ import annotations

from dataclasses import replace

from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam.errors import NapariSamError, OperationCancelled

PREVIEW = "SAM everything preview"
RESULT = "SAM everything"
# (setting, label, minimum, maximum, step, tooltip) of the live thresholds.
THRESHOLDS = (
    (
        "pred_iou_thresh",
        "predicted IoU >=",
        0.0,
        1.2,
        0.01,
        "SAM's own estimate of mask quality; higher keeps fewer, better masks.",
    ),
    (
        "stability_score_thresh",
        "stability >=",
        0.0,
        1.0,
        0.01,
        "How little a mask changes when its logit threshold moves by +-1.",
    ),
    (
        "box_nms_thresh",
        "NMS box IoU",
        0.05,
        1.0,
        0.05,
        "Masks whose boxes overlap a better mask's by more are duplicates.",
    ),
)


class EverythingWidget(QWidget):
    """Dock widget running segment-everything on an image layer."""

    def __init__(self, napari_viewer, model: str = "vit_t") -> None:
        from napari_sam.engine.everything.settings import EverythingSettings

        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model
        self.settings = EverythingSettings()
        self.session = None
        self.session_key = None  # (layer, channel, tiling) the session was made for
        self.worker = None
        self._torch = None
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

    # ------------------------------------------------------------------ form
    def _build_ui(self) -> None:
        from napari_sam.batch.settings import StackSettings
        from napari_sam.engine.tiling.grid import DEFAULT_HALO

        stack = StackSettings()  # the defaults of `napari-sam segment-everything`
        form = QFormLayout()
        self.image_box = QComboBox()
        self.channel_box = _spin(
            -1, 64, -1, "Channel of multichannel data (all: grey or RGB).", "all"
        )
        self.points_box = _spin(
            1,
            256,
            self.settings.points_per_side,
            "Grid points along each side of the plane (or tile); "
            "32 suits cells of 15+ px in 512 px.",
        )
        self.min_area_box = _spin(
            0, 10**7, self.settings.min_area, "Drop objects smaller than this (pixels)."
        )
        self.region_box = _spin(
            0,
            10**6,
            self.settings.min_region_area,
            "Remove islands and fill holes smaller than this (pixels).",
        )
        self.tile_box = _spin(
            0,
            8192,
            stack.tile or 0,
            "Tile side for planes larger than the encoder (0: whole plane).",
            "none",
        )
        self.halo_box = _spin(
            0, 2048, DEFAULT_HALO, "Overlap around each tile: about the largest object's radius."
        )
        self.background_box = QCheckBox("drop the background mask")
        self.background_box.setChecked(self.settings.drop_background)
        self.every_point_box = QCheckBox("decode every grid point")
        self.every_point_box.setChecked(not self.settings.skip_covered)
        self.every_point_box.setToolTip(
            "Off (default): grid points inside or beside objects already found, and points that "
            "look like background, are skipped (5-8x faster). On: every point is decoded, for the "
            "last bit of recall."
        )
        self.link_box = QCheckBox("link planes into 3D objects")
        self.link_box.setChecked(stack.linking is not None)
        for name, box in (
            ("image", self.image_box),
            ("channel", self.channel_box),
            ("points per side", self.points_box),
            ("tile", self.tile_box),
            ("halo", self.halo_box),
        ):
            form.addRow(name, box)
        self.threshold_boxes = {}
        for setting, label, low, high, step, tip in THRESHOLDS:
            box = QDoubleSpinBox(
                minimum=low,
                maximum=high,
                singleStep=step,
                decimals=2,
                value=getattr(self.settings, setting),
            )
            box.setToolTip(tip + " Changing it re-thresholds the preview without decoding again.")
            box.valueChanged.connect(self._timer.start)
            self.threshold_boxes[setting] = box
            form.addRow(label, box)
        for box in (self.min_area_box, self.region_box):
            box.valueChanged.connect(self._timer.start)
        self.background_box.toggled.connect(self._timer.start)
        form.addRow("min object area", self.min_area_box)
        form.addRow("min island/hole", self.region_box)
        form.addRow("", self.background_box)
        form.addRow("", self.every_point_box)
        form.addRow("", self.link_box)
        self.preview_button = QPushButton("Preview this plane")
        self.run_button = QPushButton("Run on all planes")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status = QLabel("Pick an image and press Preview.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        for button in (self.preview_button, self.run_button, self.cancel_button):
            row.addWidget(button)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch()
        self.preview_button.clicked.connect(self.preview)
        self.run_button.clicked.connect(self.run_stack)
        self.cancel_button.clicked.connect(self.cancel)

    def reset_choices(self, *_: object) -> None:
        """Refresh the image list (napari calls this when layers change)."""
        current = self.image_box.currentText()
        self.image_box.clear()
        self.image_box.addItems(
            [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        )
        if current and self.image_box.findText(current) >= 0:
            self.image_box.setCurrentText(current)

    def current_settings(self):
        """The form's settings as :class:`EverythingSettings`."""
        values = {name: box.value() for name, box in self.threshold_boxes.items()}
        settings = replace(
            self.settings,
            points_per_side=self.points_box.value(),
            min_area=self.min_area_box.value(),
            min_region_area=self.region_box.value(),
            drop_background=self.background_box.isChecked(),
            **values,
        )
        return settings.every_point() if self.every_point_box.isChecked() else settings

    # --------------------------------------------------------------- actions
    def preview(self) -> None:
        """Decode the visible plane in the background, then show its labels."""
        if not self._ensure_session():
            return
        key, settings = self.plane_key(), self.current_settings()

        def job(stop):
            self.session.initialise(key, should_stop=stop)
            return key, self.session.generate(key, settings)

        self._start(job, self._show_preview, f"{_plane_name(key)}: decoding the point grid...")

    def rethreshold(self) -> None:
        """Re-run only the cheap filtering on the decoded plane (live from the threshold boxes)."""
        key = self.plane_key()
        if self.session is None or not self.session.has_candidates(key):
            return
        if self.worker is not None:
            self._pending = True
            return
        settings = self.current_settings()
        self._start(
            lambda stop: (key, self.session.generate(key, settings)),
            self._show_preview,
            "Re-thresholding...",
        )

    def run_stack(self) -> None:
        """Segment every plane (and link in 3D) into a new labels layer."""
        if not self._ensure_session():
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
        )
        self._poll_timer.start()

    def _report(self, done: int, total: int) -> None:
        self._done = (done, total)  # from the torch thread; the GUI reads it in _poll

    def _poll(self) -> None:
        if self._done is not None and self.worker is not None:
            done, total = self._done
            self.status.setText(
                f"Segmenting every plane: {done} of {total} done"
                + (", linking..." if done == total else "...")
            )

    def cancel(self) -> None:
        """Stop the running decoding; nothing is written."""
        if self.worker is not None:
            self.worker.quit()

    # --------------------------------------------------------------- helpers
    def plane_key(self) -> tuple[int, ...]:
        if self.session is None:
            return ()
        return tuple(
            int(i) for i in self.viewer.dims.current_step[: self.session.layout.stack_ndim]
        )

    def _ensure_session(self) -> bool:
        from napari_sam.engine.everything.session import EverythingSession
        from napari_sam.engine.prediction.predictor import Predictor

        name = self.image_box.currentText()
        if not name:
            show_error("napari-sam: add an image layer first (File > Open, or a sample).")
            return False
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
        )
        settings = self.current_settings()
        try:
            if self.session is None or self.session_key != key:
                predictor = (
                    self.session.predictor
                    if self.session is not None
                    else Predictor(self.model_name)
                )
                self.session = EverythingSession(
                    predictor,
                    layer.data,
                    channel_axis=bool(layer.rgb) or channel is not None,
                    channel=channel,
                    settings=settings,
                    tile=tile,
                    halo=self.halo_box.value() if tile else 0,
                )
                self.session_key = key
            self.session.settings = settings
        except NapariSamError as error:
            show_error(f"napari-sam: {error}")
            return False
        return True

    def _start(self, job, done, message: str) -> None:
        if self.worker is not None:
            show_error("napari-sam: segment everything is already running; cancel it first.")
            return
        if self._torch is None:
            from napari_sam.engine.model.threads import TorchThread

            self._torch = TorchThread()
        holder = []

        def work():
            return self._torch.run(job, lambda: holder[0].abort_requested)

        worker = create_worker(
            work,
            _progress={"desc": "SAM: segment everything"},
            _connect={"errored": self._failed},
            _start_thread=False,
        )
        holder.append(worker)
        worker.returned.connect(done)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.cancel_button.setEnabled(True)
        self.status.setText(message)
        worker.start()

    def _finished(self) -> None:
        self._poll_timer.stop()
        self.worker = None
        self.cancel_button.setEnabled(False)
        if self._pending:
            self._pending = False
            self.rethreshold()

    def _failed(self, error: Exception) -> None:
        if isinstance(error, OperationCancelled):
            self.status.setText("Cancelled; nothing was written.")
        elif isinstance(error, NapariSamError):
            show_error(f"napari-sam: {error}")
        else:
            raise error

    def _show_preview(self, keyed) -> None:
        key, result = keyed
        if PREVIEW in self.viewer.layers:
            self.viewer.layers[PREVIEW].data = result.labels
        else:
            layer = self.viewer.add_labels(result.labels, name=PREVIEW, opacity=0.5)
            image = self.viewer.layers[self.image_box.currentText()]
            layer.scale, layer.translate = image.scale[-2:], image.translate[-2:]
        self.status.setText(
            f"{_plane_name(key)}: {result.count} objects from "
            f"{result.points_decoded} decoded grid points "
            f"({result.points_skipped} skipped). Thresholds re-apply live."
        )

    def _add_result(self, result, image) -> None:
        name, number = RESULT, 2
        while name in self.viewer.layers:
            name, number = f"{RESULT} [{number}]", number + 1
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


def _spin(low: int, high: int, value: int, tip: str, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setToolTip(tip)
    if special:
        box.setSpecialValueText(special)
    return box
