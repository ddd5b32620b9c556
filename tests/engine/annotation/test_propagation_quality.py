"""Propagation with the real weights on the cells3d nuclei and the tracked time-lapse.

One box (or click) per nucleus on its middle slice, carried through the 60-slice volume
with the default settings, must reach the issue's target of mean 3D IoU 0.80 against the
labels (the evaluation, ``benchmarks/eval_propagation.py``, measures 0.83 for boxes).
The stop rules are checked to only cut an open run short, batching to change nothing,
the two-ended join and corrections to keep what they promise, and following a nucleus
through time to keep the track.
"""

import numpy as np
import pytest

from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.engine.annotation.session import AnnotationSession, bounding_box

BOX_TARGET = 0.80  # the target for one box per nucleus (measured 0.83)
FOLLOWED = 0.82  # share of each track's frames followed through time (measured 0.85)


def iou_3d(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.count_nonzero(found & truth) / np.count_nonzero(found | truth))


@pytest.fixture(scope="module")
def cells3d(cells3d_cache):
    from napari_sam.batch.embedding import open_cached_session

    path, volume, labels = cells3d_cache
    return open_cached_session(volume, path, capacity=64), labels


def middle(labels: np.ndarray, label: int, share: float = 0.5) -> int:
    slices = np.nonzero((labels == label).any(axis=(1, 2)))[0]
    return int(slices[int(share * (len(slices) - 1))])


def box_anchor(session, labels, label, z):
    item = session.preview((z,), boxes=bounding_box(labels[z] == label)[None]).objects[0]
    return {z: (item.mask, item.prediction.logits[item.chosen])}


def scores(session, labels, found) -> list[float]:
    return [
        iou_3d(o.volume(len(labels), labels.shape[1:]), labels == k)
        for k, o in zip(range(1, len(found.objects) + 1), found.objects)
    ]


def test_one_box_per_nucleus_reaches_the_target(cells3d):
    session, labels = cells3d
    ids = range(1, int(labels.max()) + 1)
    anchors = [box_anchor(session, labels, k, middle(labels, k)) for k in ids]
    found = session.propagate((0,), anchors)
    assert np.mean(scores(session, labels, found)) >= BOX_TARGET


def test_a_stop_rule_only_cuts_the_open_run_short(cells3d):
    session, labels = cells3d
    anchors = [box_anchor(session, labels, k, middle(labels, k)) for k in (2, 15)]
    open_run = session.propagate(
        (0,), anchors, settings=PropagationSettings(min_iou=0.0, min_score=0.0, max_growth=np.inf)
    )
    ruled = session.propagate((0,), anchors)
    for wide, cut in zip(open_run.objects, ruled.objects):
        assert set(cut.slices) < set(wide.slices)
        for index, footprint in cut.slices.items():
            np.testing.assert_array_equal(footprint.crop, wide.slices[index].crop)


def test_batched_objects_equal_one_by_one(cells3d):
    session, labels = cells3d
    anchors = [box_anchor(session, labels, k, middle(labels, k)) for k in (3, 11)]
    together = session.propagate((0,), anchors)
    for anchor, batched in zip(anchors, together.objects):
        (alone,) = session.propagate((0,), [anchor]).objects
        assert batched.extent == alone.extent
        for index, footprint in alone.slices.items():
            a = footprint.paste(labels.shape[1:])
            b = batched.slices[index].paste(labels.shape[1:])
            assert np.count_nonzero(a != b) <= 0.01 * max(1, a.sum())


def test_two_prompted_slices_join_in_the_middle(cells3d):
    session, labels = cells3d
    low, high = middle(labels, 5, 0.25), middle(labels, 5, 0.75)
    anchors = {**box_anchor(session, labels, 5, low), **box_anchor(session, labels, 5, high)}
    (found,) = session.propagate((0,), [anchors]).objects
    assert found.anchors == (low, high)
    assert all(index in found.slices for index in range(low, high + 1))
    split = (low + high) // 2
    assert {found.steps[i].source for i in range(low + 1, split + 1)} == {low}
    assert {found.steps[i].source for i in range(split + 1, high)} == {high}
    truth = labels == 5
    assert iou_3d(found.volume(len(labels), labels.shape[1:]), truth) >= BOX_TARGET


def test_a_correction_changes_only_the_slices_beyond_it(cells3d):
    session, labels = cells3d
    z = middle(labels, 9)
    found = session.propagate((0,), [box_anchor(session, labels, 9, z)])
    first, last = found.objects[0].extent
    corrected = z + (last - z) // 2
    mask = box_anchor(session, labels, 9, corrected)[corrected][0]
    fixed = session.correct(found, 0, corrected, mask)
    before, after = found.objects[0], fixed.objects[0]
    assert after.anchors == (z, corrected)
    np.testing.assert_array_equal(after.slices[corrected].paste(labels.shape[1:]), mask)
    for index in range(first, corrected):
        np.testing.assert_array_equal(after.slices[index].crop, before.slices[index].crop)


def test_nuclei_are_followed_through_time(default_weights):
    """The evaluation's protocol: one click per track on its middle frame, all 16 tracks."""
    from napari_sam.training.image_sets import load_timelapse_tracks

    frames, tracks = load_timelapse_tracks()
    session = AnnotationSession("vit_t", frames, capacity=32)
    ids = np.unique(tracks[:, 0])
    anchors = []
    for track in ids:
        points = tracks[tracks[:, 0] == track]
        t, row, col = points[len(points) // 2, 1:]
        item = session.preview((int(t),), points=[(row, col)], mode="per_point").objects[0]
        anchors.append({int(t): (item.mask, item.prediction.logits[item.chosen])})
    found = session.propagate((0,), anchors)
    shares = []
    for track, item in zip(ids, found.objects):
        points = tracks[tracks[:, 0] == track]
        others = tracks[tracks[:, 0] != track]
        hits = 0
        for t, row, col in points[:, 1:].astype(int):
            if t not in item.slices:
                continue
            mask = item.slices[t].paste(frames.shape[1:])
            rivals = others[others[:, 1] == t][:, 2:].astype(int)
            near = mask[max(0, row - 2) : row + 3, max(0, col - 2) : col + 3].any()
            hits += int(near and not mask[rivals[:, 0], rivals[:, 1]].any())
        outside = len(set(item.slices) - set(points[:, 1].astype(int)))
        shares.append(hits / (len(points) + outside))
    assert np.mean(shares) >= FOLLOWED, np.round(shares, 2)
