"""The encoder-precision choice the annotator and segment-everything forms share."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox

from napari_sam.engine.model.precision import AUTO, PRECISIONS

PRECISION_TIP = (
    "The encoder's arithmetic. auto: bf16 on CPUs that compute it natively (avx512_bf16, "
    "AMX, Arm bf16), about twice as fast with the same masks; fp32 elsewhere. bf16 on "
    "other CPUs is many times slower (docs/precision.md)."
)


def precision_box() -> QComboBox:
    """A combo box of the precisions, ``auto`` selected."""
    box = QComboBox()
    box.addItems(list(PRECISIONS))
    box.setCurrentText(AUTO)
    box.setToolTip(PRECISION_TIP)
    return box
