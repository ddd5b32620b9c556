"""Segment everything: mechanics on the tiny random SAM (grid, views, re-threshold, cancel).

Quality with the real weights is in test_automatic_quality.py.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_sam.engine.everything.segmenter import AutomaticSegmenter, EverythingSettings, plan_views, segment_plane
from napari_sam.engine.everything.views import grid_points
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError, OperationCancelled

# Loose thresholds: the random model's scores are meaningless, but they must yield objects.
LOOSE = EverythingSettings(points_per_side=6, points_per_batch=8, pred_iou_thresh=0.0,
                           stability_score_thresh=0.0, keep_iou_floor=-10.0, keep_stability_floor=0.0,
                           skip_covered=False, skip_margin=None, drop_background=False)


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model)


@pytest.fixture(scope="module")
def decoded(predictor, image_300x500):
    """(segmenter, candidates, progress calls) of one initialise with LOOSE settings."""
    seen = []
    segmenter = AutomaticSegmenter(predictor, LOOSE)
    candidates = segmenter.initialise(image_300x500, progress=lambda d, t: seen.append((d, t)))
    return segmenter, candidates, seen


def test_grid_is_cell_centred_and_coarse_points_come_first():
    points = grid_points((slice(0, 40), slice(100, 140)), 4)
    assert points.shape == (16, 2)
    assert sorted(map(tuple, points)) == [(r, c) for r in (5, 15, 25, 35) for c in (105, 115, 125, 135)]
    assert tuple(points[0]) == (5, 105)
    assert {tuple(p) for p in points[:4]} == {(5, 105), (5, 125), (25, 105), (25, 125)}


def test_tile_views_prompt_every_pixel_of_the_plane_once():
    views = plan_views((300, 500), LOOSE, tile=128, halo=32)
    owner = np.zeros((300, 500), int)
    for view in views:
        owner[view.region] += 1
        rows, cols = view.window
        assert rows.start <= view.region[0].start and view.region[0].stop <= rows.stop
    assert (owner == 1).all()
    top_left = views[0]
    assert top_left.inner_edges == (False, False, True, True)


def test_crop_layers_add_four_zoomed_views_per_layer():
    views = plan_views((300, 500), replace(LOOSE, crop_layers=1), tile=None, halo=0)
    assert len(views) == 5 and [v.layer for v in views] == [0, 1, 1, 1, 1]
    crops = views[1:]
    assert all(v.inner_edges.count(True) == 2 for v in crops)


def test_labels_do_not_overlap_and_follow_the_survivors(predictor, image_300x500, decoded):
    segmenter, candidates, _ = decoded
    assert candidates.points_decoded == 36 and candidates.points_skipped == 0
    result = segmenter.generate(candidates)
    assert result.labels.shape == (300, 500) and result.labels.dtype == np.int32
    ids = np.unique(result.labels)
    assert ids[0] == 0 and list(ids[1:]) == list(range(1, result.count + 1))
    assert result.count >= 1 and len(result.stability) == result.count
    # The one-call helper gives the same labels.
    again = segment_plane(predictor, image_300x500, settings=LOOSE)
    assert np.array_equal(again.labels, result.labels)


def test_rethreshold_reuses_the_decoding(predictor, decoded, monkeypatch):
    segmenter, candidates, _ = decoded
    monkeypatch.setattr(predictor, "predict_low_res", None)  # generate must not decode
    everything = segmenter.generate(candidates)
    nothing = segmenter.generate(candidates, replace(LOOSE, pred_iou_thresh=1.5))
    assert nothing.count == 0 and not nothing.labels.any()
    assert everything.count > 0


def test_progress_and_cancel(predictor, image_300x500, decoded):
    seen = decoded[2]
    assert seen[-1] == (36, 36) and len(seen) == 5
    with pytest.raises(OperationCancelled, match="cancelled"):
        AutomaticSegmenter(predictor, LOOSE).initialise(image_300x500, should_stop=lambda: True)


def test_settings_are_checked_and_round_trip():
    assert EverythingSettings.from_dict(LOOSE.to_dict()) == LOOSE
    with pytest.raises(InvalidInputError, match="points_per_side=0"):
        EverythingSettings(points_per_side=0)
    with pytest.raises(InvalidInputError, match="Unknown segment-everything settings"):
        EverythingSettings.from_dict({"points": 3})


def test_a_volume_is_refused_with_the_remedy(predictor):
    with pytest.raises(InvalidInputError, match="one 2D plane"):
        segment_plane(predictor, np.zeros((3, 4, 5, 6)))


def _grid_state(settings, local):
    """A grid state over a 512 x 512 window encoded at 2x (one low-res cell = 2 pixels)."""
    from napari_sam.engine.everything.views import _GridState
    from napari_sam.engine.prediction.results import Embedding

    embedding = Embedding(torch.ones(1, 8, 64, 64), (1024, 1024), (512, 512), "stub", None)
    return _GridState(embedding, np.asarray(local, float), settings)


def test_skip_distance_skips_points_near_a_confident_mask_only():
    # a confident mask over rows/cols 100..139 (low-res cells 50..69); points 1, 3 and 9
    # pixels outside its edge fall in cells 70, 71 and 74
    points = [[120, 120], [120, 140], [120, 142], [120, 148]]
    for distance, kept in [(0.0, [1, 2, 3]), (2.0, [2, 3]), (4.0, [3]), (8.0, [3]), (10.0, [])]:
        grid = _grid_state(replace(EverythingSettings(), skip_margin=None, skip_distance=distance), points)
        grid.covered[50:70, 50:70] = True
        assert grid.select(np.arange(4)).tolist() == kept, distance
        assert grid.skipped == 4 - len(kept)


def test_first_batch_is_the_warm_up_then_full_batches():
    from napari_sam.engine.everything.views import SKIP_WARMUP, _batches

    assert _batches(100, 32) == [(0, SKIP_WARMUP), (SKIP_WARMUP, 32), (32, 64), (64, 96), (96, 100)]
    assert _batches(10, 32) == [(0, 10)] and _batches(0, 32) == []
    assert _batches(20, 4) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]


def test_background_rule_waits_for_an_example_of_an_object():
    settings = replace(EverythingSettings(), skip_covered=False, skip_margin=0.05)
    grid = _grid_state(settings, [[8 + 16 * i, 8] for i in range(32)])
    grid.decoded, grid.empty = 16, list(range(16))  # the coarse points all found nothing
    assert grid.select(np.arange(16, 32)).tolist() == list(range(16, 32))
    grid.found = [0]  # one object point: identical embeddings are then a tie, not background
    assert grid.select(np.arange(16, 32)).tolist() == list(range(16, 32))
    grid.found, grid.empty = [], list(range(16))
    grid.vectors[5] = -grid.vectors[5]  # an object unlike everything else
    grid.found = [5]
    assert grid.select(np.arange(16, 32)).tolist() == []
