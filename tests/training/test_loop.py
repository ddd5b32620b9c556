import json

import numpy as np
import pytest
import torch

from napari_sam.engine.model.weights import read_state_dict
from napari_sam.errors import CheckpointError, InvalidInputError, OperationCancelled
from napari_sam.training.checkpoints import CHECKPOINT_NAME
from napari_sam.training.config import PromptSettings, TrainingConfig
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.loop import train
from napari_sam.training.network import inference_model
from napari_sam.training.optimization import iou_head_parameters, make_optimizer, parameter_groups
from napari_sam.training.sampling import prepare_image, sample_objects
from napari_sam.training.steps import run_prompting

# Small on purpose: the decoder is full size even in the tiny SAM (seconds per pass on 2 cores).
FAST = {
    "steps": 2,
    "objects_per_step": 2,
    "prompts": PromptSettings(iterations=1, quiet_iterations=0),
    "validate_every": 2,
    "validation_objects": 1,
    "checkpoint_every": 1,
    "warmup_steps": 1,
}


def test_a_few_steps_lower_the_loss(trainable, labelled_images):
    torch.manual_seed(0)
    sam = trainable.module
    image = labelled_images[0]
    prepared = prepare_image(image, sam.input_size, np.random.default_rng(0))
    batch = sample_objects(prepared, 2, np.random.default_rng(0))
    embedding = EmbeddingStore().features(inference_model(trainable), image)
    optimizer = make_optimizer(parameter_groups(sam, "decoder", 2, 0.8, 0.0), 1e-3)
    settings = PromptSettings(iterations=1, quiet_iterations=0)

    def loss(backward):
        rng = np.random.default_rng(5)  # the same prompts every time
        return run_prompting(
            sam,
            embedding,
            batch,
            settings,
            rng,
            prepared.input_size,
            use_box=True,
            backward=backward,
        ).loss

    with torch.no_grad():
        before = loss(False)
    for _ in range(4):
        loss(True)
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        after = loss(False)
    assert after < 0.7 * before, (before, after)


def test_only_the_chosen_parts_train(trainable):
    sam = trainable.module
    parameter_groups(sam, "decoder", 2, 0.8, 0.1)
    assert all(p.requires_grad for p in sam.mask_decoder.parameters())
    assert not any(p.requires_grad for p in sam.prompt_encoder.parameters())
    assert not any(p.requires_grad for p in sam.image_encoder.parameters())
    groups = parameter_groups(sam, "encoder-last", 1, 0.5, 0.1)
    blocks = sam.image_encoder.blocks
    assert all(p.requires_grad for p in blocks[1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert sorted({g["lr_scale"] for g in groups}) == [
        0.5,
        1.0,
    ]  # last block one step below the neck
    with pytest.raises(InvalidInputError, match=r"encoder_blocks must be 1..2"):
        parameter_groups(sam, "encoder-last", 5, 0.5, 0.1)
    with pytest.raises(InvalidInputError, match="Unknown trainable parts"):
        parameter_groups(sam, "everything", 1, 0.5, 0.1)


def test_saved_weights_reload_bit_identical(trainable, labelled_images, tmp_path):
    result = train(
        trainable, labelled_images[:2], labelled_images[2:], tmp_path, TrainingConfig(**FAST)
    )
    assert result.weights.name == "finetuned_random.pt" and result.card.is_file()
    saved = read_state_dict(result.weights)
    live = trainable.module.state_dict()
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k], live[k]) for k in live)
    assert result.steps == 2 and len(result.history) == 2
    assert result.best_validation is not None and 0.0 <= result.best_validation <= 1.0


def test_resume_continues_the_step_count(trainable, labelled_images, tmp_path):
    config = TrainingConfig(**FAST)
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(OperationCancelled, match="stopped at step 1"):
        train(trainable, labelled_images[:2], [], tmp_path, config, should_stop=stop_after_two)
    with pytest.raises(InvalidInputError, match="already holds a training checkpoint"):
        train(trainable, labelled_images[:2], [], tmp_path, config)
    steps = []
    result = train(
        trainable,
        labelled_images[:2],
        [],
        tmp_path,
        config,
        resume=True,
        progress=lambda update: steps.append(update.step),
    )
    assert steps == [2] and result.steps == 2
    assert [h["step"] for h in result.history] == [1, 2]
    with pytest.raises(CheckpointError, match="other parts of the model"):
        train(
            trainable,
            labelled_images[:2],
            [],
            tmp_path,
            TrainingConfig(**{**FAST, "trainable": "decoder+prompt", "steps": 3}),
            resume=True,
        )


def test_config_rejects_bad_settings():
    with pytest.raises(InvalidInputError, match="trainable must be one of"):
        TrainingConfig(trainable="encoder")
    with pytest.raises(InvalidInputError, match="steps must be at least 1"):
        TrainingConfig(steps=0)
    with pytest.raises(InvalidInputError, match=r"drop_path must be in \[0, 1\)"):
        TrainingConfig(drop_path=1.5)
    with pytest.raises(InvalidInputError, match="No training image"):
        train(None, [], [], "unused")


def test_objects_below_min_area_are_an_error(trainable, labelled_images, tmp_path):
    config = TrainingConfig(**{**FAST, "min_area": 10_000})
    with pytest.raises(InvalidInputError, match="No usable object in 100 draws"):
        train(trainable, labelled_images[:1], [], tmp_path, config)


def _iou_head(sam):
    return [p.detach().clone() for p in iou_head_parameters(sam)]


def _changed(before, after):
    return sum(not torch.equal(a, b) for a, b in zip(before, after))


def test_a_frozen_iou_head_stays_bit_identical(trainable, labelled_images, tmp_path):
    sam = trainable.module
    head = _iou_head(sam)
    decoder = {name: p.detach().clone() for name, p in sam.mask_decoder.named_parameters()}
    config = TrainingConfig(**{**FAST, "steps": 3, "freeze_iou_head": True})
    result = train(trainable, labelled_images[:2], [], tmp_path, config)
    assert _changed(head, _iou_head(sam)) == 0
    moved = {
        name for name, p in sam.mask_decoder.named_parameters() if not torch.equal(p, decoder[name])
    }
    shared = [name for name in decoder if name.startswith(("transformer.", "output_upscaling."))]
    assert (
        set(shared) <= moved and len(shared) == 88
    )  # the transformer (masks and IoUs share it), upscaling
    assert not {name for name in moved if name.startswith(("iou_token", "iou_prediction_head"))}
    assert all(h["loss"] > 0 for h in result.history)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert TrainingConfig.from_dict(saved["config"]) == config  # the setting round-trips
    card = json.loads(result.card.read_text())
    assert card["training"]["settings"]["freeze_iou_head"] is True and card["iou_head"].startswith(
        "released"
    )


def test_a_trained_iou_head_moves(trainable, labelled_images, tmp_path):
    head = _iou_head(trainable.module)
    train(
        trainable,
        labelled_images[:2],
        [],
        tmp_path,
        TrainingConfig(**{**FAST, "freeze_iou_head": False}),
    )
    assert _changed(head, _iou_head(trainable.module)) == len(head)  # token and all head layers
    assert (
        TrainingConfig.from_dict(
            {k: v for k, v in TrainingConfig().to_dict().items() if k != "freeze_iou_head"}
        ).freeze_iou_head
        is False
    )  # older cards


def test_rehearsal_needs_the_released_decoder_only_to_keep_something():
    from napari_sam.training.config import RetentionSettings
    from napari_sam.training.retention import needs_released_decoder

    def needs(rehearsal=(1,), freeze=False, **retention):
        config = TrainingConfig(freeze_iou_head=freeze, retention=RetentionSettings(**retention))
        return needs_released_decoder(list(rehearsal), config)

    assert not needs()  # labels: no teacher
    assert needs(rehearsal_targets="released") and needs(keep_iou_head=True)
    assert not needs(keep_iou_head=True, freeze=True)  # a frozen head keeps its scale
    assert needs(free_points=8, freeze=True)
    assert not needs(rehearsal=(), rehearsal_targets="released")


def test_resume_keeps_the_iou_head_setting(trainable, labelled_images, tmp_path):
    head = _iou_head(trainable.module)
    config = TrainingConfig(**{**FAST, "steps": 3, "freeze_iou_head": True})
    with pytest.raises(OperationCancelled, match="stopped at step 1"):
        train(
            trainable,
            labelled_images[:2],
            [],
            tmp_path,
            config,
            should_stop=iter([False, True]).__next__,
        )
    with pytest.raises(CheckpointError, match=r"freeze_iou_head=True \(now False\)"):
        train(
            trainable,
            labelled_images[:2],
            [],
            tmp_path,
            TrainingConfig(**{**FAST, "steps": 3, "freeze_iou_head": False}),
            resume=True,
        )
    result = train(trainable, labelled_images[:2], [], tmp_path, config, resume=True)
    assert result.steps == 3 and _changed(head, _iou_head(trainable.module)) == 0


def test_a_time_limit_stops_and_keeps_the_best_weights(trainable, labelled_images, tmp_path):
    config = TrainingConfig(**{**FAST, "steps": 50, "validate_every": 3, "max_minutes": 1e-9})
    result = train(trainable, labelled_images[:2], labelled_images[2:], tmp_path, config)
    assert (
        result.stopped == "time limit" and result.steps == 1
    )  # over the limit after the first step
    assert (
        result.history[-1]["validation"] is not None
    )  # measured before stopping, though not a validation step
    assert result.best_step == 1 and result.best_validation == result.history[-1]["validation"]
    with pytest.raises(InvalidInputError, match="max_minutes must be positive"):
        TrainingConfig(max_minutes=0)


@pytest.mark.parametrize("use_box", [False, True])
def test_decoding_in_chunks_gives_the_whole_batch_gradient(trainable, labelled_images, use_box):
    sam = trainable.module
    image = labelled_images[0]
    prepared = prepare_image(image, sam.input_size, np.random.default_rng(0))
    batch = sample_objects(prepared, 3, np.random.default_rng(0))
    embedding = EmbeddingStore().features(inference_model(trainable), image)
    parameter_groups(sam, "decoder", 2, 0.8, 0.0)
    settings = PromptSettings(iterations=3, quiet_iterations=1)
    runs = []
    for chunk in (1, 2, 100):
        sam.zero_grad(set_to_none=True)
        result = run_prompting(
            sam,
            embedding,
            batch,
            settings,
            np.random.default_rng(3),
            prepared.input_size,
            use_box=use_box,
            chunk=chunk,
        )
        grads = {name: p.grad.clone() for name, p in sam.named_parameters() if p.grad is not None}
        runs.append((result, grads))
    (whole, whole_grads) = runs[-1]
    assert len(whole_grads) > 10
    for result, grads in runs[:-1]:
        assert result.loss == pytest.approx(whole.loss, rel=1e-5)
        assert result.last_iou == pytest.approx(whole.last_iou, abs=1e-6)
        assert grads.keys() == whole_grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, whole_grads[name], rtol=1e-4, atol=1e-7), name
