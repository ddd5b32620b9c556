"""The encoder-precision choice of the annotator and segment-everything forms: auto by
default, and a changed choice gives a predictor of that precision (tiny random SAM; the
bf16 predictor records bf16 but computes in fp32 here, since a real bf16 encode takes
seconds on CPUs without native bf16)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest

from napari_sam.engine.model.precision import PRECISIONS
from napari_sam.engine.prediction import predictor as predictor_module


@pytest.fixture
def no_bf16_arithmetic(monkeypatch):
    monkeypatch.setattr(predictor_module, "encoder_autocast", lambda *_: nullcontext())


def test_both_forms_offer_the_precisions_with_auto_chosen(make_napari_viewer, tiny_model):
    from napari_sam._widgets.annotator import AnnotatorWidget
    from napari_sam._widgets.everything import EverythingWidget

    viewer = make_napari_viewer()
    for widget in (AnnotatorWidget(viewer), EverythingWidget(viewer, model=tiny_model)):
        box = widget.precision_box
        assert [box.itemText(i) for i in range(box.count())] == list(PRECISIONS)
        assert box.currentText() == "auto"
        assert "AMX" in box.toolTip()
        widget.close()


def test_a_predictor_is_kept_only_for_the_same_model_and_precision(tiny_model):
    from napari_sam._widgets._jobs import open_predictor, predictor_fits

    predictor = open_predictor(tiny_model, precision="fp32")
    assert predictor.precision == "fp32"
    assert predictor_fits(predictor, tiny_model, "fp32")
    assert predictor_fits(predictor, tiny_model.spec.name, "fp32")
    assert not predictor_fits(predictor, tiny_model, "bf16")
    assert not predictor_fits(predictor, "vit_t", "fp32")


def test_everything_widget_reopens_its_session_in_the_precision_chosen(
    make_napari_viewer, qtbot, tiny_model, image_300x500, no_bf16_arithmetic
):
    from napari_sam._widgets.everything import EverythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(image_300x500, name="blobs")
    widget = EverythingWidget(viewer, model=tiny_model)
    widget.points_box.setValue(2)
    viewer.window.add_dock_widget(widget)

    def preview_in(precision: str):
        widget.precision_box.setCurrentText(precision)
        widget.preview()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        return widget.session.predictor

    fp32 = preview_in("fp32")
    assert fp32.precision == "fp32"
    bf16 = preview_in("bf16")
    assert bf16.precision == "bf16" and bf16 is not fp32
    assert preview_in("bf16") is bf16  # unchanged choice: the same predictor


def test_the_annotator_under_auto_opens_a_cache_in_its_recorded_precision(
    make_napari_viewer, qtbot, tiny_model, image_300x500, no_bf16_arithmetic, tmp_path
):
    """A cache made where auto means bf16 opens where it means fp32 (this suite's auto):
    the annotator asks for a bf16 predictor instead of stopping at a cache mismatch."""
    from napari_sam._widgets import open_annotator
    from napari_sam.batch.embedding import embed_volume, open_cached_session
    from napari_sam.engine.prediction.predictor import Predictor

    stack = np.stack([image_300x500, image_300x500[::-1]])
    bf16 = Predictor(tiny_model, precision="bf16")
    embed_volume(open_cached_session(stack, tmp_path / "c.zarr", bf16))
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    widget = open_annotator(viewer, image="stack", start=False)
    asked = []
    widget._shared_model = lambda precision: asked.append(precision) or bf16
    widget.cache_edit.setText(str(tmp_path / "c.zarr"))
    assert widget.precision_box.currentText() == "auto"
    widget.start()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=60_000)
    assert asked == ["bf16"]
    assert widget.session.cache.signature.precision == "bf16"
    widget.close_session()
