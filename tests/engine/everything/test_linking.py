"""Linking 2D sections into 3D objects: exact results on synthetic volumes, streaming, errors."""

import numpy as np
import pytest
import zarr

from napari_sam.engine.everything.linking import (
    LinkingSettings,
    label_sections,
    link_slices,
    track_sections,
)
from napari_sam.errors import InvalidInputError, OperationCancelled

SHAPE = (12, 40, 60)


def disk(center, radius, shape=SHAPE[1:]):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def synthetic_truth() -> np.ndarray:
    """(12, 40, 60) 3D objects: a cylinder with a missed section, a sphere, two bars that
    touch in slice 3, and a one-slice speck."""
    truth = np.zeros(SHAPE, np.int32)
    for z in range(10):
        if z != 4:  # the 2D segmentation missed this section: gap closing must bridge it
            truth[z][disk((10, 10), 6)] = 1
    for z in range(2, 9):  # a sphere of radius 9 around slice 5
        truth[z][disk((28, 12), int(np.sqrt(81 - (z - 5) ** 2)))] = 2
    for z in range(12):
        touch = 1 if z == 3 else 0  # bar 4 moves left to touch bar 3 in slice 3 only
        truth[z, 4:14, 24:32] = 3
        truth[z, 4:14, 33 - touch : 40 - touch] = 4
    truth[11][disk((30, 50), 4)] = 5  # one slice: shorter than min_extent 2
    return truth


def scramble(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per-slice labels with unrelated random 2D ids, as segment-everything produces them."""
    rng = np.random.default_rng(seed)
    slices = np.zeros_like(truth)
    for z, plane in enumerate(truth):
        ids = np.unique(plane[plane > 0])
        for old, new in zip(ids, rng.choice(np.arange(1, 1000), len(ids), replace=False)):
            slices[z][plane == old] = new
    return slices


def assert_same_objects(result: np.ndarray, truth: np.ndarray) -> None:
    """Equal up to a one-to-one relabelling, background to background, ids consecutive."""
    pairs = np.unique(np.stack([result.ravel(), truth.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()
    assert np.unique(result).tolist() == list(range(int(result.max()) + 1))


def test_synthetic_volume_links_exactly():
    truth = synthetic_truth()
    linked = link_slices(scramble(truth))
    expected = np.where(truth == 5, 0, truth)  # the speck is too short
    assert_same_objects(linked.labels, expected)
    assert linked.labels.dtype == np.int32
    assert (linked.objects, linked.removed, linked.sections) == (4, 1, 9 + 7 + 24 + 1)
    assert (linked.links, linked.gap_links) == (7 + 6 + 22, 1)


def test_without_gap_closing_the_missed_section_splits_the_object():
    truth = synthetic_truth()
    linked = link_slices(scramble(truth), LinkingSettings(gap_closing=False, min_extent=1))
    expected = truth.copy()
    expected[5:10][truth[5:10] == 1] = 6  # the cylinder after its gap is another object
    assert_same_objects(linked.labels, expected)
    assert (linked.objects, linked.removed, linked.gap_links) == (6, 0, 0)


def test_a_gap_of_two_slices_is_not_bridged():
    truth = np.zeros((5, 20, 20), np.int32)
    truth[0][disk((10, 10), 5, (20, 20))] = 1
    truth[3:, disk((10, 10), 5, (20, 20))] = 2
    assert_same_objects(link_slices(truth, LinkingSettings(min_extent=1)).labels, truth)


def test_a_fused_section_joins_the_larger_object_and_the_other_bridges_it():
    truth = np.zeros((5, 20, 40), np.int32)
    truth[:, 5:15, 5:20] = 1  # 150 pixels per slice
    truth[:, 5:15, 20:28] = 2  # 80 pixels, touching object 1
    slices = truth.copy()
    slices[2][truth[2] > 0] = 1  # the 2D segmentation fused them in slice 2
    linked = link_slices(slices)
    expected = truth.copy()
    expected[2][truth[2] > 0] = 1  # IoU 150/230 beats 80/230 in the one-to-one matching
    assert_same_objects(linked.labels, expected)
    assert (linked.objects, linked.gap_links) == (2, 1)


def test_iou_threshold_decides_a_shifted_section():
    truth = np.zeros((2, 10, 20), np.int32)
    truth[0, :, 0:10] = 1
    truth[1, :, 6:16] = 1  # IoU 40 / 160 = 0.25
    assert link_slices(truth, LinkingSettings(iou_threshold=0.3, min_extent=1)).objects == 2
    assert link_slices(truth, LinkingSettings(iou_threshold=0.2, min_extent=1)).objects == 1


def test_min_extent_counts_slices_first_to_last():
    truth = synthetic_truth()
    linked = link_slices(scramble(truth), LinkingSettings(min_extent=10))
    expected = np.where(np.isin(truth, [1, 3, 4]), truth, 0)  # spans 10, 12, 12 slices
    assert_same_objects(linked.labels, expected)
    assert (linked.objects, linked.removed) == (3, 2)


class CountingSlices:
    """A (z, rows, cols) array that records which slices are read."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, z):
        self.reads.append(z)
        return self.data[z]


def test_streams_zarr_to_zarr_reading_each_slice_once_per_pass(tmp_path):
    truth = synthetic_truth()
    source = CountingSlices(scramble(truth, seed=3))
    out = zarr.create_array(
        tmp_path / "linked.zarr", shape=SHAPE, chunks=(1,) + SHAPE[1:], dtype="int32"
    )
    done = []
    linked = link_slices(source, out=out, progress=lambda d, t: done.append((d, t)))
    assert linked.labels is out
    assert source.reads == list(range(12)) * 2
    assert done[-1] == (24, 24) and len(done) == 24
    np.testing.assert_array_equal(np.asarray(out[...]), link_slices(scramble(truth, seed=3)).labels)


def test_label_sections_numbers_every_section_apart():
    truth = synthetic_truth()
    result = label_sections(scramble(truth)).labels
    assert result.max() == 9 + 7 + 24 + 1
    expected = truth + np.arange(12)[:, None, None] * 10 * (truth > 0)  # each section its own id
    assert_same_objects(result, expected)


def test_tracks_hold_one_section_per_slice():
    plan = track_sections(scramble(synthetic_truth()))
    for tracks in plan.tracks:
        assert len(np.unique(tracks)) == len(tracks)
    assert plan.first.tolist() == sorted(plan.first.tolist())  # numbered by first appearance


def test_errors():
    labels = np.zeros((3, 4, 4), np.int32)
    with pytest.raises(
        InvalidInputError, match=r"\(z, rows, cols\) integer label array; got shape \(4, 4\)"
    ):
        link_slices(labels[0])
    with pytest.raises(InvalidInputError, match=r"integer label array.*float"):
        link_slices(labels.astype(float))
    with pytest.raises(InvalidInputError, match="slice 1 holds the negative label -2"):
        link_slices(np.stack([labels[0], labels[0] - 2, labels[0]]))
    with pytest.raises(
        InvalidInputError, match=r"out has shape \(2, 4, 4\); the slices have \(3, 4, 4\)"
    ):
        link_slices(labels, out=np.zeros((2, 4, 4), np.int32))
    with pytest.raises(InvalidInputError, match=r"iou_threshold must be in \(0, 1\]; got 0"):
        LinkingSettings(iou_threshold=0)
    with pytest.raises(
        InvalidInputError, match="min_extent must be a whole number of slices >= 1; got 0"
    ):
        LinkingSettings(min_extent=0)
    with pytest.raises(OperationCancelled, match="Linking slices was cancelled"):
        link_slices(labels, should_stop=lambda: True)


def test_settings_round_trip():
    settings = LinkingSettings(iou_threshold=0.4, gap_closing=False, min_extent=3)
    assert LinkingSettings.from_dict(settings.to_dict()) == settings


def test_a_stack_shorter_than_min_extent_keeps_its_objects():
    one = np.zeros((1, 40, 40), np.int32)
    one[0, 5:10, 5:10], one[0, 20:30, 20:30] = 1, 2
    assert link_slices(one, LinkingSettings(min_extent=2)).objects == 2
    two = np.concatenate([one, one])
    assert link_slices(two, LinkingSettings(min_extent=5)).objects == 2
    three = np.concatenate([two, np.zeros_like(one)])
    assert link_slices(three, LinkingSettings(min_extent=3, gap_closing=False)).objects == 0
