"""Trainable SAM networks: load, copy for inference, save in the official format.

Inference models (:func:`napari_sam.engine.model.loading.load_model`) have their batch norms
folded into convolutions and frozen parameters; training needs the unfolded network, so
:func:`load_trainable` builds it from the same registry and checkpoint. Final weights
are the network's plain ``state_dict()`` (keys ``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``, exactly those of Meta's and MobileSAM's released files), so our
registry, Meta's code and micro-sam load them; a JSON model card lies beside them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from napari_sam.engine.model.loading import SamModel, build_sam
from napari_sam.engine.model.registry import ModelSpec, get_model_spec
from napari_sam.errors import CheckpointError

if TYPE_CHECKING:
    from napari_sam.engine.network.sam import Sam


@dataclass(frozen=True, eq=False)
class TrainableSam:
    """An unfolded SAM being trained, with where it came from."""

    module: Sam  # batch norms unfolded, parameters trainable on request
    spec: ModelSpec  # the base model's registry entry (architecture, name)
    base_id: str  # model_id of the starting weights (or "random-seedN")
    architecture_name: str  # registry name of the architecture, e.g. "vit_t"
    initial_fingerprint: str  # state_fingerprint of the starting weights


def load_trainable(
    model: str | Path | SamModel = "vit_t",
    architecture: str | None = None,
    from_scratch: bool = False,
    seed: int = 0,
) -> TrainableSam:
    """Build a SAM for training from a released checkpoint, a file, or random weights.

    Parameters
    ----------
    model : str, pathlib.Path or SamModel
        Registry name, checkpoint file, or an unfolded SamModel (tests build tiny ones).
    architecture : str, optional
        Registry name of a checkpoint file's architecture if its name does not say.
    from_scratch : bool
        Random weights (seeded) instead of the checkpoint; MAE pre-training is not
        provided, so an encoder trained from scratch needs far more data and time.
    seed : int
        Seed of the random weights.

    Raises
    ------
    CheckpointError
        A SamModel whose batch norms were folded for inference (it cannot be saved in
        the official format): pass the model's name or file instead.
    """
    if isinstance(model, SamModel):
        if _is_folded(model.module):
            raise CheckpointError(
                f"{model.model_id} was loaded for inference (batch norm folded), so it cannot "
                "be trained or saved in the official format: pass its name or checkpoint file."
            )
        module = copy.deepcopy(model.module).cpu()
        return _trainable(module, model.spec, model.model_id, model.spec.name)
    from napari_sam.engine.model.weights import fetch_weights, read_state_dict

    spec = get_model_spec(model, architecture)
    arch = architecture or _architecture_name(spec)
    if from_scratch:
        torch.manual_seed(seed)
        return _trainable(build_sam(spec), spec, f"random-seed{seed}", arch)
    path = fetch_weights(spec)
    module = build_sam(spec, read_state_dict(path, spec.sha256))
    return _trainable(module, spec, spec.model_id if spec.sha256 else spec.name, arch)


def _trainable(module: Sam, spec: ModelSpec, base_id: str, arch: str) -> TrainableSam:
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    fingerprint = state_fingerprint(module.state_dict())
    return TrainableSam(module.train(), spec, base_id, arch, fingerprint)


def inference_model(trainable: TrainableSam, name: str | None = None) -> SamModel:
    """A frozen, batch-norm-folded copy on the CPU, for the Predictor and evaluation.

    The model_id is the base model's while the weights are unchanged, else
    ``NAME@HASH`` of the weights, so cached embeddings are never mixed up.
    """
    from napari_sam.engine.network.fusion import channels_last_weights, fold_batchnorm

    module = copy.deepcopy(trainable.module).cpu().eval()
    digest = state_fingerprint(module.state_dict())
    fold_batchnorm(module)
    channels_last_weights(module)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    unchanged = digest == trainable.initial_fingerprint
    model_id = trainable.base_id if unchanged else f"{name or trainable.spec.name}@{digest[:12]}"
    return SamModel(module=module, spec=trainable.spec, model_id=model_id, device="cpu")


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and bytes of a state dict's tensors, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(
            tensor.numpy().tobytes()
            if tensor.dtype != torch.bfloat16
            else tensor.float().numpy().tobytes()
        )
    return digest.hexdigest()


def encoder_fingerprint(model: SamModel) -> str:
    """Identity of a model's image encoder weights: equal encoders give equal embeddings."""
    cached = getattr(model.module, "_napari_sam_encoder_fingerprint", None)
    if cached is None:
        cached = state_fingerprint(model.module.image_encoder.state_dict())[:16]
        model.module._napari_sam_encoder_fingerprint = cached
    return cached


def save_weights(module: nn.Module, path: Path) -> Path:
    """Write ``module.state_dict()`` atomically, in the official checkpoint format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    state = {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


def write_model_card(path: Path, card: dict[str, Any]) -> Path:
    """Write the JSON model card (data, settings, metrics) beside the weights."""
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_text(json.dumps(card, indent=2, default=str) + "\n")
    os.replace(temporary, path)
    return path


def _is_folded(module: nn.Module) -> bool:
    from napari_sam.engine.network.tiny_vit import ConvBN

    return any(isinstance(m, ConvBN) and isinstance(m.bn, nn.Identity) for m in module.modules())


def _architecture_name(spec: ModelSpec) -> str:
    from napari_sam.engine.model.registry import MODELS

    for name, known in MODELS.items():
        if known.architecture == spec.architecture:
            return name
    return spec.name
