"""Segmentation quality: mask IoU, instance matching and average precision.

Average precision follows the convention of the DSB2018 challenge and StarDist/Cellpose
papers: at an IoU threshold t, predicted and true objects are matched one to one
(optimal assignment on IoU, Kuhn 1955 via ``scipy.optimize.linear_sum_assignment``), and
``AP(t) = TP / (TP + FP + FN)``. Overlaps are counted sparsely from the pairs of labels
that share pixels, so a 3D volume with thousands of objects costs one pass over its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sam.errors import InvalidInputError


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (1.0 if both empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InvalidInputError(f"masks must have the same shape; got {a.shape} and {b.shape}.")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@dataclass(frozen=True)
class InstanceOverlap:
    """IoU between every predicted and every true object that share at least one pixel.

    Attributes
    ----------
    predicted_ids, true_ids : ndarray, (P,) and (T,) int64
        The nonzero labels of each image, sorted.
    iou : ndarray, (P, T) float64
        ``iou[i, j]`` between ``predicted_ids[i]`` and ``true_ids[j]``.
    """

    predicted_ids: np.ndarray
    true_ids: np.ndarray
    iou: np.ndarray

    def matches(self, threshold: float) -> list[tuple[int, int, float]]:
        """One-to-one matches with IoU >= ``threshold`` as (predicted id, true id, IoU).

        The assignment maximises the summed IoU; above 0.5 every match is unique anyway.
        """
        from scipy.optimize import linear_sum_assignment

        if self.iou.size == 0:
            return []
        rows, cols = linear_sum_assignment(
            np.where(self.iou >= threshold, self.iou, 0.0), maximize=True
        )
        return [
            (int(self.predicted_ids[r]), int(self.true_ids[c]), float(self.iou[r, c]))
            for r, c in zip(rows, cols)
            if self.iou[r, c] >= threshold and self.iou[r, c] > 0
        ]


def instance_overlap(predicted: np.ndarray, truth: np.ndarray) -> InstanceOverlap:
    """Count the overlaps of two label images (any dimension, 0 = background).

    Parameters
    ----------
    predicted, truth : ndarray of int, same shape
        Instance label images, e.g. (row, col) or (z, row, col).
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise InvalidInputError(
            f"label images must have the same shape; got {predicted.shape} and {truth.shape}."
        )
    pred_ids, pred_index = np.unique(predicted, return_inverse=True)
    true_ids, true_index = np.unique(truth, return_inverse=True)
    pairs = pred_index.ravel().astype(np.int64) * len(true_ids) + true_index.ravel()
    joint = np.bincount(pairs, minlength=len(pred_ids) * len(true_ids)).reshape(
        len(pred_ids), len(true_ids)
    )
    pred_area, true_area = joint.sum(axis=1), joint.sum(axis=0)
    keep_pred, keep_true = pred_ids != 0, true_ids != 0
    intersection = joint[np.ix_(keep_pred, keep_true)].astype(np.float64)
    union = pred_area[keep_pred, None] + true_area[None, keep_true] - intersection
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return InstanceOverlap(
        pred_ids[keep_pred].astype(np.int64), true_ids[keep_true].astype(np.int64), iou
    )


def average_precision(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """``TP / (TP + FP + FN)`` at one IoU threshold; 1.0 when both images are empty.

    Parameters
    ----------
    predicted, truth : ndarray of int, same shape
        Instance label images (0 = background).
    threshold : float
        Minimum IoU for a predicted object to count as finding a true one.
    """
    overlap = instance_overlap(predicted, truth)
    return _ap(overlap, threshold)


def average_precisions(
    predicted: np.ndarray, truth: np.ndarray, thresholds: tuple[float, ...] = (0.5, 0.75, 0.9)
) -> dict[float, float]:
    """:func:`average_precision` at several thresholds, counting overlaps once."""
    overlap = instance_overlap(predicted, truth)
    return {t: _ap(overlap, t) for t in thresholds}


def _ap(overlap: InstanceOverlap, threshold: float) -> float:
    if not 0.0 < threshold <= 1.0:
        raise InvalidInputError(f"an IoU threshold must be in (0, 1]; got {threshold}.")
    true_positives = len(overlap.matches(threshold))
    total = len(overlap.predicted_ids) + len(overlap.true_ids) - true_positives
    return 1.0 if total == 0 else true_positives / total
