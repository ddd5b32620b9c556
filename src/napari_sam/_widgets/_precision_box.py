"""The encoder-precision choice the annotator and segment-everything forms share."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox

from napari_sam.engine.model.precision import AUTO, PRECISIONS

PRECISION_TIP = (
    "The encoder's arithmetic. auto: bf16 on CPUs with AMX (recent Intel Xeons), where "
    "the encoder is about 1.4x faster and masks differ from fp32's less than one grey "
    "level of noise moves them; fp32 elsewhere. bf16 on CPUs without native bf16 is many "
    "times slower (docs/precision.md)."
)


def precision_box() -> QComboBox:
    """A combo box of the precisions, ``auto`` selected."""
    box = QComboBox()
    box.addItems(list(PRECISIONS))
    box.setCurrentText(AUTO)
    box.setToolTip(PRECISION_TIP)
    return box
