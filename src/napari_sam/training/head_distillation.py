"""Teach an instance head a stack without labels: distil every-point segment-everything.

Decoding every grid point is the slow but trustworthy segment-everything (no skip rule
that could fail on unfamiliar images). Run on K planes spread through the stack, its
labels become the head's training data; the head then segments every plane for the price
of the encoder plus about a tenth of the decoder calls (``"apg"``) or none (``"ais"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.instances.head import TrainedHead
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.errors import InvalidInputError
from napari_sam.training.datasets import LabelledImage
from napari_sam.training.head_training import HeadTrainingSettings, train_head

Progress = Callable[[str, int, int], None]


def spread_planes(count: int, planes: int) -> list[int]:
    """``planes`` indices spread evenly through ``count``, away from both ends.

    The ends of a z-stack are often out of focus; the k-th of K planes sits at
    (k + 1/2) / K of the stack.

    >>> spread_planes(60, 5)
    [6, 18, 30, 42, 54]
    """
    if count < 1 or planes < 1:
        raise InvalidInputError(f"Cannot pick {planes} planes from a stack of {count}.")
    planes = min(planes, count)
    return sorted({int((k + 0.5) * count / planes) for k in range(planes)})


def drop_containers(labels: np.ndarray, *, holds: int = 2) -> np.ndarray:
    """The teacher's labels without the objects that hold other objects.

    Segment-everything keeps nested masks: a nucleus, and the mask of the cell sheet or of
    a clump around it. Painted largest first, the container survives as the space between
    its members. Learnt as one object, it teaches the head that the space between nuclei is
    foreground, and the watershed of the AIS mode floods it. An object holds another when
    at least half of the other's pixels lie within its own extent (its holes filled); an
    object holding ``holds`` or more becomes background.

    >>> labels = np.zeros((9, 9), int)
    >>> labels[1:8, 1:8] = 1
    >>> labels[2:4, 2:4], labels[5:7, 5:7] = 2, 3
    >>> np.unique(drop_containers(labels)).tolist()
    [0, 2, 3]
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    out = labels.copy()
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        window = labels[found]
        extent = ndimage.binary_fill_holes(window == index)
        inside = window[extent & (window != index) & (window > 0)]
        if inside.size == 0:
            continue
        members, pixels = np.unique(inside, return_counts=True)
        if np.count_nonzero(2 * pixels >= sizes[members]) >= holds:
            out[found][window == index] = 0
    return out


def distil_head(
    predictor: Predictor,
    planes: Sequence[tuple[str, np.ndarray]],
    normalization: Normalization,
    *,
    settings: EverythingSettings | None = None,
    training: HeadTrainingSettings | None = None,
    trained_on: str = "",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[TrainedHead, list[np.ndarray]]:
    """Segment the planes with every grid point decoded, then train a head on the result.

    Parameters
    ----------
    predictor : Predictor
    planes : sequence of (name, plane)
        Each plane (rows, cols) or (rows, cols, channels), read whole.
    normalization : Normalization
        The stack's intensity mapping (the same the head will see later).
    settings : EverythingSettings, optional
        Thresholds of segment-everything; every grid point is decoded whatever its skip
        rules say.
    training : HeadTrainingSettings, optional
    progress : callable, optional
        ``progress(stage, done, total)``, stage "teacher" (planes segmented), then the
        stages of :func:`~napari_sam.training.head_training.train_head`.

    Returns
    -------
    head : TrainedHead
        Card mode "distilled".
    labels : list of numpy.ndarray
        The teacher's (rows, cols) int32 labels of each plane, containers dropped
        (:func:`drop_containers`): what the head learnt from.
    """
    teacher = AutomaticSegmenter(predictor, (settings or EverythingSettings()).every_point())
    images, labels = [], []
    for done, (name, plane) in enumerate(planes, 1):
        plane = np.asarray(plane)
        candidates = teacher.initialise(plane, normalization, should_stop=should_stop)
        result = drop_containers(teacher.generate(candidates).labels)
        labels.append(result)
        if result.any():
            images.append(LabelledImage(plane, result.astype(np.int64), name, normalization, name))
        if progress is not None:
            progress("teacher", done, len(planes))
    if not images:
        raise InvalidInputError(
            "Segment-everything found no object on the planes chosen for learning "
            f"({', '.join(name for name, _ in planes)}); a head cannot learn from them. "
            "Choose other planes, or check the channel and contrast."
        )
    head = train_head(
        predictor.model,
        images,
        training,
        trained_on=trained_on,
        mode="distilled",
        progress=progress,
        should_stop=should_stop,
    )
    return head, labels
