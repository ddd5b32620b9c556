"""Build a SAM from the registry and load its weights with strict key matching.

:func:`load_model` is the one builder every entry point uses (predictor, CLI, napari
widgets, training). The returned :class:`SamModel` knows which weights it carries, so
caches and results can record it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from napari_sam.engine.model import DEFAULT_MODEL
from napari_sam.engine.model.downloads import Progress, file_sha256
from napari_sam.engine.model.registry import ModelSpec, get_model_spec
from napari_sam.engine.model.runtime import resolve_device, tune_allocator
from napari_sam.engine.model.weights import fetch_weights, read_state_dict
from napari_sam.errors import CheckpointError

if TYPE_CHECKING:
    from napari_sam.engine.network.sam import Sam


@dataclass(frozen=True)
class SamModel:
    """A loaded SAM ready for inference, with the identity of its weights."""

    module: Sam  # the network, in eval mode, batch norm folded
    spec: ModelSpec  # registry entry (or the user's file)
    model_id: str  # name@sha256-prefix: changes whenever the weights change
    device: str  # torch device it lives on

    @property
    def input_size(self) -> int:
        """Side of the square encoder input, in pixels."""
        return self.module.input_size


def build_sam(spec: ModelSpec, state_dict: dict | None = None) -> Sam:
    """Build the network of ``spec``, random weights unless ``state_dict`` is given.

    Raises
    ------
    CheckpointError
        ``state_dict`` does not fit the architecture; the message lists missing,
        unexpected and wrongly shaped keys.
    """
    from napari_sam.engine.network.sam import Sam

    model = Sam(spec.architecture)
    if state_dict is not None:
        _check_keys(model.state_dict(), state_dict, spec)
        model.load_state_dict(state_dict, strict=True)
    return model


def load_model(
    model: str | Path = DEFAULT_MODEL,
    device: str | None = None,
    architecture: str | None = None,
    progress: Progress | None = None,
) -> SamModel:
    """Fetch (if needed), build and load a SAM for inference.

    Parameters
    ----------
    model : str or pathlib.Path
        A registry name (``"vit_t"``, ``"vit_b"``, ...) or a checkpoint file.
    device : str, optional
        Torch device; ``None`` is the CPU unless an accelerator type is verified, ``"auto"``
        picks cuda, then mps, then cpu (:func:`~napari_sam.engine.model.runtime.resolve_device`).
    architecture : str, optional
        Registry name of a checkpoint file's architecture, if its name does not say.
    progress : callable, optional
        ``progress(bytes_done, bytes_total)`` while downloading.

    Returns
    -------
    SamModel

    Raises
    ------
    CheckpointError
        The file is unreadable, fails its checksum, does not fit the architecture, or
        (a checkpoint file) holds NaN weights.
    """
    from napari_sam.engine.network.fusion import channels_last_weights, fold_batchnorm

    spec = get_model_spec(model, architecture)
    path = fetch_weights(spec, progress)
    state = read_state_dict(path, spec.sha256)
    if not spec.sha256:  # a registry file matched its checksum: known to be finite
        _check_no_nan(state, path)
    module = build_sam(spec, state).eval()
    fold_batchnorm(module)
    resolved = resolve_device(device)
    if resolved == "cpu":
        tune_allocator()
        channels_last_weights(module)
    module = module.to(resolved)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    model_id = spec.model_id if spec.sha256 else f"{spec.name}@{file_sha256(path)[:12]}"
    return SamModel(module=module, spec=spec, model_id=model_id, device=resolved)


def _check_keys(expected: dict, given: dict, spec: ModelSpec) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{key}: file {tuple(given[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(given)
        if hasattr(given[key], "shape") and given[key].shape != expected[key].shape
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            parts.append(f"{len(keys)} {title}: {shown}")
    raise CheckpointError(
        f"The checkpoint does not fit the architecture of {spec.name!r} ({spec.description}) "
        f"({'; '.join(parts)}). Pick the matching model name or pass architecture=."
    )


def _check_no_nan(state: dict, path: Path) -> None:
    """Refuse a checkpoint with NaN weights (a diverged training run, a damaged file)."""
    import torch

    bad = sorted(
        key
        for key, value in state.items()
        if torch.is_tensor(value) and value.is_floating_point() and bool(value.isnan().any())
    )
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{path} holds NaN weights in {len(bad)} tensor(s) ({shown}): the model would "
            "return NaN for every image. The file is damaged or comes from a training run "
            "that diverged; use an earlier checkpoint or train again."
        )
