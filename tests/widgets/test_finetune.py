"""The fine-tuning widget in a real napari viewer, on the tiny random SAM (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _discs(shape=(96, 96), centres=((24, 24), (24, 70), (70, 40), (66, 76)), radius=11):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, 1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    image = (200 + 2000 * (labels > 0) + np.random.default_rng(0).normal(0, 60, shape)).astype(
        np.uint16
    )
    return image, labels


@pytest.fixture
def tiny_training(monkeypatch, tiny_architecture):
    """Fine-tuning starts from the tiny random SAM instead of downloading vit_t."""
    import torch

    from napari_sam.training import annotations
    from napari_sam.training.network import load_trainable
    from tiny_sam import random_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(
        annotations,
        "load_trainable",
        lambda model, architecture=None: load_trainable(random_model(tiny_architecture)),
    )
    monkeypatch.setattr(annotations, "domains_to_keep", _domains_to_keep)
    yield
    torch.set_num_threads(threads)


def _domains_to_keep(keep=None, seed=0):
    """Stands in for the development nuclei: (rehearsal, reference validation) discs."""
    from napari_sam.training.datasets import images_from_arrays

    made = [_discs(centres=((30 + 8 * k, 30), (60, 64 - 6 * k)), radius=9) for k in range(2)]
    return (
        images_from_arrays(*made[0], name="keep rehearsal"),
        images_from_arrays(*made[1], name="keep validation"),
    )


def _widget(make_napari_viewer, tmp_path, labels=None, image=None):
    from napari_sam._widgets.finetune import FineTuneWidget

    viewer = make_napari_viewer()
    picture, truth = _discs()
    viewer.add_image(picture if image is None else image, name="cells")
    viewer.add_labels(truth if labels is None else labels, name="committed")
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM fine-tuning")
    widget.image_box.setCurrentText("cells")
    widget.labels_box.setCurrentText("committed")
    widget.output_edit.setText(str(tmp_path))
    widget.steps_box.setValue(2)
    widget.objects_box.setValue(2)
    widget.iterations_box.setValue(1)
    return viewer, widget


def test_fine_tunes_and_switches_the_annotator(make_napari_viewer, qtbot, tmp_path, tiny_training):
    from napari_sam._widgets import open_annotator

    viewer, widget = _widget(make_napari_viewer, tmp_path)
    annotator = open_annotator(viewer, image="cells", start=False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    result = widget.result
    assert result is not None and result.steps == 2 and result.weights.is_file()
    assert result.weights.parent.parent == tmp_path
    assert widget.progress_bar.value() == 2 and "Saved" in widget.status.text()
    # one image: no validation, so nothing to mix and no curve; the widget says so
    assert result.mix is None and "No validation" in widget.status.text()
    assert annotator.model_name != str(result.weights)  # offered, not switched yet
    assert widget.use_button.isEnabled()
    widget.use_button.click()
    assert annotator.model_name == str(result.weights)
    assert "1 annotator(s) now use" in widget.status.text()
    card = json.loads(result.card.read_text())
    assert not widget.freeze_iou_box.isChecked() and "0.88" in widget.freeze_iou_box.toolTip()
    assert card["training"]["settings"]["freeze_iou_head"] is False
    widget.close()
    viewer.add_image(np.zeros((4, 4)), name="later")  # no callback into the closed widget
    assert widget.image_box.findText("later") == -1


def test_shows_both_domains_before_offering_the_new_model(
    make_napari_viewer, qtbot, tmp_path, tiny_training
):
    """15 annotated planes: 3 blocks, one validates; the development nuclei's stand-in is
    the domain to keep. Both numbers and both curves appear, from the released model on."""
    from napari_sam._widgets import open_annotator

    image, labels = _discs()
    volume = np.stack([np.roll(image, 2 * k, axis=1) for k in range(15)])
    planes = np.stack([np.roll(labels, 2 * k, axis=1) for k in range(15)])
    viewer, widget = _widget(make_napari_viewer, tmp_path, labels=planes, image=volume)
    annotator = open_annotator(viewer, image="cells", start=False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=240_000)
    result = widget.result
    assert result is not None and result.mix is not None
    assert set(result.base_scores) == {"validation", "reference"}
    text = widget.status.text()
    assert "Your objects (validation): " in text and "Domains to keep" in text
    assert f"{result.base_scores['reference']:.3f} -> {result.mix.reference:.3f}" in text
    # the released model is the first point of both curves; every validation follows
    steps = [p[0] for p in widget.curves.points]
    assert steps[0] == 0 and steps[1:] == [1, 2] and not widget.curves.isHidden()
    assert widget.curves.points[0][1:] == (
        result.base_scores["validation"],
        result.base_scores["reference"],
    )
    lines = widget.curves.canvas.figure.axes[0].get_lines()
    assert len(lines) == 4  # two curves and the two stars of the saved weights
    assert annotator.model_name != str(result.weights)
    widget.use_button.click()
    assert annotator.model_name == str(result.weights)


def test_unticking_keep_trains_without_domains_to_keep(
    make_napari_viewer, qtbot, tmp_path, tiny_training, monkeypatch
):
    from napari_sam.training import annotations

    asked = []
    monkeypatch.setattr(annotations, "domains_to_keep", lambda **kw: asked.append(kw) or ([], []))
    _, widget = _widget(make_napari_viewer, tmp_path)
    widget.keep_box.setChecked(False)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.result is not None and asked == []


def test_cancel_keeps_a_resumable_checkpoint(make_napari_viewer, qtbot, tmp_path, tiny_training):
    import torch

    _, widget = _widget(make_napari_viewer, tmp_path)
    widget.freeze_iou_box.setChecked(True)
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.result is None and "Cancelled" in widget.status.text()
    (checkpoint,) = tmp_path.glob("*/checkpoint.pt")
    assert (
        torch.load(checkpoint, weights_only=True)["config"]["freeze_iou_head"] is True
    )  # the box is read


def test_empty_labels_are_refused(make_napari_viewer, tmp_path, monkeypatch):
    from napari_sam._widgets import finetune

    shown = []
    monkeypatch.setattr(finetune, "show_error", shown.append)
    _, widget = _widget(make_napari_viewer, tmp_path, labels=np.zeros((96, 96), np.int32))
    widget.run()
    assert widget.worker is None and "holds no object" in shown[0]


def test_the_form_starts_at_the_training_defaults(make_napari_viewer, tmp_path, monkeypatch):
    """One source for each default: untouched, the form runs exactly TrainingConfig()."""
    from napari_sam._widgets.finetune import FineTuneWidget
    from napari_sam.training.config import TrainingConfig

    viewer = make_napari_viewer()
    image, labels = _discs()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="committed")
    widget = FineTuneWidget(viewer)
    defaults = TrainingConfig()
    fields = (widget.steps_box.value(), widget.objects_box.value(), widget.iterations_box.value())
    assert fields == (defaults.steps, defaults.objects_per_step, defaults.prompts.iterations)
    assert (widget.minutes_box.value() or None) == defaults.max_minutes
    assert widget.freeze_iou_box.isChecked() == defaults.freeze_iou_head
    started = []
    monkeypatch.setattr(widget, "_start_worker", lambda images, config, out: started.append(config))
    widget.output_edit.setText(str(tmp_path))
    widget.run()
    assert started == [defaults]


def test_short_runs_validate_within_their_steps(make_napari_viewer, tmp_path, monkeypatch):
    from napari_sam.training.config import TrainingConfig

    _, widget = _widget(make_napari_viewer, tmp_path)
    widget.minutes_box.setValue(0)
    started = []
    monkeypatch.setattr(widget, "_start_worker", lambda images, config, out: started.append(config))
    widget.run()
    (config,) = started
    assert config.steps == 2 and config.warmup_steps <= 2 and config.validate_every <= 2
    assert config.max_minutes is None  # 0: no time limit
    assert config.learning_rate == TrainingConfig().learning_rate


@pytest.fixture
def tiny_head_model(monkeypatch, tiny_model):
    """Learning a head loads the tiny random SAM instead of vit_t."""
    from napari_sam.training import head_training

    monkeypatch.setattr(head_training, "load_model", lambda model, architecture=None: tiny_model)
    return tiny_model


def test_choosing_the_head_swaps_the_steps_and_greys_out_sam_fields(make_napari_viewer, tmp_path):
    from napari_sam._widgets.finetune import HEAD
    from napari_sam.training.head_settings import HeadTrainingSettings

    _, widget = _widget(make_napari_viewer, tmp_path)  # SAM, 2 steps
    widget.parts_box.setCurrentText(HEAD)
    assert widget.steps_box.value() == HeadTrainingSettings().steps
    assert widget.run_button.text() == "Learn head"
    assert not widget.objects_box.isEnabled() and not widget.freeze_iou_box.isEnabled()
    widget.steps_box.setValue(7)
    widget.parts_box.setCurrentText("decoder+prompt")
    assert widget.steps_box.value() == 2 and widget.objects_box.isEnabled()
    widget.parts_box.setCurrentText("decoder")  # SAM to SAM keeps the steps
    assert widget.steps_box.value() == 2
    widget.parts_box.setCurrentText(HEAD)
    assert widget.steps_box.value() == 7 and widget.run_button.text() == "Learn head"


def test_learns_a_head_and_hands_it_to_segment_everything(
    make_napari_viewer, qtbot, tmp_path, tiny_head_model
):
    import json

    from napari_sam._widgets.everything import EverythingWidget
    from napari_sam._widgets.finetune import HEAD

    viewer, widget = _widget(make_napari_viewer, tmp_path)
    everything = EverythingWidget(viewer, model=tiny_head_model)
    viewer.window.add_dock_widget(everything)
    widget.parts_box.setCurrentText(HEAD)
    widget.steps_box.setValue(3)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    path = widget.head_path
    assert path is not None and path.name == "head.pt" and path.parent.parent == tmp_path
    card = json.loads(path.with_suffix(".json").read_text())
    assert (card["encoder"], card["planes"], card["objects"]) == (tiny_head_model.model_id, 1, 4)
    assert card["trained_on"] == "cells (committed objects)" and card["mode"] == "labels"
    assert widget.result is None  # no SAM was fine-tuned
    assert everything.head is not None and everything.head_source == "head.pt"
    assert "1 segment-everything widget(s) now use it" in widget.status.text()
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 3


def test_cancelling_the_head_saves_nothing(make_napari_viewer, qtbot, tmp_path, tiny_head_model):
    from napari_sam._widgets.finetune import HEAD

    _, widget = _widget(make_napari_viewer, tmp_path)
    widget.parts_box.setCurrentText(HEAD)
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.head_path is None and "Cancelled" in widget.status.text()
    assert not list(tmp_path.glob("*/head.pt"))
