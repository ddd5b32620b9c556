"""Segment every object of a plane with an instance head: straight from it, or via SAM.

Two modes, both after the encoder and one pass of the head per view:

* ``"ais"`` (automatic instance segmentation): seeds grown by a watershed over the head's
  foreground are the objects. No decoder call at all: the fastest mode.
* ``"apg"`` (automatic prompt generation): one point prompt per seed, decoded by SAM in
  batches; its candidates go through segment-everything's own filters (predicted IoU,
  stability, NMS) and painting. About a tenth of the grid's decoder calls, and SAM draws
  the masks.

Views, tiles and the merging of tiles are segment-everything's
(:func:`~napari_sam.engine.everything.segmenter.plan_views`,
:mod:`~napari_sam.engine.everything.merging`), so a head result paints and merges like a
grid result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from scipy import ndimage

from napari_sam.engine.everything.merging import (
    Survivor,
    merge_views,
    paint_survivors,
    view_survivors,
)
from napari_sam.engine.everything.segmenter import (
    EmbedWindow,
    PlaneSegmentation,
    checked_plane_shape,
    plan_views,
    window_encoder,
)
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.everything.views import View, ViewCandidates
from napari_sam.engine.instances.head import TrainedHead
from napari_sam.engine.instances.seeds import (
    HeadMaps,
    SeedSettings,
    find_seeds,
    grow_instances,
    predict_maps,
    renumber,
    seed_points,
)
from napari_sam.engine.prediction import prompts
from napari_sam.engine.prediction.planes import PlaneView
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import Normalization, compute_normalization
from napari_sam.engine.prediction.results import Embedding
from napari_sam.errors import InvalidInputError, OperationCancelled

MODES = ("apg", "ais")
PROMPT_BATCH = 64  # seeds decoded per decoder call


class HeadSegmenter:
    """Segment planes with a trained head and one predictor.

    Parameters
    ----------
    predictor : Predictor
        Encodes (unless ``embed`` is given) and, in ``"apg"`` mode, decodes.
    head : TrainedHead
        Must have been trained on this predictor's encoder.
    mode : {"apg", "ais"}
    settings : EverythingSettings, optional
        The filters and painting of ``"apg"`` (its grid fields are unused).
    seeds : SeedSettings, optional
    """

    def __init__(
        self,
        predictor: Predictor,
        head: TrainedHead,
        mode: str = "apg",
        settings: EverythingSettings | None = None,
        seeds: SeedSettings | None = None,
    ) -> None:
        if mode not in MODES:
            raise InvalidInputError(f"Unknown head mode {mode!r}; choose from {', '.join(MODES)}.")
        self.predictor, self.head, self.mode = predictor, head, mode
        self.settings = replace(settings or EverythingSettings(), crop_layers=0)
        self.seeds = seeds or SeedSettings()

    def segment(
        self,
        plane: np.ndarray | PlaneView,
        normalization: Normalization | None = None,
        *,
        tile: int | None = None,
        halo: int = 0,
        embed: EmbedWindow | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> PlaneSegmentation:
        """Labels of one plane (see :meth:`AutomaticSegmenter.initialise` for the
        parameters; ``progress(done, total)`` counts views)."""
        shape = checked_plane_shape(plane)
        if embed is None:
            normalization = normalization or compute_normalization(plane)
            embed = window_encoder(self.predictor, plane, normalization, should_stop)
        views = plan_views(shape, self.settings, tile, halo)
        survivors: list[Survivor] = []
        decoded = 0
        for done, view in enumerate(views, 1):
            if should_stop is not None and should_stop():
                raise OperationCancelled("Segment everything was cancelled.")
            embedding = embed(view.window)
            self.head.check_encoder(embedding.model_id)
            maps = predict_maps(
                self.head.network, embedding, self.predictor.model.input_size, view.shape
            )
            seeds = _seeds_in_region(maps, find_seeds(maps, self.seeds), view)
            if self.mode == "ais":
                survivors.extend(instance_survivors(maps, seeds, view, self.seeds))
            else:
                candidates = self.decode_seeds(embedding, view, seed_points(maps, seeds))
                survivors.extend(view_survivors(candidates, self.settings, shape))
                decoded += candidates.decoded
            if progress is not None:
                progress(done, len(views))
        if len(views) > 1:
            survivors = merge_views(survivors, self.settings.box_nms_thresh)
        labels, kept = paint_survivors(survivors, shape)
        return PlaneSegmentation(
            labels=labels,
            scores=np.array([s.score for s in kept], np.float32),
            stability=np.array([s.stability for s in kept], np.float32),
            points_decoded=decoded,
            points_skipped=0,
        )

    def decode_seeds(self, embedding: Embedding, view: View, points: np.ndarray) -> ViewCandidates:
        """Decode one point prompt per seed (window pixels) into low-res candidates."""
        predictor, settings = self.predictor, self.settings
        predictor.set_embedding(embedding)
        scale = np.array(embedding.original_size, float) / np.array(view.shape, float)
        local = np.clip((points + 0.5) * scale - 0.5, 0, np.array(embedding.original_size) - 1)
        origin = np.array([view.window[0].start, view.window[1].start], float)
        logits, scores, where = [], [], []
        for start in range(0, len(points), PROMPT_BATCH):
            part = slice(start, start + PROMPT_BATCH)
            out = predictor.predict_low_res(local[part][:, None, :], multimask=True)
            flat = out.logits.reshape(-1, prompts.LOW_RES, prompts.LOW_RES).float()
            score = out.scores.reshape(-1).float()
            per_seed = flat.shape[0] // len(local[part])
            keep = score >= settings.keep_iou_floor
            logits.append(flat[keep].half())
            scores.append(score[keep].cpu().numpy())
            where.append(np.repeat(points[part] + origin, per_seed, axis=0)[keep.cpu().numpy()])
        device = torch.device(predictor.model.device)
        empty = torch.zeros(
            (0, prompts.LOW_RES, prompts.LOW_RES), dtype=torch.float16, device=device
        )
        return ViewCandidates(
            view=view,
            logits=torch.cat(logits) if logits else empty,
            scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
            points=np.concatenate(where) if where else np.zeros((0, 2)),
            encoded_size=(int(embedding.original_size[0]), int(embedding.original_size[1])),
            input_size=(int(embedding.input_size[0]), int(embedding.input_size[1])),
            frame=predictor.model.input_size,
            decoded=len(points),
            skipped=0,
        )


def instance_survivors(
    maps: HeadMaps, seeds: np.ndarray, view: View, settings: SeedSettings
) -> list[Survivor]:
    """Watershed instances of one view as survivors (score: mean foreground probability)."""
    instances = grow_instances(maps, seeds, settings)
    height, width = instances.shape
    survivors = []
    for index, found in enumerate(ndimage.find_objects(instances), start=1):
        if found is None:
            continue
        mask = instances[found] == index
        r0, c0 = found[0].start, found[1].start
        r1, c1 = found[0].stop, found[1].stop
        top, left, bottom, right = view.inner_edges
        cut = (top and r0 == 0) or (left and c0 == 0)
        cut = cut or (bottom and r1 == height) or (right and c1 == width)
        box = (
            view.window[0].start + r0,
            view.window[1].start + c0,
            view.window[0].start + r1,
            view.window[1].start + c1,
        )
        score = float(maps.foreground[found][mask].mean())
        survivors.append(Survivor(mask, box, score, 1.0, bool(cut), view.layer))
    return survivors


def _seeds_in_region(maps: HeadMaps, seeds: np.ndarray, view: View) -> np.ndarray:
    """Keep the seeds whose deepest pixel lies in the view's region (a tile's interior)."""
    if view.region == view.window or not seeds.any():
        return seeds
    points = seed_points(maps, seeds)
    rows = points[:, 0] + view.window[0].start
    cols = points[:, 1] + view.window[1].start
    inside = (
        (rows >= view.region[0].start)
        & (rows < view.region[0].stop)
        & (cols >= view.region[1].start)
        & (cols < view.region[1].stop)
    )
    table = np.concatenate([[0], np.where(inside, np.arange(1, len(points) + 1), 0)])
    return renumber(table[seeds])
