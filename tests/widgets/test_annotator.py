"""The SAM annotator widget driven in a real napari viewer with the real default weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam.demo import mask_iou, prompts_from_labels
from napari_sam.io.samples import load_dsb2018


@pytest.fixture(scope="module")
def dsb():
    image, truth = load_dsb2018()
    ids, boxes, points = prompts_from_labels(truth)
    return image, truth, ids, boxes, points


@pytest.fixture(scope="module")
def shared_predictor():
    from napari_sam.engine.prediction.predictor import Predictor

    return Predictor("vit_t", device="cpu")


def open_widget(viewer, qtbot, predictor, image, name="nuclei", labels=None):
    from napari_sam._widgets import open_annotator

    viewer.add_image(image, name=name)
    if labels is not None:
        viewer.add_labels(labels, name="existing")
    widget = open_annotator(viewer, image=name, start=False)
    widget._shared_model = lambda *_: predictor  # one model for the whole module
    if labels is not None:
        widget.labels_box.setCurrentText("existing")
    widget.start()
    wait_for_embedding(widget, qtbot)
    return widget


def wait_for_embedding(widget, qtbot):
    qtbot.waitUntil(
        lambda: widget.worker is None and widget.session.has_embedding(widget.plane_key()),
        timeout=120_000,
    )


def test_point_preview_equals_the_engine_and_commit_undo(
    make_napari_viewer, qtbot, dsb, shared_predictor
):
    image, truth, ids, _boxes, points = dsb
    existing = np.zeros_like(truth, dtype=np.int32)
    existing[truth == ids[5]] = 50  # an object the user made earlier
    viewer = make_napari_viewer()
    widget = open_widget(viewer, qtbot, shared_predictor, image, labels=existing)

    widget.points_layer.add(points[0])
    preview = widget.preview_layer.data == 1
    shared_predictor.set_image(image, widget.session.normalization)
    engine = shared_predictor.predict(points=points[:1]).best_mask
    assert mask_iou(preview, engine) == 1.0
    quality = mask_iou(preview, truth == ids[0])
    print(f"click on nucleus {ids[0]}: IoU with the human label {quality:.3f}")
    assert quality > 0.6

    # One click is ambiguous: SAM's three candidates, the best shown, the others a key away.
    clicked = widget.preview_result.objects[0]
    assert len(clicked.prediction.scores) == 3 and clicked.chosen == clicked.prediction.best
    widget.cycle_candidate()
    following = (clicked.chosen + 1) % 3
    shown = widget.preview_layer.data == 1
    np.testing.assert_array_equal(shown, clicked.prediction.masks[following])
    assert widget.status.text().startswith(f"candidate {following + 1} of 3")
    widget.cycle_candidate()
    widget.cycle_candidate()
    np.testing.assert_array_equal(widget.preview_layer.data == 1, preview)

    widget.toggle_polarity()
    widget.points_layer.add(points[1])  # a background point on another nucleus
    assert widget.points_layer.features["positive"].tolist() == [True, False]
    # The background point refines the same object, which is no longer ambiguous: one mask,
    # the engine's for both points, holding the click and not the background point.
    assert len(widget.preview_result.objects) == 1
    assert len(widget.preview_result.objects[0].prediction.scores) == 1
    refined = widget.preview_layer.data == 1
    engine = shared_predictor.predict(points=points[:2], point_labels=[1, 0]).masks[0]
    assert mask_iou(refined, engine) == 1.0
    assert refined[int(points[0][0]), int(points[0][1])]
    assert not refined[int(points[1][0]), int(points[1][1])]

    before = widget.objects_layer.data.copy()
    widget.id_box.setValue(1)
    widget.commit()
    after = widget.objects_layer.data
    assert set(np.unique(after)) == {0, 1, 50}
    assert (after[before == 50] == 50).all()  # the earlier object is untouched
    assert len(widget.points_layer.data) == 0 and widget.preview_layer.data.max() == 0
    record = json.loads(widget.objects_layer.metadata["napari_sam"])
    assert record["objects"][0]["id"] == 1 and record["objects"][0]["point_labels"] == [1, 0]

    widget.objects_layer.undo()
    np.testing.assert_array_equal(widget.objects_layer.data, before)
    widget.close_session()


def test_boxes_give_separate_objects(make_napari_viewer, qtbot, dsb, shared_predictor):
    image, truth, ids, boxes, _ = dsb
    viewer = make_napari_viewer()
    widget = open_widget(viewer, qtbot, shared_predictor, image)
    for box in boxes[10:13]:
        widget.boxes_layer.add_rectangles(np.array([box[:2], box[2:]]))
    assert len(widget.preview_result.objects) == 3
    widget.commit()
    labels = widget.objects_layer.data
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    for label, nucleus in zip((1, 2, 3), ids[10:13]):
        assert mask_iou(labels == label, truth == nucleus) > 0.6
    widget.close_session()


def test_stack_planes_are_segmented_separately(make_napari_viewer, qtbot, dsb, shared_predictor):
    image, _truth, _ids, _, points = dsb
    stack = np.stack([image[:256, :256], image[256:, 256:]])
    viewer = make_napari_viewer()
    widget = open_widget(viewer, qtbot, shared_predictor, stack, name="stack")
    assert widget.plane_key() == (0,)
    inside = next(p for p in points if p[0] < 256 and p[1] < 256)
    widget.points_layer.add([0, *inside])
    first = widget.preview_layer.data[0].copy()
    assert first[int(inside[0]), int(inside[1])] == 1

    viewer.dims.set_current_step(0, 1)
    wait_for_embedding(widget, qtbot)
    assert widget.plane_key() == (1,)
    assert widget.preview_result is None or widget.preview_layer.data[1].max() == 0
    other = next(p - 256 for p in points if p[0] >= 256 and p[1] >= 256)
    widget.points_layer.add([1, *other])
    assert widget.preview_layer.data[1][int(other[0]), int(other[1])] == 1
    np.testing.assert_array_equal(widget.preview_layer.data[0], first)  # plane 0 kept
    assert widget.session.has_embedding((0,)) and widget.session.has_embedding((1,))
    widget.close_session()


def test_cancel_stops_the_encoding(make_napari_viewer, qtbot, dsb, shared_predictor):
    image = dsb[0]
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    from napari_sam._widgets import open_annotator

    widget = open_annotator(viewer, image="nuclei", start=False)
    widget._shared_model = lambda *_: shared_predictor
    widget.start()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.jobs.kind == "encode", timeout=60_000)  # model loaded
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not widget.session.has_embedding(())
    assert "cancelled" in widget.status.text()
    widget.close_session()


def test_keys_are_bound_and_removed(make_napari_viewer, qtbot, dsb, shared_predictor):
    viewer = make_napari_viewer()
    widget = open_widget(viewer, qtbot, shared_predictor, dsb[0])
    assert "Shift+C" in {str(k) for k in viewer.keymap}
    widget.close_session()
    assert "Shift+C" not in {str(k) for k in viewer.keymap}


def test_a_labels_layer_is_not_an_image(make_napari_viewer, qtbot, dsb):
    viewer = make_napari_viewer()
    viewer.add_labels(dsb[1], name="labels only")
    from napari_sam._widgets.annotator import AnnotatorWidget

    widget = AnnotatorWidget(viewer)
    assert widget.image_box.count() == 0
    widget.start()  # shows a notification instead of crashing
    assert widget.session is None
    widget.close_session()


def test_refine_an_existing_label_in_place(make_napari_viewer, qtbot, dsb, shared_predictor):
    image, truth, ids, _, _ = dsb
    rough = np.zeros_like(truth, dtype=np.int32)
    rough[truth == ids[20]] = 7
    rows, _cols = np.nonzero(rough == 7)
    rough[rows.min() : rows.min() + 4, :] = 0  # a cruder outline: the top rows missing
    viewer = make_napari_viewer()
    widget = open_widget(viewer, qtbot, shared_predictor, image, labels=rough)
    widget.objects_layer.selected_label = 7
    widget.refine_box.setChecked(True)
    assert widget.preview_result is not None and len(widget.preview_result.objects) == 1
    widget.commit()
    refined = widget.objects_layer.data == 7
    assert set(np.unique(widget.objects_layer.data)) == {0, 7}
    assert mask_iou(refined, truth == ids[20]) > mask_iou(rough == 7, truth == ids[20]) - 0.05
    assert mask_iou(refined, truth == ids[20]) > 0.7
    widget.close_session()


def test_record_replays_the_same_objects(
    make_napari_viewer, qtbot, dsb, shared_predictor, tmp_path
):
    image, _, _, boxes, points = dsb
    viewer = make_napari_viewer()
    widget = open_widget(viewer, qtbot, shared_predictor, image)
    widget.points_layer.add(points[30])
    widget.commit()
    for box in boxes[40:42]:
        widget.boxes_layer.add_rectangles(np.array([box[:2], box[2:]]))
    widget.commit()
    path = tmp_path / "record.json"
    widget.save_record(str(path))
    widget.load_record(str(path))
    replayed = viewer.layers["SAM objects (replayed)"].data
    np.testing.assert_array_equal(replayed, widget.objects_layer.data)
    assert set(np.unique(replayed)) == {0, 1, 2, 3}
    widget.close_session()


def test_a_cached_volume_is_never_encoded_again(
    make_napari_viewer, qtbot, dsb, shared_predictor, tmp_path
):
    from napari_sam.batch.embedding import embed_volume, open_cached_session

    stack = np.stack([dsb[0][:256, :256], dsb[0][256:, 256:]])
    embed_volume(open_cached_session(stack, tmp_path / "c.zarr", shared_predictor))
    calls = []
    original = shared_predictor.encode
    shared_predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        viewer = make_napari_viewer()
        viewer.add_image(stack, name="stack")
        from napari_sam._widgets import open_annotator

        widget = open_annotator(viewer, image="stack", start=False)
        widget._shared_model = lambda *_: shared_predictor
        widget.cache_edit.setText(str(tmp_path / "c.zarr"))
        widget.start()
        wait_for_embedding(widget, qtbot)
        widget.points_layer.add([0, 100, 100])
        viewer.dims.set_current_step(0, 1)
        wait_for_embedding(widget, qtbot)
        assert calls == []
        widget.close_session()
    finally:
        shared_predictor.encode = original


def test_large_planes_are_tiled_and_their_tiles_cached(
    make_napari_viewer, qtbot, dsb, shared_predictor, tmp_path
):
    from napari_sam._widgets import open_annotator
    from napari_sam.engine.annotation.tiled_session import TiledSession
    from napari_sam.engine.tiling.prompting import TiledPlane

    image, truth, ids, boxes, points = dsb
    across = next(
        i for i, b in enumerate(boxes) if b[0] < 192 <= b[2] and b[3] < 160
    )  # crosses a tile border
    calls, original = [], shared_predictor.encode
    shared_predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        encoded = []
        for _ in range(2):  # the second time, every tile comes from the cache
            viewer = make_napari_viewer()
            viewer.add_image(image, name="nuclei")
            widget = open_annotator(viewer, image="nuclei", start=False)
            assert widget.tiling() == {"tile": None, "halo": None, "upscale": 1.0}
            widget._shared_model = lambda *_: shared_predictor
            widget.tile_box.setValue(192)
            widget.halo_box.setValue(32)
            widget.cache_edit.setText(str(tmp_path / "tiles.zarr"))
            before = len(calls)
            widget.start()
            wait_for_embedding(widget, qtbot)
            encoded.append(len(calls) - before)
            assert (
                isinstance(widget.session, TiledSession)
                and len(widget.session.plane(()).tiles) == 9
            )
            widget.points_layer.add(points[across])
            preview = widget.preview_layer.data == 1
            widget.close_session()
        assert encoded == [9, 0]
        engine = TiledPlane(
            shared_predictor,
            image,
            widget.session.normalization,
            192,
            32,
            backend=widget.session.cache.tiles(()),
        )
        assert mask_iou(preview, engine.predict(points=points[across : across + 1]).masks[0]) == 1.0
        quality = mask_iou(preview, truth == ids[across])
        print(
            f"click on nucleus {ids[across]} across a tile border: "
            f"IoU with the human label {quality:.3f}"
        )
        assert quality > 0.6
    finally:
        shared_predictor.encode = original
