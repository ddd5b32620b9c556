"""Targets, seeds and watershed instances on drawn shapes: the head's maps round trip.

The maps that training asks the head to predict (training/head_targets.py), given back to
the seed finder (engine/instances/seeds.py) as if the head had predicted them perfectly,
must give back the drawn objects: two touching discs stay two objects.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.instances.seeds import (
    HeadMaps,
    SeedSettings,
    find_seeds,
    grow_instances,
    seed_points,
)
from napari_sam.engine.metrics import average_precision
from napari_sam.errors import InvalidInputError
from napari_sam.training.head_targets import distance_maps, head_targets


def discs(shape=(120, 160), centres=((40, 50), (40, 72), (90, 120)), radius=12) -> np.ndarray:
    """Labels of discs; the first two touch."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


def test_distance_maps_are_normalised_per_object():
    labels = discs()
    maps = distance_maps(labels * 7)  # ids need not be 1..n
    foreground, centre, boundary = maps
    assert np.array_equal(foreground > 0, labels > 0)
    assert (centre[labels == 0] == 1).all() and (boundary[labels == 0] == 0).all()
    # Deepest pixel of the lone disc: its centre; boundary distance 1 there, centre 0.
    assert boundary[90, 120] == pytest.approx(1.0)
    assert centre[90, 120] == pytest.approx(0.0)
    inside = labels > 0
    assert centre[inside].max() <= 1 and boundary[inside].min() > 0
    # The rim of the lone disc has the smallest boundary distance of that disc.
    rim = boundary[90, 120 + 12]
    assert rim == pytest.approx(boundary[labels == 3].min())


def test_targets_sample_the_low_res_grid_inside_the_image():
    labels = discs()
    # A (120, 160) image fills 768 x 1024 of the encoder frame: 192 x 256 low-res cells.
    targets = head_targets(labels, (768, 1024), 1024)
    assert targets.maps.shape == (3, 256, 256)
    assert targets.valid[:192].all() and not targets.valid[192:].any()
    assert targets.objects == 3
    # Cell (r, c) covers image pixels around ((r + 0.5) * 4 / 6.4 - 0.5): the disc at
    # (90, 120) sits at cells near (144, 192).
    assert targets.maps[0, 144, 192] == 1 and targets.maps[2, 144, 192] > 0.9
    assert targets.maps[0, 5, 5] == 0 and targets.maps[1, 5, 5] == 1
    # Padding is background, outside the loss.
    assert (targets.maps[0, 200:] == 0).all()


def perfect_maps(labels: np.ndarray) -> HeadMaps:
    foreground, centre, boundary = distance_maps(labels)
    return HeadMaps(foreground, centre, boundary)


def test_perfect_maps_give_back_the_objects_and_split_touching_ones():
    labels = discs()
    maps = perfect_maps(labels)
    settings = SeedSettings()
    seeds = find_seeds(maps, settings)
    assert seeds.max() == 3
    instances = grow_instances(maps, seeds, settings)
    assert instances.max() == 3
    assert average_precision(instances, labels, 0.9) == 1.0
    points = seed_points(maps, seeds)
    # One prompt per object, at its centre (the first disc, cut by its neighbour, has its
    # deepest pixel one step away from it).
    found = points[np.argsort(points[:, 1])]
    assert np.abs(found - [(40, 50), (40, 72), (90, 120)]).max() <= 1.0


def test_small_seeds_and_instances_are_dropped():
    labels = discs(centres=((40, 50), (90, 120)), radius=12)
    labels[10:12, 10:12] = 9  # a 4-pixel speck
    maps = perfect_maps(labels)
    instances = grow_instances(maps, find_seeds(maps, SeedSettings()), SeedSettings(min_area=10))
    assert instances.max() == 2
    assert not instances[10:12, 10:12].any()


def test_no_seed_gives_empty_labels_and_no_prompts():
    maps = perfect_maps(np.zeros((50, 60), np.int32))
    seeds = find_seeds(maps, SeedSettings())
    assert seeds.max() == 0
    assert grow_instances(maps, seeds, SeedSettings()).max() == 0
    assert seed_points(maps, seeds).shape == (0, 2)


def test_bad_seed_settings_are_refused_with_their_names():
    with pytest.raises(InvalidInputError, match=r"foreground=1\.5"):
        SeedSettings(foreground=1.5)
    with pytest.raises(InvalidInputError, match="min_area=-1"):
        SeedSettings(min_area=-1)
