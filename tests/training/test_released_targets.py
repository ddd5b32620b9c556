"""What rehearsal steps ask of the released decoder: its masks, its IoU scale, free points."""

import pytest
import torch
from test_retention import FAST as SHORT  # a short run: tiny steps, no calibration

from napari_sam.training.config import PromptSettings, RetentionSettings, TrainingConfig
from napari_sam.training.loop import train
from napari_sam.training.retention import trained_snapshot


def _moved_student(trainable, labelled_images):
    """(sam, prepared image, batch, embedding, teacher): the decoder moved off the teacher."""
    import numpy as np

    from napari_sam.training.embeddings import EmbeddingStore
    from napari_sam.training.network import inference_model
    from napari_sam.training.optimization import parameter_groups
    from napari_sam.training.retention import released_decoder
    from napari_sam.training.sampling import prepare_image, sample_objects

    sam = trainable.module
    prepared = prepare_image(labelled_images[0], sam.input_size, np.random.default_rng(0))
    batch = sample_objects(prepared, 3, np.random.default_rng(0))
    embedding = EmbeddingStore().features(inference_model(trainable), labelled_images[0])
    parameter_groups(sam, "decoder", 2, 0.8, 0.0)
    released = trained_snapshot(sam)
    teacher = released_decoder(sam, released)
    with torch.no_grad():  # the student has moved away from the released weights
        for parameter in sam.mask_decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    # the teacher holds the released weights, whatever the student became
    for name, value in teacher.mask_decoder.state_dict().items():
        assert torch.equal(value, released[f"mask_decoder.{name}"]), name
    return sam, prepared, batch, embedding, teacher


def _step(sam, prepared, embedding, batch, teacher, teacher_masks=True):
    """A one-iteration box step measured without updating; returns (StepResult, prompts)."""
    import numpy as np

    from napari_sam.training.prompting import first_prompts
    from napari_sam.training.steps import run_prompting

    settings = PromptSettings(iterations=1, quiet_iterations=0)
    result = run_prompting(
        sam,
        embedding,
        batch,
        settings,
        np.random.default_rng(5),
        prepared.input_size,
        use_box=True,
        backward=False,
        teacher=teacher,
        teacher_masks=teacher_masks,
    )
    prompts = first_prompts(
        batch.targets,
        batch.boxes,
        True,
        np.random.default_rng(5),
        settings.box_noise,
        settings.max_box_noise,
        prepared.input_size,
    )
    return result, prompts


def test_distilled_rehearsal_asks_for_the_released_outputs(trainable, labelled_images):
    import dataclasses

    from napari_sam.training.losses import distillation_loss
    from napari_sam.training.steps import _decode

    sam, prepared, batch, embedding, teacher = _moved_student(trainable, labelled_images)
    moved = trained_snapshot(sam)

    def loss(batch, teacher):
        return _step(sam, prepared, embedding, batch, teacher)[0].loss

    with torch.no_grad():
        blank = dataclasses.replace(batch, targets=torch.zeros_like(batch.targets))
        distilled = loss(batch, teacher)
        # the labels do not enter a distilled step's loss; they do enter a plain one
        assert loss(blank, teacher) == pytest.approx(distilled, rel=1e-6)
        assert loss(blank, None) != pytest.approx(loss(batch, None), rel=1e-3)
        # ... which is the distillation loss of the student's against the teacher's outputs
        pe = sam.prompt_encoder.dense_positional_encoding()
        prompts = _step(sam, prepared, embedding, batch, teacher)[1]
        student = _decode(sam, embedding, pe, prompts)
        kept = _decode(teacher, embedding, pe, prompts)
        expected = distillation_loss(*student, *kept).total
        assert distilled == pytest.approx(float(expected), rel=1e-5)
        # and the released decoder against itself scores only the focal/dice floor
        assert float(distillation_loss(*kept, *kept).total) < float(expected)
    assert all(torch.equal(moved[k], v) for k, v in trained_snapshot(sam).items())


def test_keeping_the_iou_head_takes_only_its_targets_from_the_teacher(trainable, labelled_images):
    from napari_sam.training.losses import prompt_loss
    from napari_sam.training.steps import _decode

    sam, prepared, batch, embedding, teacher = _moved_student(trainable, labelled_images)
    with torch.no_grad():
        kept, prompts = _step(sam, prepared, embedding, batch, teacher, teacher_masks=False)
        plain = _step(sam, prepared, embedding, batch, None)[0]
        pe = sam.prompt_encoder.dense_positional_encoding()
        logits, predicted = _decode(sam, embedding, pe, prompts)
        released_iou = _decode(teacher, embedding, pe, prompts)[1]
        expected = prompt_loss(logits, predicted, batch.targets, iou_targets=released_iou)
    # the masks still follow the labels ...
    assert kept.mask_loss == pytest.approx(plain.mask_loss, rel=1e-6)
    assert kept.mask_loss == pytest.approx(expected.mask, rel=1e-5)
    # ... while the IoU head is asked for the released head's predictions
    assert kept.iou_loss == pytest.approx(expected.iou, rel=1e-5)
    assert kept.iou_loss != pytest.approx(plain.iou_loss, rel=1e-2)
    assert kept.loss == pytest.approx(float(expected.total), rel=1e-5)


def test_free_points_ask_for_the_released_outputs_anywhere(trainable, labelled_images):
    import numpy as np

    from napari_sam.training.losses import distillation_loss
    from napari_sam.training.steps import _decode, distil_free_points

    sam, prepared, _, embedding, teacher = _moved_student(trainable, labelled_images)
    sam.zero_grad(set_to_none=True)
    loss = distil_free_points(
        sam, embedding, teacher, 5, np.random.default_rng(3), prepared.input_size
    )
    # the same five points, drawn anywhere in the image, decoded by both
    xy = np.random.default_rng(3).uniform((0, 0), prepared.input_size[::-1], size=(5, 2))
    from napari_sam.training.prompting import PromptState

    points = torch.from_numpy(xy).float()[:, None, :]
    state = PromptState(points, torch.ones((5, 1), dtype=torch.int64), None, None)
    pe = sam.prompt_encoder.dense_positional_encoding()
    with torch.no_grad():
        student, kept = _decode(sam, embedding, pe, state), _decode(teacher, embedding, pe, state)
        assert student[0].shape[:2] == (5, 3)  # a lone point: all three candidates
        assert loss == pytest.approx(float(distillation_loss(*student, *kept).total), rel=1e-5)
        assert float(distillation_loss(*kept, *kept).total) < loss
    # its gradient reaches the decoder, never the teacher
    assert sam.mask_decoder.iou_prediction_head.layers[-1].bias.grad is not None
    assert all(p.grad is None for p in teacher.mask_decoder.parameters())


def test_rehearsal_steps_distil_free_points(trainable, labelled_images, tmp_path):
    config = TrainingConfig(
        steps=6,
        validate_every=3,
        **SHORT,
        retention=RetentionSettings(rehearsal=0.5, free_points=4, adaptive=False, mix=False),
    )
    result = train(
        trainable,
        labelled_images[:1],
        labelled_images[1:2],
        tmp_path,
        config,
        rehearsal_images=labelled_images[2:3],
    )
    steps = [h for h in result.history if "image" in h]
    assert any(h["rehearsal"] for h in steps) and not all(h["rehearsal"] for h in steps)
    for record in steps:  # only rehearsal steps ask for the released outputs at free points
        assert ("free_points_loss" in record) == record["rehearsal"]
        if record["rehearsal"]:
            assert record["free_points_loss"] > 0


def test_the_saved_weights_keep_the_asked_share_of_the_iou_heads_change(
    trainable, labelled_images, tmp_path
):
    from napari_sam.engine.model.weights import read_state_dict
    from napari_sam.training.retention import IOU_HEAD_PREFIXES, mix_iou_head

    sam = trainable.module
    released = {k: v.clone() for k, v in sam.state_dict().items()}
    config = TrainingConfig(
        steps=3,
        **SHORT,
        retention=RetentionSettings(rehearsal=0.0, mix=False, iou_head_mix=0.0),
    )
    result = train(trainable, labelled_images[:1], labelled_images[1:2], tmp_path, config)
    saved = read_state_dict(result.weights)
    head = [k for k in saved if k.startswith(IOU_HEAD_PREFIXES)]
    masks = [k for k in saved if k.startswith("mask_decoder.output_hypernetworks_mlps.")]
    assert head and masks
    # alpha 0: the released IoU head, exactly, beside a trained mask decoder
    assert all(torch.equal(saved[k], released[k]) for k in head)
    assert any(not torch.equal(saved[k], released[k]) for k in masks)
    # alpha 0.5 halves the change of the IoU head tensors and of nothing else
    moved = {k: v + 1.0 for k, v in released.items() if k.startswith(IOU_HEAD_PREFIXES)}
    sam.load_state_dict({**released, **moved})
    mix_iou_head(sam, {k: released[k] for k in head}, 0.5)
    now = sam.state_dict()
    assert all(torch.allclose(now[k], released[k] + 0.5) for k in head)
    assert all(torch.equal(now[k], released[k]) for k in masks)
    mix_iou_head(sam, {}, 0.5)  # a frozen head: nothing to mix
    assert all(torch.allclose(sam.state_dict()[k], released[k] + 0.5) for k in head)
