"""How good is a model on labelled images: mean IoU per prompt type and per click.

Prompts are deterministic, as in interactive-segmentation benchmarks (e.g. Sofiiuk et
al., "Reviving Iterative Training with Mask Guidance", 2021): a point is the object's
most interior pixel (the maximum of its distance transform); a box is its tight bounding
box; "point + negative" adds a negative point at the most interior pixel of the nearest
other object; iterative prompting starts from the point (or the box) and adds one click
per round at the most interior pixel of the largest error, positive on a miss and
negative on a false positive, feeding the previous logits back. Masks are those the
user would see (highest predicted IoU) at full resolution, scored against the labels
with :func:`~napari_sam.engine.metrics.mask_iou`. On request, the automatic mode
(:func:`napari_sam.engine.everything.segmenter.segment_plane`, default settings) is scored
by average precision at IoU 0.5, 0.55, ..., 0.95, averaged over images.
:func:`check_regression` compares two reports of the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_sam.engine.metrics import mask_iou
from napari_sam.engine.model.loading import SamModel
from napari_sam.errors import InvalidInputError
from napari_sam.training.config import REGRESSION_TOLERANCE, EvaluationSettings
from napari_sam.training.datasets import LabelledImage
from napari_sam.training.embeddings import EmbeddingStore

MEASURES = ("point", "box", "point_negative")


@dataclass(frozen=True)
class EvaluationReport:
    """Mean IoU over all evaluated objects (each object counts once)."""

    model_id: str  # the evaluated weights
    images: int  # images evaluated
    objects: int  # objects evaluated
    point: float  # one positive point at the object's centre
    box: float  # its tight box
    point_negative: float  # centre point + negative point on the nearest other object
    iterative_point: tuple[float, ...]  # after 1, 2, ... clicks, starting from the point
    iterative_box: tuple[float, ...]  # the box, then 1, 2, ... corrective clicks
    automatic_ap: dict[float, float] | None = None  # AP at IoU 0.5..0.95 (automatic mode)
    predicted_iou: float = float("nan")  # mean IoU the model predicts for its shown point masks

    def to_dict(self) -> dict:
        """Plain values for JSON (model cards) and tables."""
        return {
            "model_id": self.model_id,
            "images": self.images,
            "objects": self.objects,
            "point": self.point,
            "box": self.box,
            "point_negative": self.point_negative,
            "iterative_point": list(self.iterative_point),
            "iterative_box": list(self.iterative_box),
            "automatic_ap": self.automatic_ap,
            "predicted_iou": self.predicted_iou,
        }


@dataclass
class _Scores:
    """IoU lists per measure while evaluating."""

    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MEASURES})
    predicted: list[float] = field(default_factory=list)  # predicted IoU of each shown point mask
    point_clicks: list[list[float]] = field(default_factory=list)
    box_clicks: list[list[float]] = field(default_factory=list)


def evaluate(
    model: SamModel,
    images: list[LabelledImage],
    settings: EvaluationSettings = EvaluationSettings(),
    store: EmbeddingStore | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """Measure ``model`` on ``images`` with the deterministic prompts of this module.

    Parameters
    ----------
    model : SamModel
        An inference model (e.g. :func:`~napari_sam.engine.model.loading.load_model`).
    images : list of LabelledImage
    settings : EvaluationSettings
    store : EmbeddingStore, optional
        Reuses embeddings across models with the same encoder.
    progress : callable, optional
        ``progress(images_done, images_total)``.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    InvalidInputError
        No images, or ``clicks`` < 1.
    """
    from napari_sam.engine.prediction.predictor import Predictor

    if not images:
        raise InvalidInputError("No images to evaluate.")
    if settings.clicks < 1:
        raise InvalidInputError(f"clicks must be at least 1; got {settings.clicks}.")
    store = store or EmbeddingStore()
    predictor = Predictor(model)
    scores = _Scores()
    precisions = []
    for done, image in enumerate(images, 1):
        embedding = store.embedding(model, image)
        predictor.set_embedding(embedding)
        _evaluate_image(predictor, image, settings, scores)
        if settings.automatic:
            precisions.append(
                automatic_precisions(predictor, image, embedding, settings.automatic_iou_threshold)
            )
        if progress is not None:
            progress(done, len(images))
    if not scores.values["point"]:
        raise InvalidInputError(f"No object of at least {settings.min_area} pixels in the images.")
    return EvaluationReport(
        model_id=model.model_id,
        images=len(images),
        objects=len(scores.values["point"]),
        point=_mean(scores.values["point"]),
        box=_mean(scores.values["box"]),
        point_negative=_mean(scores.values["point_negative"]),
        iterative_point=tuple(float(v) for v in np.mean(scores.point_clicks, axis=0)),
        iterative_box=tuple(float(v) for v in np.mean(scores.box_clicks, axis=0)),
        automatic_ap={t: float(np.mean([p[t] for p in precisions])) for t in AP_THRESHOLDS}
        if precisions
        else None,
        predicted_iou=_mean(scores.predicted),
    )


AP_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def automatic_precisions(
    predictor, image: LabelledImage, embedding, iou_threshold: float | None = None
) -> dict[float, float]:
    """AP of segment-everything on one image at :data:`AP_THRESHOLDS`.

    Default settings, except ``pred_iou_thresh`` when ``iou_threshold`` is given (weights
    fine-tuned on other labels predict lower IoUs than the released ones).
    """
    from napari_sam.engine.everything.segmenter import segment_plane
    from napari_sam.engine.everything.settings import EverythingSettings
    from napari_sam.engine.metrics import average_precisions

    settings = None if iou_threshold is None else EverythingSettings(pred_iou_thresh=iou_threshold)
    result = segment_plane(
        predictor, image.image, image.normalization, settings, embed=lambda window: embedding
    )
    return average_precisions(result.labels, image.labels, AP_THRESHOLDS)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _evaluate_image(
    predictor, image: LabelledImage, settings: EvaluationSettings, scores: _Scores
) -> None:
    ids = image.object_ids(settings.min_area)
    rng = np.random.default_rng(settings.seed)
    if len(ids) > settings.max_objects:
        ids = np.sort(rng.choice(ids, size=settings.max_objects, replace=False))
    for start in range(0, len(ids), settings.batch_size):
        chunk = ids[start : start + settings.batch_size]
        truth = image.labels[None] == chunk[:, None, None]  # (B, rows, cols)
        centres = np.stack([interior_point(mask) for mask in truth])
        boxes = np.stack([_box(mask) for mask in truth])
        first = predictor.predict_batch(points=centres, multimask=True)
        best = first.scores.argmax(axis=1)
        rows = np.arange(len(chunk))
        point_masks, point_logits = first.masks[rows, best], first.logits[rows, best]
        scores.values["point"] += _ious(point_masks, truth)
        scores.predicted += [float(v) for v in first.scores[rows, best]]
        box_first = predictor.predict_batch(boxes=boxes)
        scores.values["box"] += _ious(box_first.masks[:, 0], truth)
        negatives = _neighbour_points(image.labels, chunk) if settings.point_negative else None
        if negatives is not None:
            both = predictor.predict_batch(
                points=np.stack([centres, negatives], axis=1),
                point_labels=np.tile([1, 0], (len(chunk), 1)),
            )
            scores.values["point_negative"] += _ious(both.masks[:, 0], truth)
        scores.point_clicks += _clicks(
            predictor,
            truth,
            centres[:, None],
            np.ones((len(chunk), 1), int),
            None,
            point_masks,
            point_logits,
            settings.clicks,
        )
        scores.box_clicks += _clicks(
            predictor,
            truth,
            np.zeros((len(chunk), 0, 2)),
            np.zeros((len(chunk), 0), int),
            boxes,
            box_first.masks[:, 0],
            box_first.logits[:, 0],
            settings.clicks,
        )


def _clicks(
    predictor, truth, points, labels, boxes, masks, logits, clicks: int
) -> list[list[float]]:
    """Per object, IoU after the first prompt and after each corrective click."""
    history = [_ious(masks, truth)]
    for _ in range(clicks - 1):
        new = [
            corrective_click(m, t, p[-1] if len(p) else None)
            for m, t, p in zip(masks, truth, points)
        ]
        points = np.concatenate([points, np.array([c for c, _ in new])[:, None]], axis=1)
        labels = np.concatenate([labels, np.array([lab for _, lab in new])[:, None]], axis=1)
        result = predictor.predict_batch(
            points=points, point_labels=labels, boxes=boxes, mask_input=logits
        )
        masks, logits = result.masks[:, 0], result.logits[:, 0]
        history.append(_ious(masks, truth))
    return [list(values) for values in zip(*history)]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(row, col) float64 of the pixel of ``mask`` farthest from its border (first if tied)."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1)
    distance = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([r - 1 + r0, c - 1 + c0], dtype=np.float64)


def corrective_click(
    predicted: np.ndarray, truth: np.ndarray, previous: np.ndarray | None
) -> tuple[np.ndarray, int]:
    """The next click: most interior pixel of the largest error, labelled by the truth.

    Returns the previous click again (same label) when there is no error left.
    """
    error = predicted ^ truth
    if not error.any():
        if previous is None:
            return interior_point(truth), 1
        return previous, int(truth[int(previous[0]), int(previous[1])])
    components, _ = ndimage.label(error)
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    point = interior_point(largest)
    return point, int(truth[int(point[0]), int(point[1])])


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=np.float64)


def _neighbour_points(labels: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """(B, 2) interior points of each object's nearest other object (by centroid), or None."""
    all_ids = np.unique(labels)
    all_ids = all_ids[all_ids != 0]
    if len(all_ids) < 2:
        return None
    centroids = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, all_ids))
    index = {int(i): k for k, i in enumerate(all_ids)}
    points = []
    for object_id in ids:
        distance = np.linalg.norm(centroids - centroids[index[int(object_id)]], axis=1)
        distance[index[int(object_id)]] = np.inf
        points.append(interior_point(labels == all_ids[int(np.argmin(distance))]))
    return np.stack(points)


def _ious(masks: np.ndarray, truth: np.ndarray) -> list[float]:
    return [mask_iou(m, t) for m, t in zip(masks, truth)]


@dataclass(frozen=True)
class RegressionCheck:
    """A before/after comparison of the same images."""

    before: EvaluationReport
    after: EvaluationReport
    worse: tuple[str, ...]  # measures that lost more than the tolerance, with numbers

    @property
    def passed(self) -> bool:
        """True when no measure got worse by more than the tolerance."""
        return not self.worse


def check_regression(
    before: EvaluationReport, after: EvaluationReport, tolerance: float = REGRESSION_TOLERANCE
) -> RegressionCheck:
    """Compare point, box, point+negative and the last iterative click of two reports."""
    pairs = {m: (getattr(before, m), getattr(after, m)) for m in MEASURES}
    pairs[f"point + {len(before.iterative_point) - 1} clicks"] = (
        before.iterative_point[-1],
        after.iterative_point[-1],
    )
    pairs[f"box + {len(before.iterative_box) - 1} clicks"] = (
        before.iterative_box[-1],
        after.iterative_box[-1],
    )
    worse = tuple(
        f"{name}: {old:.3f} -> {new:.3f} ({new - old:+.3f})"
        for name, (old, new) in pairs.items()
        if new < old - tolerance
    )
    return RegressionCheck(before, after, worse)
