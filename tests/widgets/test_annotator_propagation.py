"""The annotator's Propagate on a small synthetic stack with the tiny random SAM.

What the widget writes is compared with the engine's own result on a numpy copy
(``session.propagate`` + ``Propagation.paint``), so these tests check the widget's part:
which objects it propagates, the ids, one undo step, other objects kept, cancel, the
correction path and the controls; the quality of propagation is measured in
benchmarks/eval_propagation.py with the real weights.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_sam.engine.annotation.propagation import PropagationSettings

WAIT_MS = 60_000
SLICES, SIDE = 12, 96
BOX = (20, 30, 60, 70)  # (row0, col0, row1, col1) around the larger blob
OTHER_BOX = (58, 8, 82, 32)  # around the smaller blob
# Random weights do not keep an object's masks alike from slice to slice, nor predict a
# high IoU: only "vanished" and the stack's ends stop an object here.
LOOSE = PropagationSettings(min_iou=0.0, min_score=0.0, max_growth=np.inf)


def blob_stack() -> np.ndarray:
    """(12, 96, 96) uint16: two ellipsoids on a dim background."""
    z, r, c = np.mgrid[:SLICES, :SIDE, :SIDE]
    large = (4 * (z - 6) ** 2 + (r - 40) ** 2 + (c - 50) ** 2) < 20**2
    small = (4 * (z - 5) ** 2 + (r - 70) ** 2 + (c - 20) ** 2) < 12**2
    return (200 + 3000 * large + 2000 * small).astype(np.uint16)


@pytest.fixture(scope="module")
def predictor(tiny_architecture):
    from napari_sam.engine.prediction.predictor import Predictor
    from tiny_sam import random_model

    # Seed 1: its predicted IoUs are positive, so the (off) score rule never stops an object.
    return Predictor(random_model(tiny_architecture, seed=1))


@pytest.fixture
def open_widget(make_napari_viewer, qtbot, predictor):
    """``open_widget(image, labels=None)``: a new viewer and annotator, closed at the end."""
    from napari_sam._widgets import open_annotator

    opened = []

    def open_one(image, labels=None):
        viewer = make_napari_viewer()
        viewer.add_image(image, name="stack")
        if labels is not None:
            viewer.add_labels(labels.copy(), name="existing")  # napari keeps the array
        widget = open_annotator(viewer, image="stack", start=False)
        opened.append(widget)
        widget._shared_model = lambda *_: predictor
        if labels is not None:
            widget.labels_box.setCurrentText("existing")
        widget.propagation_settings = LOOSE
        widget.start()
        wait_idle(widget, qtbot)
        return viewer, widget

    yield open_one
    for widget in opened:
        widget.close_session()


def wait_idle(widget, qtbot):
    qtbot.waitUntil(
        lambda: widget.worker is None and widget.session.has_embedding(widget.plane_key()),
        timeout=WAIT_MS,
    )


def show_slice(viewer, widget, qtbot, index: int) -> None:
    viewer.dims.set_current_step(0, index)
    wait_idle(widget, qtbot)


def box_on(index: int, box=BOX) -> np.ndarray:
    """A napari rectangle on slice ``index``: its four (z, row, col) corners."""
    row0, col0, row1, col1 = box
    return np.array(
        [[index, row0, col0], [index, row0, col1], [index, row1, col1], [index, row1, col0]]
    )


def expected_labels(widget, before, objects, ids, overwrite=False) -> np.ndarray:
    """What the engine paints for ``objects`` on plane (5,) into a copy of ``before``."""
    propagation = widget.session.propagate((5,), objects, axis=0, settings=LOOSE)
    labels = before.copy()
    propagation.paint(labels, ids, overwrite=overwrite)
    return labels


@pytest.fixture
def stack_widget(open_widget, qtbot):
    viewer, widget = open_widget(blob_stack())
    show_slice(viewer, widget, qtbot, 5)
    return viewer, widget


def test_a_previewed_box_is_written_as_the_engine_paints_it_and_undone_at_once(stack_widget, qtbot):
    _viewer, widget = stack_widget
    layer = widget.objects_layer
    assert widget.axis_box.count() == 1 and widget.propagate_button.isEnabled()
    widget.boxes_layer.add_rectangles(box_on(5))
    preview = widget.preview_result
    assert len(preview.objects) == 1 and preview.key == (5,)
    before = layer.data.copy()

    widget.propagate()
    assert widget.jobs.kind == "propagate" and widget.cancel_button.text() == "Cancel propagation"
    assert not widget.propagate_button.isEnabled() and not widget.commit_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    expected = expected_labels(widget, before, preview, [1])
    np.testing.assert_array_equal(layer.data, expected)
    reached = np.nonzero((layer.data == 1).any(axis=(1, 2)))[0]
    assert reached.tolist() == list(range(SLICES))  # carried to both ends of the stack
    assert widget.status.text().startswith(
        f"Propagated 1 (slices 0-{SLICES - 1}, ended: limit / limit). Undo"
    )
    assert widget.id_box.value() == 2  # the next new object gets the next id
    assert len(widget.boxes_layer.data) == 0 and widget.preview_layer.data.max() == 0
    assert widget.propagate_button.isEnabled() and not widget.cancel_button.isEnabled()

    layer.undo()  # the whole propagation is one undo step
    np.testing.assert_array_equal(layer.data, before)


def test_other_objects_keep_their_pixels_unless_overwrite_is_checked(open_widget, qtbot):
    existing = np.zeros((SLICES, SIDE, SIDE), np.int32)
    existing[2:9, 30:50, 40:60] = 50  # where the box's object is on every slice
    viewer, widget = open_widget(blob_stack(), labels=existing)
    show_slice(viewer, widget, qtbot, 5)
    layer = widget.objects_layer
    assert widget.id_box.value() == 51
    for overwrite in (False, True):
        widget.overwrite_box.setChecked(overwrite)
        widget.boxes_layer.add_rectangles(box_on(5))
        preview = widget.preview_result
        widget.propagate()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
        np.testing.assert_array_equal(
            layer.data, expected_labels(widget, existing, preview, [51], overwrite)
        )
        kept = int(np.count_nonzero(layer.data == 50))
        if overwrite:
            assert kept < np.count_nonzero(existing == 50)
            assert "kept" not in widget.status.text()
        else:
            assert kept == np.count_nonzero(existing == 50)
            assert "pixels of other objects kept" in widget.status.text()
        layer.undo()
        np.testing.assert_array_equal(layer.data, existing)
        widget.id_box.setValue(51)


def test_pixels_painted_after_the_plan_are_kept(stack_widget, qtbot):
    """The writes are planned on the torch thread; an edit before they land is respected."""
    _viewer, widget = stack_widget
    layer = widget.objects_layer
    widget.boxes_layer.add_rectangles(box_on(5))
    preview = widget.preview_result
    handle = widget._propagated_done
    plans = []

    def paint_first(request, planned):  # the user paints just before the result arrives
        plans.append(planned)
        layer.data[8, 30:40, 40:50] = 77  # a plain write: napari sends no event for it
        handle(request, planned)

    widget._propagated_done = paint_first
    widget.propagate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    painted = np.zeros_like(layer.data)
    painted[8, 30:40, 40:50] = 77
    (change,) = [c for c in plans[0].changes if c.key == (8,)]
    inside = (change.rows >= 30) & (change.rows < 40) & (change.cols >= 40) & (change.cols < 50)
    assert (change.values[inside] == 1).any()  # planned before the paint: it took those pixels
    assert (layer.data[8, 30:40, 40:50] == 77).all()
    np.testing.assert_array_equal(layer.data, expected_labels(widget, painted, preview, [1]))
    assert "pixels of other objects kept" in widget.status.text()
    layer.undo()
    np.testing.assert_array_equal(layer.data, painted)


def test_committed_objects_of_the_plane_are_propagated_with_their_ids(stack_widget, qtbot):
    _viewer, widget = stack_widget
    layer = widget.objects_layer
    layer.data[7, 10:20, 10:20] = 9  # an object on another slice, not on plane 5
    widget.boxes_layer.add_rectangles(box_on(5))
    widget.commit(force=True)
    widget.id_box.setValue(4)
    widget.boxes_layer.add_rectangles(box_on(5, OTHER_BOX))
    widget.commit(force=True)
    assert widget.preview_result is None
    before = layer.data.copy()
    plane = before[5]
    masks = np.stack([plane == 1, plane == 4])
    assert masks.any(axis=(1, 2)).all()

    widget.propagate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    np.testing.assert_array_equal(layer.data, expected_labels(widget, before, masks, [1, 4]))
    assert set(np.unique(layer.data[0])) <= {0, 1, 4}
    assert widget.status.text().startswith("Propagated 1 (slices")
    assert ", 4 (slices" in widget.status.text()
    assert widget.id_box.value() == 5  # committed ids are kept: the id box is left alone


def test_progress_is_shown_and_cancel_writes_nothing(stack_widget, qtbot):
    _viewer, widget = stack_widget
    session = widget.session
    decode, calls = session.decode_prompts, []
    second, release = threading.Event(), threading.Event()

    def slow_decode(key, prompts):  # the second slice waits for the test
        calls.append(key)
        if len(calls) == 2:
            second.set()
            assert release.wait(WAIT_MS / 1000)
        return decode(key, prompts)

    session.decode_prompts = slow_decode
    widget.boxes_layer.add_rectangles(box_on(5))
    before = widget.objects_layer.data.copy()
    widget.propagate()
    assert second.wait(WAIT_MS / 1000)
    qtbot.waitUntil(lambda: "slice-objects" in widget.status.text(), timeout=WAIT_MS)
    assert widget.status.text() == f"propagating: 1 / {SLICES - 1} slice-objects"
    widget.propagate()  # a second press while it runs changes nothing
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    np.testing.assert_array_equal(widget.objects_layer.data, before)
    assert widget.status.text() == "Cancelled: Propagation was cancelled."
    assert len(calls) == 2  # stopped at the next slice
    assert widget.propagate_button.isEnabled() and len(widget.boxes_layer.data) == 1


def test_a_correction_rewrites_only_the_slices_beyond_it(stack_widget, qtbot):
    viewer, widget = stack_widget
    layer = widget.objects_layer
    widget.boxes_layer.add_rectangles(box_on(5))
    widget.propagate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    first = widget._propagated[1][0]
    before = layer.data.copy()

    show_slice(viewer, widget, qtbot, 7)
    layer.selected_label = 1
    widget.refine_box.setChecked(True)
    widget.boxes_layer.add_rectangles(box_on(7, OTHER_BOX))  # it is elsewhere
    item = widget.preview_result.objects[0]
    assert not np.array_equal(item.mask, before[7] == 1)
    calls = []
    correct = widget.session.correct
    widget.session.correct = lambda *args: calls.append(args) or correct(*args)
    widget.propagate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    ((propagation, index, at, mask, logits, _settings, _stop, _progress),) = calls
    assert propagation is first and (index, at) == (0, 7)
    np.testing.assert_array_equal(mask, item.mask)
    np.testing.assert_array_equal(logits, item.prediction.logits[item.chosen])
    fixed = widget._propagated[1][0].objects[0]
    np.testing.assert_array_equal(layer.data[:7], before[:7])  # the user's slices kept
    for index in range(7, SLICES):
        object_there = fixed.slices[index].paste((SIDE, SIDE)) if index in fixed.slices else 0
        np.testing.assert_array_equal(layer.data[index] == 1, object_there)
    assert not np.array_equal(layer.data[7:], before[7:])
    assert widget.status.text().startswith("Corrected 1 (slices 0-")
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_propagate_is_offered_on_stacks_only_along_their_axes(open_widget, qtbot):
    viewer, flat = open_widget(blob_stack()[5])
    assert not flat.propagate_button.isEnabled() and not flat.axis_box.isEnabled()
    assert flat.axis_box.count() == 0
    flat.propagate()  # says why instead of starting a job
    assert flat.worker is None and flat.objects_layer.data.max() == 0
    assert "Shift+P" in {str(k) for k in viewer.keymap}

    viewer, widget = open_widget(np.stack([blob_stack()[:3]] * 2))
    viewer.dims.axis_labels = ("t", "z", "y", "x")
    widget.start()  # the axes are read when a session opens
    wait_idle(widget, qtbot)
    items = [widget.axis_box.itemText(i) for i in range(widget.axis_box.count())]
    assert items == ["t (2 slices)", "z (3 slices)"]
    assert widget.axis_box.currentIndex() == 1  # z: through depth first
    assert widget.propagate_button.isEnabled()


def test_unnamed_axes_are_called_by_their_position(open_widget, qtbot):
    _viewer, widget = open_widget(blob_stack())
    items = [widget.axis_box.itemText(i) for i in range(widget.axis_box.count())]
    assert items == [f"axis 0 ({len(blob_stack())} slices)"]


def test_the_marked_slices_bound_the_propagation(stack_widget, qtbot):
    _viewer, widget = stack_widget
    assert (widget.first_box.value(), widget.last_box.value()) == (0, SLICES - 1)
    widget.first_box.setValue(3)
    widget.last_box.setValue(8)
    widget.boxes_layer.add_rectangles(box_on(5))
    widget.propagate()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    reached = np.nonzero((widget.objects_layer.data == 1).any(axis=(1, 2)))[0]
    assert reached.tolist() == list(range(3, 9))  # the whole stack without the marks
