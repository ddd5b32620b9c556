"""The JSON model card written beside trained weights: data, settings, results.

A card says what the weights are (architecture, base weights, checksum), how they were
trained (every setting, steps, why training stopped) and on what (image names and
object counts per split), and collects evaluation results as they are measured
(:func:`add_metrics`), so a shared checkpoint carries its own evidence.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from napari_sam import __version__
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.errors import InvalidInputError
from napari_sam.training.network import write_model_card

CARD_FORMAT = "napari-sam model card 1"
IOU_HEAD_NOTES = {  # keyed by TrainingConfig.freeze_iou_head
    True: "released (frozen while training): predicted IoUs keep the base model's scale, "
    "segment-everything's default pred_iou_thresh applies",
    False: "trained: it ranks a click's three masks for the training labels; with the logit "
    "calibration on, its predictions are shifted so that as many masks pass "
    "segment-everything's pred_iou_thresh as with the base model "
    "(training.logit_calibration.iou_shift); the saved head keeps "
    "training.settings.retention.iou_head_mix of its change, shift included, the rest "
    "goes back to the released head",
}


def write_training_card(
    path: Path,
    weights: Path,
    trainable,
    config,
    state,
    stopped: str,
    best_step: int,
    train_images,
    validation_images,
    calibration=None,
    mix=None,
    everything=None,
) -> Path:
    """Write the card of a finished training run (see the module docstring)."""
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "weights": weights.name,
        "sha256": file_sha256(weights),
        "architecture": trainable.architecture_name,
        "base_model": trainable.base_id,
        "trainable": config.trainable,
        "iou_head": IOU_HEAD_NOTES[config.freeze_iou_head],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "napari_sam_version": __version__,
        "load_with": f"napari_sam.engine.model.loading.load_model({weights.name!r}) "
        f"or any SAM code that loads the official {trainable.architecture_name} checkpoint",
        "training": {
            "steps_done": state.step,
            "best_step": best_step,
            "stopped": stopped,
            "best_validation_mean_iou": state.best_score,
            # False: every validated step lost more than the tolerance on the domains to keep
            "best_step_keeps_reference": state.best_within,
            "settings": config.to_dict(),
            "loss_first_last": _ends(state.history),
            "wall_seconds": round(sum(h.get("seconds", 0.0) for h in state.history), 1),
            "cpu_seconds": round(sum(h.get("cpu_seconds", 0.0) for h in state.history), 1),
            "logit_calibration": None if calibration is None else calibration.to_dict(),
            "released_validation": state.base_scores,
            "mix_with_released": None if mix is None else mix.to_dict(),
            # segment-everything AP@0.5 on the reference validation images (retention)
            "everything_guard": None if everything is None else everything.to_dict(),
        },
        "data": {"train": _describe(train_images), "validation": _describe(validation_images)},
        "metrics": {},
        "notes": "MAE pre-training of the image encoder is not provided; from-scratch runs "
        "start from random weights.",
    }
    return write_model_card(path, card)


def add_metrics(card_path: str | Path, section: str, metrics: dict[str, Any]) -> Path:
    """Add (or replace) one named block of evaluation results in a card.

    Raises
    ------
    InvalidInputError
        The file is not a napari-sam model card.
    """
    path = Path(card_path)
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"Cannot read model card {path}: {error}.") from error
    if card.get("format") != CARD_FORMAT:
        raise InvalidInputError(f"{path} is not a napari-sam model card ({CARD_FORMAT}).")
    card.setdefault("metrics", {})[section] = metrics
    return write_model_card(path, card)


def _describe(images) -> dict[str, Any]:
    return {
        "images": [image.name for image in images],
        "objects": int(sum(len(image.object_ids()) for image in images)),
    }


def _ends(history: list[dict]) -> list[float] | None:
    if not history:
        return None
    return [round(history[0]["loss"], 4), round(history[-1]["loss"], 4)]
