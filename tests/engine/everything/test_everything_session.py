"""EverythingSession on stacks with the tiny random SAM: plane keys, kept decodings, linking."""

from dataclasses import replace

import numpy as np
import pytest

from napari_sam.engine.everything.session import EverythingSession
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError

LOOSE = EverythingSettings(
    points_per_side=3,
    points_per_batch=9,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    keep_iou_floor=-10.0,
    keep_stability_floor=0.0,
    skip_covered=False,
    stop_after_empty=None,
    drop_background=False,
)


@pytest.fixture(scope="module")
def session(tiny_model, image_300x500):
    stack = np.stack([image_300x500[:, :160], image_300x500[:, 160:320]])  # two different planes
    return EverythingSession(Predictor(tiny_model), stack, settings=LOOSE)


def test_planes_are_decoded_once_and_rethresholded(session):
    with pytest.raises(InvalidInputError, match=r"run initialise\(\(1,\)\) first"):
        session.generate((1,))
    session.initialise((1,))
    assert session.has_candidates((1,)) and not session.has_candidates((0,))
    labels = session.generate((1,)).labels
    assert labels.shape == (300, 160) and labels.max() > 0
    with pytest.raises(InvalidInputError, match="does not exist"):
        session.initialise((2,))


def test_stack_ids_are_unique_across_unlinked_planes(session):
    result = session.segment_stack(link=False)
    first, second = result.labels
    assert result.planes == 2 and result.labels.shape == (2, 300, 160)
    shared = set(np.unique(first)[1:]) & set(np.unique(second)[1:])
    assert not shared
    assert result.objects == len(np.unique(first)) - 1 + len(np.unique(second)) - 1


def test_time_points_link_separately(tiny_model, image_300x500):
    plane = image_300x500[:, :160]
    data = np.stack([np.stack([plane, plane])] * 2)  # (t, z, rows, cols), all planes equal
    session = EverythingSession(Predictor(tiny_model), data, settings=LOOSE)
    labels = session.segment_stack().labels
    # Each object spans both z planes of its time point; time points get separate ids.
    assert np.array_equal(labels[0, 0], labels[0, 1])
    assert not set(np.unique(labels[0])[1:]) & set(np.unique(labels[1])[1:])
    assert (labels[0] > 0).sum() == (labels[1] > 0).sum() > 0


def test_tiles_come_from_the_embedding_cache(tiny_model, make_image, tmp_path):
    from napari_sam.batch.embedding import open_cached_session

    image = make_image((600, 640), seed=3)
    results, encodes = [], []
    for _ in range(2):  # the second session finds every tile in the cache
        cached = open_cached_session(
            image, tmp_path / "cache.zarr", model=tiny_model, tile=256, halo=32
        )
        calls = []
        encode = cached.predictor.encode
        cached.predictor.encode = lambda *a, calls=calls, encode=encode, **k: (
            calls.append(1) or encode(*a, **k)
        )
        everything = EverythingSession.from_session(cached, replace(LOOSE, points_per_side=1))
        assert (everything.tile, everything.halo) == (256, 32)
        everything.initialise(())
        results.append(everything.generate(()).labels)
        encodes.append(len(calls))
    assert encodes == [9, 0]  # 3 x 3 tiles, then none
    assert np.array_equal(results[0], results[1]) and results[0].max() > 0
