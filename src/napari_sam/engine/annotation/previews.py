"""What the annotator shows before a commit: SAM's candidates per object on one plane.

A :class:`Preview` holds the objects described by the prompts of one plane, each with
SAM's candidates (three for a lone click) and the one shown; it is what a commit writes
and what propagation carries through a stack. Made by
:meth:`~napari_sam.engine.annotation.session.AnnotationSession.preview`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from napari_sam.engine.annotation.objects import ObjectPrompt
from napari_sam.engine.prediction.planes import PlaneKey
from napari_sam.engine.prediction.results import Prediction


@dataclass(frozen=True, eq=False)
class ObjectPreview:
    """One previewed object: SAM's candidates and the one shown."""

    prompt: ObjectPrompt
    prediction: Prediction  # 3 candidates for an ambiguous prompt, else 1
    chosen: int  # index of the candidate shown and committed

    @property
    def mask(self) -> np.ndarray:
        """(rows, cols) bool, the chosen candidate."""
        return self.prediction.masks[self.chosen]

    @property
    def score(self) -> float:
        """SAM's predicted IoU of the chosen candidate."""
        return float(self.prediction.scores[self.chosen])


@dataclass(frozen=True, eq=False)
class Preview:
    """All objects previewed on one plane."""

    key: PlaneKey
    objects: tuple[ObjectPreview, ...]

    def masks(self) -> np.ndarray:
        """(N, rows, cols) bool, chosen candidates."""
        if not self.objects:
            return np.zeros((0, 0, 0), bool)
        return np.stack([o.mask for o in self.objects])

    def labels(self, shape: tuple[int, int]) -> np.ndarray:
        """(rows, cols) int32 with object i painted as i + 1 (earlier objects on top)."""
        out = np.zeros(shape, np.int32)
        for index in range(len(self.objects) - 1, -1, -1):
            out[self.objects[index].mask] = index + 1
        return out

    def cycle(self, index: int = 0) -> Preview:
        """Show the next candidate of object ``index`` (wraps around)."""
        if not self.objects:
            return self
        item = self.objects[index]
        count = len(item.prediction.scores)
        objects = list(self.objects)
        objects[index] = replace(item, chosen=(item.chosen + 1) % count)
        return replace(self, objects=tuple(objects))
