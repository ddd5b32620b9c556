"""Segment everything: mechanics on the tiny random SAM (grid, views, re-threshold, cancel).

Quality with the real weights is in test_segmenter_quality.py.
"""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_sam.engine.everything.segmenter import AutomaticSegmenter, plan_views, segment_plane
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.everything.views import grid_points
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.results import Embedding, LowResBatch
from napari_sam.errors import InvalidInputError, OperationCancelled

# Loose thresholds: the random model's scores are meaningless, but they must yield objects.
LOOSE = EverythingSettings(
    points_per_side=6,
    points_per_batch=8,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    keep_iou_floor=-10.0,
    keep_stability_floor=0.0,
    skip_covered=False,
    stop_after_empty=None,
    drop_background=False,
)


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
    assert sorted(map(tuple, points)) == [
        (r, c) for r in (5, 15, 25, 35) for c in (105, 115, 125, 135)
    ]
    assert tuple(points[0]) == (5, 105)
    assert {tuple(p) for p in points[:4]} == {(5, 105), (5, 125), (25, 105), (25, 125)}


def test_tile_views_prompt_every_pixel_of_the_plane_once():
    views = plan_views((300, 500), LOOSE, tile=128, halo=32)
    owner = np.zeros((300, 500), int)
    for view in views:
        owner[view.region] += 1
        rows, _cols = view.window
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
    done = [0] + [d for d, total in decoded[2]]
    assert {total for _, total in decoded[2]} == {36} and done[-1] == 36
    steps = np.diff(done)  # reported batch by batch
    assert (steps > 0).all() and steps.max() <= LOOSE.points_per_batch
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


class StubDecoder:
    """Stands in for a predictor on a 512 x 512 window encoded at 2x (one low-res cell = 2 pixels).

    ``finds(row, col)`` gives the window pixels (rows slice, cols slice) of the confident
    mask a point prompt returns, or None for nothing. Every decoded point is recorded.
    """

    def __init__(self, finds):
        self.finds = finds
        self.model = SimpleNamespace(input_size=1024, device="cpu")
        self.decoded: list[tuple[float, float]] = []
        self.batch_sizes: list[int] = []

    def set_embedding(self, embedding):
        self.embedding = embedding

    def predict_low_res(self, points, multimask=True):
        points = np.asarray(points).reshape(-1, 2)
        logits = torch.full((len(points), 3, 256, 256), -10.0)
        for index, (row, col) in enumerate(points):
            self.decoded.append((float(row), float(col)))
            found = self.finds(row, col)
            if found is not None:
                rows, cols = (slice(s.start // 2, s.stop // 2) for s in found)  # low-res cells
                logits[index, :, rows, cols] = 10.0
        self.batch_sizes.append(len(points))
        return LowResBatch(logits=logits, scores=torch.full((len(points), 3), 0.99))


def run_grid(finds, settings, features=None):
    """(stub, candidates) of a 16 x 16 grid over a 512 x 512 plane with the given embedding."""
    features = torch.ones(1, 8, 64, 64) if features is None else features
    embedding = Embedding(features, (1024, 1024), (512, 512), "stub", None)
    stub = StubDecoder(finds)
    segmenter = AutomaticSegmenter(stub, replace(settings, points_per_side=16))
    candidates = segmenter.initialise(np.zeros((512, 512)), embed=lambda window: embedding)
    return stub, candidates


GRID = [(16.0 + 32 * i, 16.0 + 32 * j) for i in range(16) for j in range(16)]  # cell-centred
SQUARE = (slice(192, 224), slice(192, 224))  # a confident mask, away from the coarse grid points


def distance_to_square(point):
    """Pixels from a point to SQUARE along the farther axis (0 inside)."""
    return max(max(s.start - p, p - (s.stop - 1), 0) for p, s in zip(point, SQUARE))


@pytest.mark.parametrize("distance", [0.0, 8.0, 24.0])  # grid points lie 0, 16-17, 48-49 ... away
def test_points_within_the_skip_distance_of_a_confident_mask_are_not_decoded(distance):
    settings = replace(
        EverythingSettings(), points_per_batch=16, stop_after_empty=None, skip_distance=distance
    )
    stub, candidates = run_grid(lambda row, col: SQUARE, settings)  # every point finds the square
    expected = {p for p in GRID if distance_to_square(p) > distance}
    assert set(stub.decoded) == expected
    assert candidates.points_decoded == len(expected)
    assert candidates.points_skipped == len(GRID) - len(expected)


def quadrant_object(row, col):
    """A small confident mask around points in the bottom-right quadrant; nothing elsewhere."""
    if row >= 256 and col >= 256:
        return slice(int(row) - 6, int(row) + 6), slice(int(col) - 6, int(col) + 6)
    return None


def two_textures():
    """Embedding vectors: one kind over the bottom-right quadrant, an orthogonal one elsewhere."""
    features = torch.zeros(1, 2, 64, 64)
    features[0, 0] = 1.0
    features[0, :, 32:, 32:] = torch.tensor([0.0, 1.0])[:, None, None]
    return features


def test_points_like_the_objects_are_decoded_first_and_decoding_stops_after_a_run_of_empties():
    settings = replace(EverythingSettings(), skip_covered=False, stop_after_empty=8)
    stub, candidates = run_grid(quadrant_object, settings, two_textures())
    inside = {p for p in GRID if p[0] >= 256 and p[1] >= 256}
    assert inside <= set(stub.decoded)  # every point on object-like embedding is decoded
    first = len(stub.decoded) - 8 - len(set(stub.decoded) - inside - set(stub.decoded[:16]))
    # after the 16 warm-up points, the object-like points come before any other
    ranked = stub.decoded[16:]
    assert set(ranked[: len(inside - set(stub.decoded[:16]))]) <= inside
    assert len(set(stub.decoded) - inside) <= 16 + 8  # warm-up, then one run of 8 empties
    assert candidates.points_skipped == len(GRID) - len(stub.decoded) > len(GRID) / 2
    assert first >= 0


@pytest.mark.parametrize(
    "finds, features",
    [
        (lambda row, col: None, two_textures()),  # no object found: nothing to rank by
        (quadrant_object, None),  # identical embeddings: the grid order, objects spread in it
    ],
)
def test_the_stop_rule_loses_no_object_without_a_classifier_that_tells_them_apart(finds, features):
    settings = replace(EverythingSettings(), skip_covered=False, stop_after_empty=8)
    stub, candidates = run_grid(finds, settings, features)
    objects = {p for p in GRID if finds(*p) is not None}
    assert objects <= set(stub.decoded)
    if not objects:
        assert sorted(stub.decoded) == sorted(GRID) and candidates.points_skipped == 0


def test_a_point_beside_a_small_object_that_returns_it_counts_as_a_find():
    """Objects between grid points are found by their neighbours' prompts: a run of such
    finds must not read as empty (the old rule's failure on small nuclei)."""

    def beside(row, col):  # each point returns a 6 px object just off itself
        return slice(int(row) + 4, int(row) + 10), slice(int(col) + 4, int(col) + 10)

    settings = replace(EverythingSettings(), skip_covered=False, stop_after_empty=8)
    stub, _ = run_grid(beside, settings, two_textures())
    assert sorted(stub.decoded) == sorted(GRID)


def test_no_decoder_call_holds_more_than_points_per_batch():
    settings = replace(
        EverythingSettings(), points_per_batch=20, skip_covered=False, stop_after_empty=None
    )
    stub, candidates = run_grid(quadrant_object, settings)
    assert max(stub.batch_sizes) <= 20
    assert sum(stub.batch_sizes) == len(GRID) == candidates.points_decoded
