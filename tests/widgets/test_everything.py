"""The segment-everything widget: preview equals the engine, live re-threshold, stack run
into a new layer, cancel writes nothing. Tiny random SAM with loose thresholds (its scores
mean nothing, but it must produce objects); quality is tested in tests/engine.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.prediction.preprocess import compute_normalization

LOOSE = EverythingSettings(
    points_per_side=4,
    points_per_batch=8,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    keep_iou_floor=-10.0,
    keep_stability_floor=0.0,
    skip_covered=False,
    stop_after_empty=None,
    drop_background=False,
)


@pytest.fixture
def widget(make_napari_viewer, tiny_model, image_300x500):
    from napari_sam._widgets.everything import EverythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(image_300x500, name="blobs")
    widget = EverythingWidget(viewer, model=tiny_model)
    widget.settings = LOOSE
    widget.points_box.setValue(LOOSE.points_per_side)
    for name, box in widget.threshold_boxes.items():
        box.blockSignals(True)
        box.setValue(getattr(LOOSE, name))
        box.blockSignals(False)
    widget.background_box.setChecked(False)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def wait_idle(widget, qtbot):
    qtbot.waitUntil(lambda: widget.worker is None and not widget._timer.isActive(), timeout=120_000)


def test_preview_equals_the_engine_and_rethresholds_live(widget, qtbot, image_300x500, tiny_model):
    from napari_sam.engine.prediction.predictor import Predictor

    viewer, widget = widget
    widget.preview()
    wait_idle(widget, qtbot)
    preview = viewer.layers["SAM everything preview"].data
    expected = AutomaticSegmenter(Predictor(tiny_model), LOOSE)
    candidates = expected.initialise(image_300x500, compute_normalization(image_300x500))
    assert np.array_equal(preview, expected.generate(candidates).labels)
    assert preview.max() > 0
    # A threshold above every score empties the preview without decoding again.
    widget.session.predictor.predict_low_res = None
    widget.threshold_boxes["pred_iou_thresh"].setValue(1.2)
    wait_idle(widget, qtbot)
    assert viewer.layers["SAM everything preview"].data.max() == 0
    assert "0 objects" in widget.status.text()


def test_stack_run_makes_a_new_layer_and_never_overwrites(
    make_napari_viewer, qtbot, tiny_model, image_300x500
):
    from napari_sam._widgets.everything import EverythingWidget

    viewer = make_napari_viewer()
    stack = np.stack([image_300x500[:, :200]] * 3)  # identical planes: every object spans z
    viewer.add_image(stack, name="stack")
    existing = viewer.add_labels(np.full(stack.shape, 7, np.int32), name="SAM everything")
    widget = EverythingWidget(viewer, model=tiny_model)
    widget.settings = replace(LOOSE, pred_iou_thresh=0.0)
    widget.threshold_boxes["pred_iou_thresh"].setValue(0.0)
    widget.threshold_boxes["stability_score_thresh"].setValue(0.0)
    widget.points_box.setValue(4)
    widget.background_box.setChecked(False)
    widget.run_stack()
    wait_idle(widget, qtbot)
    assert (existing.data == 7).all()
    assert widget._done == (3, 3)  # planes reported while running
    assert "3 planes" in widget.status.text()
    result = viewer.layers["SAM everything [2]"].data
    assert result.shape == stack.shape
    # Same planes -> same 2D labels, linked into objects that span all three planes.
    assert result.max() > 0
    for label in np.unique(result[1])[1:]:
        assert (
            (result[0] == label).sum() == (result[2] == label).sum() == (result[1] == label).sum()
        )


def test_cancel_writes_nothing(widget, qtbot):
    viewer, widget = widget
    widget._ensure_session()
    widget._start(
        lambda stop: widget.session.segment_stack(should_stop=lambda: True),
        lambda result: widget._add_result(result, viewer.layers["blobs"]),
        "running",
    )
    wait_idle(widget, qtbot)
    assert "SAM everything" not in viewer.layers
    assert "Cancelled" in widget.status.text()


def test_every_point_box_turns_skipping_off_and_needs_a_new_decoding(widget):
    _viewer, widget = widget
    widget.settings = EverythingSettings()
    assert not widget.every_point_box.isChecked()
    default = widget.current_settings()
    assert (default.skip_covered, default.stop_after_empty, default.skip_distance) == (
        True,
        EverythingSettings().stop_after_empty,
        EverythingSettings().skip_distance,
    )
    assert widget._ensure_session()
    first = widget.session
    widget.every_point_box.setChecked(True)
    every = widget.current_settings()
    assert (every.skip_covered, every.stop_after_empty, every.skip_distance) == (False, None, 0.0)
    assert widget._ensure_session() and widget.session is not first  # decoded candidates differ


def test_the_form_starts_at_the_engine_defaults(make_napari_viewer, tiny_model):
    """One source for each default: the fields read EverythingSettings and the batch defaults."""
    from napari_sam._widgets.everything import EverythingWidget
    from napari_sam.batch.settings import StackSettings
    from napari_sam.engine.tiling.grid import DEFAULT_HALO

    widget = EverythingWidget(make_napari_viewer(), model=tiny_model)
    assert widget.current_settings() == EverythingSettings()
    assert {name: box.value() for name, box in widget.threshold_boxes.items()} == {
        name: getattr(EverythingSettings(), name) for name in widget.threshold_boxes
    }
    assert (widget.tile_box.value() or None) == StackSettings().tile
    assert widget.halo_box.value() == DEFAULT_HALO
    assert widget.link_box.isChecked() == (StackSettings().linking is not None)
