"""The instance head in the segment-everything widget: learn it from a labels layer, segment
with it (preview and stack equal the engine's), cancel, save, load, refuse another model's.

Tiny random SAM and a tiny training recipe (seconds); the head's quality is tested in
tests/engine and tests/training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.instances.head import HeadCard, InstanceHead, TrainedHead, load_head
from napari_sam.engine.instances.segmenter import HeadSegmenter
from napari_sam.engine.prediction.preprocess import compute_normalization
from napari_sam.training.head_training import HeadTrainingSettings

# Loose filters: the tiny SAM's scores mean nothing, but APG must keep objects.
LOOSE = EverythingSettings(
    points_per_side=4,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    keep_iou_floor=-10.0,
    keep_stability_floor=0.0,
    skip_covered=False,
    stop_after_empty=None,
    drop_background=False,
)
# A few seconds on 2 cores, and enough for the head to find objects in the training image.
RECIPE = HeadTrainingSettings(steps=40, batch_size=1, augment=1, width=8, learning_rate=1e-2)


def objects_of(image: np.ndarray) -> np.ndarray:
    """The bright blobs of an image as instance labels (int32)."""
    return ndimage.label(image > 1500)[0].astype(np.int32)


def make_widget(viewer, tiny_model):
    from napari_sam._widgets.everything import EverythingWidget

    widget = EverythingWidget(viewer, model=tiny_model)
    widget.settings = LOOSE
    widget.points_box.setValue(LOOSE.points_per_side)
    for name, box in widget.threshold_boxes.items():
        box.blockSignals(True)
        box.setValue(getattr(LOOSE, name))
        box.blockSignals(False)
    widget.background_box.setChecked(False)
    widget.head_training = RECIPE
    viewer.window.add_dock_widget(widget)
    return widget


@pytest.fixture
def widget(make_napari_viewer, tiny_model, image_300x500):
    viewer = make_napari_viewer()
    viewer.add_image(image_300x500, name="blobs")
    viewer.add_labels(objects_of(image_300x500), name="objects")
    widget = make_widget(viewer, tiny_model)
    widget.labels_box.setCurrentText("objects")
    return viewer, widget


def wait_idle(widget, qtbot):
    qtbot.waitUntil(lambda: widget.worker is None and not widget._timer.isActive(), timeout=120_000)


def choose(widget, mode: str | None) -> None:
    widget.method_box.setCurrentIndex(widget.method_box.findData(mode))


def random_head(encoder: str, seed: int = 0) -> TrainedHead:
    torch.manual_seed(seed)
    card = HeadCard(encoder=encoder, trained_on="test", mode="labels", planes=2, objects=9, width=8)
    return TrainedHead(InstanceHead(width=8).eval(), card)


def test_learnt_head_counts_the_layer_and_previews_equal_the_engine(
    widget, qtbot, tiny_model, image_300x500
):
    from napari_sam.engine.prediction.predictor import Predictor

    viewer, widget = widget
    labels = viewer.layers["objects"].data
    before = labels.copy()
    widget.learn_head()
    wait_idle(widget, qtbot)
    head = widget.head
    assert head is not None
    assert (head.card.planes, head.card.objects) == (1, len(np.unique(before)) - 1)
    assert head.card.encoder == tiny_model.model_id
    assert widget._learning == ("training", RECIPE.steps, RECIPE.steps)  # progress reached
    assert widget.head_label.text().startswith(f"head: learnt from 1 plane, {head.card.objects}")
    assert widget.save_button.isEnabled()
    assert np.array_equal(labels, before)  # learning only reads the layer
    assert widget.session.method is None  # the grid until a head method is chosen
    choose(widget, "ais")
    widget.preview()
    wait_idle(widget, qtbot)
    preview = viewer.layers["SAM everything preview"].data
    normalization = compute_normalization(image_300x500)
    ais = HeadSegmenter(Predictor(tiny_model), head, "ais").segment(image_300x500, normalization)
    assert preview.max() > 0
    assert np.array_equal(preview, ais.labels)
    assert f"{preview.max()} objects with the head: instances (AIS)" in widget.status.text()
    choose(widget, "apg")
    widget.preview()
    wait_idle(widget, qtbot)
    apg = HeadSegmenter(Predictor(tiny_model), head, "apg", widget.current_settings())
    expected = apg.segment(image_300x500, normalization)
    assert expected.labels.max() > 0 and expected.points_decoded > 0
    assert np.array_equal(viewer.layers["SAM everything preview"].data, expected.labels)
    assert f"{expected.points_decoded} prompts decoded" in widget.status.text()
    # A threshold segments the plane again with the head (no grid re-threshold).
    widget.threshold_boxes["pred_iou_thresh"].setValue(1.2)
    wait_idle(widget, qtbot)
    assert viewer.layers["SAM everything preview"].data.max() == 0
    assert widget.session.method is not None and "0 objects" in widget.status.text()
    assert np.array_equal(labels, before)


def test_cancel_while_learning_keeps_the_previous_head(widget, qtbot, monkeypatch):
    from napari_sam.training import embeddings

    viewer, widget = widget
    encoded = []
    encode = embeddings.encode
    monkeypatch.setattr(embeddings, "encode", lambda *args: encoded.append(1) or encode(*args))
    names = [layer.name for layer in viewer.layers]
    before = viewer.layers["objects"].data.copy()
    long = HeadTrainingSettings(steps=100_000, batch_size=1, augment=1, width=8)

    def learn_and_cancel():
        widget.head_training = long
        widget.learn_head()
        qtbot.waitUntil(lambda: (widget._learning or ("",))[0] == "training", timeout=120_000)
        widget.cancel()
        wait_idle(widget, qtbot)
        assert "Cancelled" in widget.status.text()

    learn_and_cancel()
    assert widget.head is None and widget.head_label.text() == "no head"
    widget.head_training = RECIPE
    widget.learn_head()
    wait_idle(widget, qtbot)
    first, label = widget.head, widget.head_label.text()
    assert first is not None
    learn_and_cancel()
    assert widget.head is first and widget.head_label.text() == label
    assert len(encoded) == 1  # the plane was encoded once: learning again reuses it
    assert [layer.name for layer in viewer.layers] == names
    assert np.array_equal(viewer.layers["objects"].data, before)


def test_a_head_method_needs_a_head(widget, monkeypatch):
    import napari_sam._widgets._everything_head as module

    _viewer, widget = widget
    errors = []
    monkeypatch.setattr(module, "show_error", errors.append)
    assert widget._ensure_session()
    choose(widget, "ais")
    assert widget.method_box.currentData() is None  # back on the point grid
    assert widget.session.method is None
    assert len(errors) == 1 and "learn one" in errors[0] and "load one" in errors[0]
    assert "point grid stays in use" in widget.status.text()
    # A head for another model (accepted while the widget's model was not known yet, e.g. a
    # checkpoint file) is refused when the session would use it.
    widget.head = random_head("vit_b@0123456789ab")
    choose(widget, "ais")
    assert widget.method_box.currentData() is None and widget.session.method is None
    assert len(errors) == 2 and "trained on embeddings of vit_b@0123456789ab" in errors[1]


def test_save_and_load_round_trip_and_another_models_head_is_refused(
    widget, tmp_path, monkeypatch, tiny_model
):
    import napari_sam._widgets._everything_head as module

    _viewer, widget = widget
    errors = []
    monkeypatch.setattr(module, "show_error", errors.append)
    original = random_head(tiny_model.model_id)
    original.save(tmp_path / "original")
    assert widget.save_head(tmp_path / "none") is None and "No instance head" in errors.pop()
    assert widget.load_head(tmp_path / "original.pt")
    written = widget.save_head(tmp_path / "copy.pt")
    assert written == tmp_path / "copy.pt" and (tmp_path / "copy.json").is_file()
    copy = load_head(written)
    assert copy.card == original.card
    state, saved = original.network.state_dict(), copy.network.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[name], saved[name]) for name in state)
    assert widget.head_label.text() == "head: copy.pt, learnt from 2 planes, 9 objects, 0 s"
    # Another model's head: the reason is shown and the loaded head stays, with the session
    # open (its model's id) or not (the widget's model's id).
    kept, label = widget.head, widget.head_label.text()
    random_head("vit_b@0123456789ab", seed=1).save(tmp_path / "vit_b.pt")
    for _ in range(2):
        assert not widget.load_head(tmp_path / "vit_b.json")
        message = errors.pop()
        assert "trained on embeddings of vit_b@0123456789ab" in message
        assert tiny_model.model_id in message
        assert widget.head is kept and widget.head_label.text() == label
        assert widget._ensure_session()
    assert not errors
    # A missing file is refused the same way.
    assert not widget.load_head(tmp_path / "missing.pt")
    assert "No instance head at" in errors.pop() and widget.head is kept


def test_stack_run_with_the_head_equals_the_engine_in_a_new_layer(
    make_napari_viewer, qtbot, tiny_model, image_300x500
):
    from napari_sam.engine.everything.session import EverythingSession
    from napari_sam.engine.prediction.predictor import Predictor

    viewer = make_napari_viewer()
    stack = np.stack([image_300x500[:, :200], image_300x500[:, 150:350], image_300x500[:, 300:]])
    viewer.add_image(stack, name="stack")
    labels = np.stack([objects_of(plane) for plane in stack])
    labels[1] = 0  # the middle plane unlabelled: not learnt from
    layer = viewer.add_labels(labels.copy(), name="corrected")
    widget = make_widget(viewer, tiny_model)
    widget.labels_box.setCurrentText("corrected")
    widget.learn_head()
    wait_idle(widget, qtbot)
    card = widget.head.card
    assert card.planes == 2
    assert card.objects == sum(len(np.unique(labels[z])) - 1 for z in (0, 2))
    choose(widget, "ais")
    widget.run_stack()
    wait_idle(widget, qtbot)
    assert widget._done == (3, 3)
    result = viewer.layers["SAM everything"].data
    engine = EverythingSession(Predictor(tiny_model), stack, settings=widget.current_settings())
    engine.use_method(HeadSegmenter(engine.predictor, widget.head, "ais").segment)
    expected = engine.segment_stack(link=widget.link_box.isChecked())
    assert expected.labels.max() > 0
    assert np.array_equal(result, expected.labels)
    assert f"{expected.objects} objects in 3 planes" in widget.status.text()
    assert np.array_equal(layer.data, labels)  # the user's labels are untouched


def test_learning_from_the_preview_keeps_it_out_of_the_next_preview(widget, qtbot):
    viewer, widget = widget
    widget.preview()
    wait_idle(widget, qtbot)
    corrected = viewer.layers["SAM everything preview"]
    corrected.data = objects_of(viewer.layers["blobs"].data)  # the user's corrections
    before = corrected.data.copy()
    widget.labels_box.setCurrentText("SAM everything preview")
    widget.learn_head()
    wait_idle(widget, qtbot)
    assert corrected.name == "SAM everything labels"
    assert widget.labels_box.currentText() == "SAM everything labels"
    assert widget.head.card.objects == len(np.unique(before)) - 1
    choose(widget, "ais")
    widget.preview()
    wait_idle(widget, qtbot)
    assert viewer.layers["SAM everything preview"] is not corrected
    assert np.array_equal(corrected.data, before)
