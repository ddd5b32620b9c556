"""Scoring, filtering and de-duplicating candidate masks for segment-everything.

The quantities follow the SAM paper's automatic data engine (Kirillov et al. 2023, sec. 4
and appendix): the *stability score* of a mask is the IoU between the masks obtained by
thresholding its logits at ``+offset`` and at ``-offset`` (a stable mask hardly changes),
and duplicates are removed by greedy non-maximum suppression. Here everything runs on the
decoder's 256x256 logits, so thousands of candidates cost milliseconds; only survivors are
upsampled. Post-processing (small islands removed, small holes filled) works on one mask's
bounding box at full resolution.
"""

from __future__ import annotations

import numpy as np
import torch


def stability_scores(logits: torch.Tensor, offset: float, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the masks ``logits > threshold + offset`` and ``logits > threshold - offset``.

    Parameters
    ----------
    logits : torch.Tensor, shape (M, rows, cols)
    offset : float

    Returns
    -------
    torch.Tensor, shape (M,) float32 on the device of ``logits`` (1.0 for a mask empty at
    both thresholds)
    """
    flat = logits.reshape(len(logits), -1)
    inner = (flat > threshold + offset).sum(dim=1, dtype=torch.int32)
    outer = (flat > threshold - offset).sum(dim=1, dtype=torch.int32)
    return torch.where(
        outer > 0,
        inner.float() / outer.clamp(min=1).float(),
        torch.ones_like(inner, dtype=torch.float32),
    )


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes (row0, col0, row1, col1), ends exclusive; (0, 0, 0, 0) when empty.

    Parameters
    ----------
    masks : torch.Tensor, shape (M, rows, cols) bool

    Returns
    -------
    torch.Tensor, shape (M, 4) int64, on the device of ``masks``
    """
    m, rows, cols = masks.shape
    if m == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    any_row, any_col = masks.any(dim=2), masks.any(dim=1)
    row_index = torch.arange(rows, device=masks.device).expand(m, rows)
    col_index = torch.arange(cols, device=masks.device).expand(m, cols)
    row0 = torch.where(any_row, row_index, rows).amin(dim=1)
    row1 = torch.where(any_row, row_index + 1, 0).amax(dim=1)
    col0 = torch.where(any_col, col_index, cols).amin(dim=1)
    col1 = torch.where(any_col, col_index + 1, 0).amax(dim=1)
    boxes = torch.stack([row0, col0, row1, col1], dim=1)
    return torch.where(masks.flatten(1).any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def box_iou(boxes: np.ndarray) -> np.ndarray:
    """(M, 4) boxes (row0, col0, row1, col1), ends exclusive -> (M, M) IoU."""
    boxes = np.asarray(boxes, dtype=np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    low = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy box NMS: indices kept, best score first; a box overlapping a kept one by
    IoU > ``threshold`` is dropped (ties keep the earlier index)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) == 0:
        return order
    overlap = box_iou(np.asarray(boxes)[order])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= overlap[i] > threshold
    return np.asarray(keep, dtype=np.int64)


def touches_edges(
    boxes: np.ndarray, shape: tuple[int, int], edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Which boxes touch one of the chosen edges (top, left, bottom, right) of a (rows, cols)
    frame.
    """
    boxes = np.asarray(boxes)
    hits = np.stack(
        [boxes[:, 0] <= 0, boxes[:, 1] <= 0, boxes[:, 2] >= shape[0], boxes[:, 3] >= shape[1]],
        axis=1,
    )
    return (hits & np.asarray(edges, bool)[None]).any(axis=1)


def clean_mask(mask: np.ndarray, min_region_area: int) -> np.ndarray:
    """Remove islands and fill holes smaller than ``min_region_area`` pixels (a copy).

    A hole is background not connected to the frame's border (4-connectivity), so the
    function may be given a mask's bounding box with a margin of at least one pixel.

    Parameters
    ----------
    mask : numpy.ndarray, shape (rows, cols) bool
    """
    if min_region_area <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    out = mask.copy()
    holes, count = ndimage.label(~mask)
    if count:
        sizes = np.bincount(holes.ravel())
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < min_region_area
        small[0] = False
        small[border] = False
        out[small[holes]] = True
    islands, count = ndimage.label(out)
    if count:
        sizes = np.bincount(islands.ravel())
        small = sizes < min_region_area
        small[0] = False
        out[small[islands]] = False
    return out
