"""From low-resolution candidates to one label image: filter, upsample, merge, paint.

Per view (see :mod:`napari_sam.engine.everything.views`), candidates are filtered by
predicted IoU, stability and area on the 256x256 logits and de-duplicated by box NMS; only
the survivors are upsampled, cropped to their bounding boxes and cleaned. Across views
(tiles, crops), survivors are de-duplicated again by mask IoU: whole masks win over masks
cut by a window edge inside the plane, zoomed crops over coarser views, then the higher
predicted IoU. Painting goes from the largest object to the smallest, so nothing overlaps
and an object lying on a larger one stays visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.everything.filters import (
    clean_mask,
    mask_boxes,
    nms,
    stability_scores,
    touches_edges,
)
from napari_sam.engine.everything.views import ViewCandidates
from napari_sam.engine.prediction.upsampling import LogitUpsampler

UPSAMPLE_CHUNK = 16  # masks upsampled at once: bounds memory on 1024x1024 windows
CUT_CONTAINED = 0.5  # a cut mask this much inside an accepted mask is its fragment


@dataclass(frozen=True, eq=False)
class Survivor:
    """One accepted mask, stored as its bounding-box crop."""

    mask: np.ndarray  # (r1 - r0, c1 - c0) bool
    box: tuple[int, int, int, int]  # (r0, c0, r1, c1) in plane pixels, ends exclusive
    score: float  # predicted IoU
    stability: float
    cut: bool  # touches a window edge that lies inside the plane
    layer: int  # crop layer of the view it came from

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def view_survivors(
    candidates: ViewCandidates, settings, plane_shape: tuple[int, int]
) -> list[Survivor]:
    """Filter, NMS and upsample one view's candidates into plane-space survivors."""
    if len(candidates.scores) == 0:
        return []
    view = candidates.view
    low = candidates.logits.shape[-1]
    rows, cols = (math.ceil(s * low / candidates.frame) for s in candidates.input_size)
    valid = (rows, cols)
    logits = candidates.logits[:, : valid[0], : valid[1]].float()
    stability = stability_scores(logits, settings.stability_offset).cpu().numpy()
    chosen = np.flatnonzero(
        (candidates.scores >= settings.pred_iou_thresh)
        & (stability >= settings.stability_score_thresh)
    )
    masks = logits[chosen] > 0
    low_boxes = mask_boxes(masks).cpu().numpy()
    scale = np.array(view.shape, dtype=np.float64) / np.array(valid)
    areas = masks.sum(dim=(1, 2)).cpu().numpy() * scale.prod()
    window_area = view.shape[0] * view.shape[1]
    ok = (
        (areas > 0)
        & (areas >= settings.min_area)
        & (areas <= settings.max_area_fraction * window_area)
    )
    if settings.drop_background:
        large = areas >= settings.background_fraction * window_area
        ok &= ~(large & (_edge_count(low_boxes, valid) >= 3))
    cut = touches_edges(low_boxes, valid, view.inner_edges)
    if view.layer > 0:  # zoomed crops: a cut mask is also found whole by a coarser view
        ok &= ~cut
    chosen, low_boxes, cut = chosen[ok], low_boxes[ok], cut[ok]
    boxes = low_boxes * np.concatenate([scale, scale])
    order = nms(boxes, candidates.scores[chosen], settings.box_nms_thresh)
    chosen, cut = chosen[order], cut[order]
    survivors = []
    for start in range(0, len(chosen), UPSAMPLE_CHUNK):
        part = chosen[start : start + UPSAMPLE_CHUNK]
        full = _upsample(candidates, part)
        for k, index in enumerate(part):
            survivor = _crop(
                full[k],
                view,
                float(candidates.scores[index]),
                float(stability[index]),
                bool(cut[start + k]),
                settings.min_region_area,
            )
            if survivor is not None:
                survivors.append(survivor)
    return survivors


def _edge_count(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return (
        (boxes[:, 0] <= 0).astype(int)
        + (boxes[:, 1] <= 0)
        + (boxes[:, 2] >= shape[0])
        + (boxes[:, 3] >= shape[1])
    )


def _upsample(candidates: ViewCandidates, indices: np.ndarray) -> np.ndarray:
    """(S,) candidate indices -> (S, rows, cols) bool masks in window pixels.

    Upsampled where the logits are (the decoder's device); only the masks leave it.
    """
    upsampler = LogitUpsampler(candidates.encoded_size, candidates.input_size, candidates.frame)
    with torch.inference_mode():
        logits = upsampler(candidates.logits[torch.from_numpy(indices)].float())
        if tuple(candidates.encoded_size) != candidates.view.shape:  # the window was upscaled
            logits = F.interpolate(logits[None], size=candidates.view.shape, mode="bilinear")[0]
    return (logits > 0).cpu().numpy()


def _crop(
    mask: np.ndarray, view, score: float, stability: float, cut: bool, min_region_area: int
) -> Survivor | None:
    """A window-sized mask -> a cleaned bounding-box crop in plane pixels (None if empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    # One pixel of margin lets clean_mask tell holes from the outside.
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, mask.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, mask.shape[1])
    crop = clean_mask(mask[r0:r1, c0:c1], min_region_area)
    rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
    if len(rows) == 0:
        return None
    crop = crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    top, left = view.window[0].start + r0 + rows[0], view.window[1].start + c0 + cols[0]
    box = (int(top), int(left), int(top + crop.shape[0]), int(left + crop.shape[1]))
    return Survivor(crop, box, score, stability, cut, view.layer)


def merge_views(survivors: list[Survivor], threshold: float) -> list[Survivor]:
    """De-duplicate survivors of several views by mask IoU (greedy, best first).

    A survivor is dropped when its IoU with an accepted mask exceeds ``threshold``, or when
    it is cut by its window and lies mostly inside an accepted mask (a fragment of it).
    """
    order = sorted(
        range(len(survivors)),
        key=lambda i: (survivors[i].cut, -survivors[i].layer, -survivors[i].score),
    )
    accepted: list[Survivor] = []
    boxes = np.zeros((0, 4), np.int64)
    for i in order:
        candidate = survivors[i]
        box = np.array(candidate.box)
        near = np.flatnonzero(
            (boxes[:, 0] < box[2])
            & (box[0] < boxes[:, 2])
            & (boxes[:, 1] < box[3])
            & (box[1] < boxes[:, 3])
        )
        if not any(_duplicate(candidate, accepted[j], threshold) for j in near):
            accepted.append(candidate)
            boxes = np.vstack([boxes, box])
    return accepted


def _duplicate(candidate: Survivor, kept: Survivor, threshold: float) -> bool:
    r0, c0 = max(candidate.box[0], kept.box[0]), max(candidate.box[1], kept.box[1])
    r1, c1 = min(candidate.box[2], kept.box[2]), min(candidate.box[3], kept.box[3])
    a = candidate.mask[
        r0 - candidate.box[0] : r1 - candidate.box[0], c0 - candidate.box[1] : c1 - candidate.box[1]
    ]
    b = kept.mask[r0 - kept.box[0] : r1 - kept.box[0], c0 - kept.box[1] : c1 - kept.box[1]]
    inter = int(np.count_nonzero(a & b))
    if inter == 0:
        return False
    area = candidate.area
    if inter / (area + kept.area - inter) > threshold:
        return True
    return candidate.cut and inter / area > CUT_CONTAINED


def paint_survivors(
    survivors: list[Survivor], shape: tuple[int, int]
) -> tuple[np.ndarray, list[Survivor]]:
    """Paint largest first into (rows, cols) int32 labels; ids 1..n follow the survivors kept.

    Returns the labels and the survivors still visible, in label order.
    """
    order = sorted(survivors, key=lambda s: -s.area)
    labels = np.zeros(shape, np.int32)
    for label, survivor in enumerate(order, start=1):
        r0, c0, r1, c1 = survivor.box
        labels[r0:r1, c0:c1][survivor.mask] = label
    present = np.unique(labels)
    present = present[present > 0]
    relabel = np.zeros(len(order) + 1, np.int32)
    relabel[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return relabel[labels], [order[i - 1] for i in present]
