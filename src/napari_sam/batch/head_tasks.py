"""Batch segment-everything with an instance head: a given one, or one learnt on the stack.

``--head FILE`` segments every slice with a trained head; ``--learn K`` first distils one
(every-point segment-everything on K planes spread through the z-range, then training,
:mod:`napari_sam.training.head_distillation`) and saves it beside the labels, as
``NAME.head.pt`` and ``NAME.head.json`` for ``NAME.zarr``. A rerun finds that head (same
data, planes and model) and reuses it, so an interrupted run resumes without learning
again; the head's sha256 is part of the store's signature, so slices segmented by another
head are never mixed with this one's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.instances.head import TrainedHead, head_paths, load_head
from napari_sam.engine.instances.seeds import SeedSettings
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class HeadPlan:
    """The per-slice settings of a head run (picklable; recorded in the store)."""

    head: str  # the head's .pt file (readable by every worker)
    sha256: str  # of that file: another head makes another run
    mode: str = "apg"  # "apg" (SAM decodes one prompt per seed) or "ais" (the head alone)
    settings: EverythingSettings = field(default_factory=EverythingSettings)  # APG filters
    seeds: SeedSettings = field(default_factory=SeedSettings)

    def to_dict(self) -> dict:
        """Plain values for the store's signature."""
        return {
            "method": f"head-{self.mode}",
            "head_sha256": self.sha256,
            "seeds": asdict(self.seeds),
            **self.settings.to_dict(),
        }


def head_plan(
    path: str | Path, mode: str, settings: EverythingSettings | None, model_id: str
) -> HeadPlan:
    """A plan for an existing head file (checked now, before any slice runs).

    Raises
    ------
    InvalidInputError, CheckpointError
        No head there, not a readable one, or one trained for another model than
        ``model_id``.
    """
    load_head(path).check_encoder(model_id)  # fail early, with the loader's message
    weights = head_paths(path)[0].resolve()
    return HeadPlan(str(weights), file_sha256(weights), mode, settings or EverythingSettings())


def segment_with_head(predictor, plane, normalization, plan: HeadPlan, *, tile=None, halo=0):
    """One plane segmented with the plan's head (a batch ``Segmenter``)."""
    from napari_sam.engine.instances.segmenter import HeadSegmenter

    head = _cached_head(plan.head, plan.sha256)
    segmenter = HeadSegmenter(predictor, head, plan.mode, plan.settings, plan.seeds)
    return segmenter.segment(plane, normalization, tile=tile, halo=halo)


@lru_cache(maxsize=4)
def _cached_head(path: str, sha256: str) -> TrainedHead:
    """Each process loads a head once (the sha256 is only part of the cache key)."""
    return load_head(path)


def learnt_head_path(out: str | Path) -> Path:
    """``labels.zarr`` -> ``labels.head.pt`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.head.pt")


def learn_head(
    stack,
    out: str | Path,
    planes: list[int],
    predictor_factory: Callable[[], Predictor],
    normalization,
    settings: EverythingSettings | None,
    provenance: str,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """The head of ``--learn``: reused from beside ``out`` if it was learnt on the same
    data, planes and model, else distilled now (in this process) and saved there.

    Parameters
    ----------
    stack : OpenStack
    out : path of the labels store
    planes : stack indices to learn from
    predictor_factory : callable
        Loads the predictor (only called when a head must be learnt).
    normalization : Normalization
        The stack's.
    settings : EverythingSettings, optional
        The teacher's thresholds.
    provenance : str
        Names the data (path and fingerprint); a head with other provenance is relearnt.
    progress : callable, optional
        ``progress(stage, done, total)``: "teacher", "encoding", "training".
    overwrite : bool
        Replace a head learnt beside ``out`` for other data or planes (else refused).

    Raises
    ------
    InvalidInputError
        A head for other data or planes is beside ``out`` and ``overwrite`` is False.
    """
    import hashlib
    import json

    from napari_sam.engine.prediction.planes import read_plane
    from napari_sam.training.head_distillation import distil_head

    path = learnt_head_path(out)
    teacher = (settings or EverythingSettings()).every_point().to_dict()
    digest = hashlib.sha256(json.dumps(teacher, sort_keys=True).encode()).hexdigest()[:8]
    planes_text = ",".join(str(z) for z in planes)
    trained_on = f"{provenance}, planes {planes_text}, teacher settings {digest}"
    reused = _reusable(path, trained_on)
    if reused is not None:
        log.info("reusing the head learnt before: %s", path)
        return path
    if path.exists() and not overwrite:
        raise InvalidInputError(
            f"{path} holds a head learnt for other data or planes. Pass --overwrite to "
            "learn a new one in its place, or choose another --out."
        )
    predictor = predictor_factory()
    head, _ = distil_head(
        predictor,
        [(f"z={z}", read_plane(stack.planes, stack.layout, (z,))) for z in planes],
        normalization,
        settings=settings,
        trained_on=trained_on,
        progress=progress,
    )
    return head.save(path)


def _reusable(path: Path, trained_on: str) -> TrainedHead | None:
    weights, card = head_paths(path)
    if not (weights.is_file() and card.is_file()):
        return None
    try:
        head = load_head(path)
    except (InvalidInputError, OSError, RuntimeError):  # damaged: learn again
        return None
    return head if head.card.trained_on == trained_on else None
