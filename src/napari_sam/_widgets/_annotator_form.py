"""The form of the SAM annotator: its Qt controls, layer lists and key bindings.

Only layout lives here; :mod:`napari_sam._widgets.annotator` holds the behaviour.
"""

from __future__ import annotations

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam._widgets._precision_box import precision_box

KEYS = {
    "Shift-C": ("commit", "commit the preview as new objects"),
    "Shift-X": ("clear_prompts", "clear the prompts of this plane"),
    "Shift-N": ("toggle_polarity", "switch new points between object and background"),
    "Shift-M": ("cycle_candidate", "show SAM's next candidate mask"),
    "Shift-P": ("propagate", "carry this plane's objects through the stack"),
    "Shift-Up": ("next_id", "next object id"),
    "Shift-Down": ("previous_id", "previous object id"),
}
NEW_LAYER = "<new labels layer>"


class AnnotatorForm(QWidget):
    """Controls of the annotator; subclasses provide the actions named in :data:`KEYS`."""

    def _build_ui(self) -> None:
        self.image_box, self.labels_box, self.mode_box = QComboBox(), QComboBox(), QComboBox()
        self.mode_box.addItems(["one object", "one object per point"])
        self.channel_box = QSpinBox()
        self.channel_box.setRange(-1, 64)
        self.channel_box.setValue(-1)
        self.channel_box.setSpecialValueText("all (grey or RGB)")
        self.id_box = QSpinBox()
        self.id_box.setRange(1, 2**31 - 1)
        self.overwrite_box = QCheckBox("may overwrite other objects")
        self.start_button = QPushButton("Start on this image")
        self.cancel_button = QPushButton("Cancel encoding")
        self.cancel_button.setEnabled(False)
        self.commit_button, self.clear_button = (
            QPushButton("Commit [Shift-C]"),
            QPushButton("Clear [Shift-X]"),
        )
        self.cycle_button = QPushButton("Next candidate [Shift-M]")
        self.propagate_button, self.axis_box = QPushButton("Propagate [Shift-P]"), QComboBox()
        self.propagate_button.setToolTip(
            "Carry the previewed objects (or, with none, the committed objects of this plane) "
            "through the stack; with 'refine' on, correct a propagated object from here on."
        )
        self.axis_box.setToolTip("The stack axis to propagate along.")
        self.first_box, self.last_box = QSpinBox(), QSpinBox()
        for box in (self.first_box, self.last_box):
            box.setToolTip(
                "Propagated objects stop at these slices at the latest (the stop rule may "
                "end them sooner); the plane shown must lie between them."
            )
        self.refine_box = QCheckBox("refine the selected label of the objects layer")
        self.save_button, self.load_button = (
            QPushButton("Save record..."),
            QPushButton("Replay record..."),
        )
        self.polarity_label, self.status = QLabel(), QLabel("Pick an image and press Start.")
        self.status.setWordWrap(True)
        # Room for four lines: Qt does not grow a wrapped label in a dock's layout, and the
        # large-object question needs three.
        self.status.setMinimumHeight(4 * self.status.fontMetrics().lineSpacing())
        self.status.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        form = QFormLayout()
        form.addRow("image", self.image_box)
        form.addRow("channel", self.channel_box)
        self.precision_box = precision_box()
        form.addRow("encoder precision", self.precision_box)
        self.cache_edit = QLineEdit()
        self.cache_edit.setPlaceholderText("optional: folder.zarr to keep embeddings")
        self.cache_edit.setToolTip(
            "Embeddings are stored here and reused next time (napari-sam embed makes the same "
            "cache from the command line)."
        )
        form.addRow("embedding cache", self.cache_edit)
        form.addRow("tiles", self._build_tiling())
        form.addRow("objects into", self.labels_box)
        form.addRow("prompts make", self.mode_box)
        form.addRow("next object id", self.id_box)
        form.addRow("", self.overwrite_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        for button in (self.commit_button, self.clear_button, self.cycle_button, self.refine_box):
            layout.addWidget(button)
        along = QHBoxLayout()
        along.addWidget(self.propagate_button)
        along.addWidget(QLabel("along"))
        along.addWidget(self.axis_box)
        layout.addLayout(along)
        limits = QHBoxLayout()
        limits.addWidget(QLabel("slices from"))
        limits.addWidget(self.first_box)
        limits.addWidget(QLabel("to"))
        limits.addWidget(self.last_box)
        layout.addLayout(limits)
        files = QHBoxLayout()
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        layout.addLayout(files)
        layout.addWidget(self.polarity_label)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("<br>".join(f"<b>{k}</b>: {v[1]}" for k, v in KEYS.items())))
        layout.addStretch()
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(lambda: self.clear_prompts())
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.cycle_button.clicked.connect(self.cycle_candidate)
        self.refine_box.toggled.connect(lambda _: self.update_preview())
        self.save_button.clicked.connect(lambda: self.save_record())
        self.load_button.clicked.connect(lambda: self.load_record())
        self._show_polarity()

    def session_controls(self) -> tuple[QWidget, ...]:
        """The controls that act on a session: disabled until one is open."""
        return (
            self.commit_button,
            self.clear_button,
            self.cycle_button,
            self.refine_box,
            self.save_button,
            self.load_button,
        )

    def _build_tiling(self) -> QHBoxLayout:
        """Tile, halo and upscale controls; -1 means automatic, tile 0 means whole planes."""
        self.tile_box, self.halo_box = QSpinBox(), QSpinBox()
        for box, auto in ((self.tile_box, "auto"), (self.halo_box, "auto halo")):
            box.setRange(-1, 8192)
            box.setValue(-1)
            box.setSpecialValueText(auto)
        self.tile_box.setToolTip(
            "Tile side in pixels for large planes (auto: 768 when a plane is larger "
            "than 1.5x the encoder's 1024 pixels; 0: never tile)."
        )
        self.halo_box.setToolTip(
            "Overlap around each tile: about the radius of the largest object."
        )
        self.upscale_box = QDoubleSpinBox()
        self.upscale_box.setRange(0.25, 8.0)
        self.upscale_box.setSingleStep(0.5)
        self.upscale_box.setValue(1.0)
        self.upscale_box.setPrefix("upscale ")
        self.upscale_box.setToolTip(
            "Encoder pixels per image pixel: 2 gives small cells 4x the pixels (and 4x the tiles)."
        )
        row = QHBoxLayout()
        for box in (self.tile_box, self.halo_box, self.upscale_box):
            row.addWidget(box)
        return row

    def tiling(self) -> dict:
        """The tiling chosen in the form, as keyword arguments of the session factories."""
        tile, halo = self.tile_box.value(), self.halo_box.value()
        return {
            "tile": None if tile < 0 else tile,
            "halo": None if halo < 0 else halo,
            "upscale": self.upscale_box.value(),
        }

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer lists (napari calls this when layers change)."""
        ours = {self.points_layer, self.boxes_layer, self.preview_layer}
        for box, kind, extra in (
            (self.image_box, Image, []),
            (self.labels_box, Labels, [NEW_LAYER]),
        ):
            current = box.currentText()
            box.clear()
            box.addItems(
                extra
                + [
                    layer.name
                    for layer in self.viewer.layers
                    if isinstance(layer, kind) and layer not in ours
                ]
            )
            if current and box.findText(current) >= 0:
                box.setCurrentText(current)

    def _bind_keys(self) -> None:
        for key, (method, _) in KEYS.items():
            self.viewer.bind_key(key, self._key_handler(method), overwrite=True)

    def _key_handler(self, method: str):
        def handler(viewer):
            getattr(self, method)()

        return handler

    def closeEvent(self, event) -> None:
        self.close_session()
        super().closeEvent(event)

    def close_session(self) -> None:
        """Unbind keys and disconnect from the viewer."""
        for key in KEYS:
            self.viewer.bind_key(key, None, overwrite=True)
        self.viewer.dims.events.current_step.disconnect(self._on_step)
        self.viewer.layers.events.inserted.disconnect(self.reset_choices)
        self.viewer.layers.events.removed.disconnect(self.reset_choices)
        self.cancel()
        self.jobs.shutdown()
