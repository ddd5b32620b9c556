"""Segment-everything's defaults against decoding every grid point, on five kinds of image.

Real weights, real images (``napari_sam.training.image_sets``): one image of each set, the
one where the old background rule failed worst where there is one. The defaults must find
what decoding every grid point finds: AP@0.5 against the labels at most ``AP_MARGIN``
below, and at least ``RECALL`` of the labelled objects that every-point finds (IoU 0.5).
The full leave-one-set-out evaluation is ``benchmarks/eval_everything_sets.py``. The same
rules run in each tile of a tiled plane and in the widget's preview (``EverythingSession``),
tested below.
"""

from dataclasses import replace

import numpy as np
import pytest

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precision, instance_overlap

AP_MARGIN = 0.02  # the bound; single images move by about this between safe rules
RECALL = 0.95  # of every-point's matched objects, the defaults must match this many
CASES = {
    "dsb2018": "DSB2018",
    "bbbc007": "BBBC007 A9 p5d",
    "cells3d": "cells3d[z=40]",
    "scratch_nuclei": "scratch nuclei[z=2]",  # the old defaults found 3 of 71 objects on it
    "scratch_cells": "scratch cells[z=1]",
}


@pytest.fixture(scope="module")
def predictor(default_weights):
    from napari_sam.engine.prediction.predictor import Predictor

    return Predictor("vit_t", device="cpu")


def image_of(set_name: str, image_name: str):
    from napari_sam.training.image_sets import load_image_set

    (item,) = [i for i in load_image_set(set_name).images if i.name == image_name]
    return item


def segment(predictor, item, settings, **tiling):
    segmenter = AutomaticSegmenter(predictor, settings)
    candidates = segmenter.initialise(item.image, item.normalization, **tiling)
    return candidates, segmenter.generate(candidates).labels


def matched_labels(predicted: np.ndarray, truth: np.ndarray) -> set[int]:
    """Ids of the labelled objects matched one-to-one at IoU 0.5."""
    return {true for _, true, _ in instance_overlap(predicted, truth).matches(0.5)}


def check_against_every_point(defaults: np.ndarray, every: np.ndarray, truth: np.ndarray):
    ap_defaults = average_precision(defaults, truth, 0.5)
    ap_every = average_precision(every, truth, 0.5)
    assert ap_defaults >= ap_every - AP_MARGIN, (ap_defaults, ap_every)
    found_by_every = matched_labels(every, truth)
    kept = len(found_by_every & matched_labels(defaults, truth)) / max(1, len(found_by_every))
    assert kept >= RECALL, (kept, len(found_by_every))


@pytest.mark.parametrize("set_name", list(CASES))
def test_defaults_find_what_every_grid_point_finds(predictor, set_name):
    item = image_of(set_name, CASES[set_name])
    every_candidates, every = segment(predictor, item, EverythingSettings().every_point())
    candidates, defaults = segment(predictor, item, EverythingSettings())
    check_against_every_point(defaults, every, item.labels)
    # and at a fraction of the decoding
    assert candidates.points_decoded < every_candidates.points_decoded / 2


def test_the_guarantee_holds_in_each_tile_of_a_tiled_plane(predictor):
    """Three tiles over the small-nuclei frame, each with its own grid and stop rule (a
    16 x 16 grid per tile keeps the every-point run short)."""
    item = image_of("scratch_nuclei", "scratch nuclei[z=2]")
    settings = replace(EverythingSettings(), points_per_side=16)
    tiling = {"tile": 224, "halo": 32}  # one row of three tiles
    every_candidates, every = segment(predictor, item, settings.every_point(), **tiling)
    candidates, defaults = segment(predictor, item, settings, **tiling)
    assert len(candidates.views) == 3
    check_against_every_point(defaults, every, item.labels)
    assert candidates.points_decoded < every_candidates.points_decoded


def test_the_widget_preview_decodes_the_same_points_as_the_engine(predictor):
    """The preview runs EverythingSession.initialise: the same rules, the same labels."""
    from napari_sam.engine.everything.session import EverythingSession

    item = image_of("scratch_nuclei", "scratch nuclei[z=2]")
    session = EverythingSession(predictor, item.image[None])
    preview = session.initialise((0,))
    segmenter = AutomaticSegmenter(predictor, EverythingSettings())
    candidates = segmenter.initialise(item.image, session.normalization)
    assert preview.points_decoded == candidates.points_decoded
    labels = segmenter.generate(candidates).labels
    np.testing.assert_array_equal(session.generate((0,)).labels, labels)
