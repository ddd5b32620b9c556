"""The form of the segment-everything widget: its Qt controls and the settings they hold.

Only layout lives here; :mod:`napari_sam._widgets.everything` holds the behaviour (and
:mod:`napari_sam._widgets._everything_head` that of the instance head). Every field starts
at the engine's default (``EverythingSettings``, ``StackSettings``).
"""

from __future__ import annotations

from dataclasses import replace

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
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

from napari_sam._widgets._precision_box import precision_box

PREVIEW = "SAM everything preview"  # the one reusable preview layer
RESULT = "SAM everything"  # a stack run's new layer (numbered when taken)

# (method box entry, head mode or None for the point grid, tooltip)
METHODS = (
    ("point grid", None, "SAM decodes a grid of point prompts (no training needed)."),
    (
        "head: SAM prompts (APG)",
        "apg",
        "The instance head proposes one point prompt per object and SAM draws the masks; "
        "the thresholds below apply. About 10x fewer decoder calls than the grid.",
    ),
    (
        "head: instances (AIS)",
        "ais",
        "The objects come straight from the instance head (watershed of its maps), no "
        "decoder call: the fastest. The thresholds below do not apply.",
    ),
)

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


class EverythingForm(QWidget):
    """Controls of the segment-everything widget; subclasses provide the actions."""

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
            "Off (default): grid points inside or beside objects already found are skipped, and "
            "decoding stops once the points this image's own classifier ranks likeliest have "
            "stopped finding objects (about 5x faster, same AP on our test sets). On: every "
            "point is decoded."
        )
        self.link_box = QCheckBox("link planes into 3D objects")
        self.link_box.setChecked(stack.linking is not None)
        self.precision_box = precision_box()
        for name, box in (
            ("image", self.image_box),
            ("channel", self.channel_box),
            ("encoder precision", self.precision_box),
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
            box.setToolTip(
                tip + " Changing it re-thresholds the preview without decoding again (with a "
                "head: segments the plane again, a few seconds)."
            )
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
        self._build_head_rows(form)
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

    def _build_head_rows(self, form: QFormLayout) -> None:
        """The method box and the instance head's controls (learn, load, save)."""
        self.method_box = QComboBox()
        for index, (name, mode, tip) in enumerate(METHODS):
            self.method_box.addItem(name, mode)
            self.method_box.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
        self.method_box.setToolTip(
            "How objects are found: SAM's point grid, or an instance head learnt from your "
            "labels (Learn head) or loaded from a file. A head is fast on every plane."
        )
        self.labels_box = QComboBox()
        self.labels_box.setToolTip(
            "Labels layer with correct objects to learn the head from (only its planes that "
            "hold objects are used; the layer is never changed)."
        )
        self.learn_button = QPushButton("Learn head")
        self.learn_button.setToolTip(
            "Train an instance head for this model on the image planes where the labels "
            "layer holds objects (a few minutes on a CPU; Cancel keeps the previous head)."
        )
        self.load_button = QPushButton("Load head...")
        self.load_button.setToolTip("Load a head saved before (NAME.pt with its NAME.json card).")
        self.save_button = QPushButton("Save head...")
        self.save_button.setToolTip("Save the head as NAME.pt and its card NAME.json.")
        self.save_button.setEnabled(False)
        self.head_label = QLabel("no head")
        self.head_label.setWordWrap(True)
        self.head_label.setToolTip("The instance head in use: what it was learnt from.")
        row = QHBoxLayout()
        for button in (self.learn_button, self.load_button, self.save_button):
            row.addWidget(button)
        form.addRow("method", self.method_box)
        form.addRow("labels", self.labels_box)
        form.addRow("", row)
        form.addRow("", self.head_label)
        self.method_box.currentIndexChanged.connect(self.choose_method)
        self.learn_button.clicked.connect(self.learn_head)
        self.load_button.clicked.connect(self.load_head_dialog)
        self.save_button.clicked.connect(self.save_head_dialog)

    def reset_choices(self, *_: object) -> None:
        """Refresh the image and labels lists (napari calls this when layers change)."""
        for box, kind in ((self.image_box, Image), (self.labels_box, Labels)):
            current = box.currentText()
            box.clear()
            box.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, kind)])
            if current and box.findText(current) >= 0:
                box.setCurrentText(current)

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


def free_name(layers, base: str) -> str:
    """``base``, or ``base [2]``, ``base [3]``, ...: the first name no layer has."""
    name, number = base, 2
    while name in layers:
        name, number = f"{base} [{number}]", number + 1
    return name


def _spin(low: int, high: int, value: int, tip: str, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setToolTip(tip)
    if special:
        box.setSpecialValueText(special)
    return box
