"""Growing one mask across tiles: a large object is followed whole, a neighbour never annexed.

The decoder is a stand-in that answers like SAM would on synthetic labels: the object under
the positive points it is given, or, on a tile told to mislead, the neighbouring object.
"""

import numpy as np
import pytest

from napari_sam.engine.prediction.results import Prediction
from napari_sam.engine.tiling.grid import tile_grid
from napari_sam.engine.tiling.merging import grow_across_tiles, inner_points

SHAPE = (300, 400)
TILES = tile_grid(SHAPE, 100, 20)  # 3 x 4 tiles, windows up to 140 pixels
LABELS = np.zeros(SHAPE, int)
LABELS[20:280, 20:190] = 1  # the large object: 260 x 170 pixels over six tiles
LABELS[20:280, 190:330] = 2  # its neighbour, touching it along column 190
LARGE, NEIGHBOUR = LABELS == 1, LABELS == 2
START = TILES[0].window  # the object was first settled on tile (0, 0)'s window


class StandInDecoder:
    """``decode(window, points, labels, box, extra)`` answering from LABELS, with a record.

    Returns the object under the positive ``extra`` points, or the neighbour on the window
    of the tile ``misleading``.
    """

    def __init__(self, misleading=None):
        self.misleading = None if misleading is None else misleading.window
        self.calls = []

    def __call__(self, window, points, labels, box, extra=None):
        self.calls.append(
            {"window": window, "points": points, "labels": labels, "box": box, "extra": extra}
        )
        inner = extra[0].astype(int)
        under = np.bincount(LABELS[inner[:, 0], inner[:, 1]], minlength=3)[1:]
        chosen = 2 if window == self.misleading else 1 + int(np.argmax(under))
        mask = LABELS[window] == chosen
        scores, logits = np.array([0.9], np.float32), np.zeros((1, 256, 256), np.float32)
        return Prediction(mask[None], scores, logits)


def grow(decode, points=None, labels=None, box=None):
    """The large object as settled on START, grown across the tiles."""
    mask = np.zeros(SHAPE, bool)
    mask[START] = LARGE[START]
    explored = np.zeros(SHAPE, bool)
    explored[START] = True
    return grow_across_tiles(TILES, decode, mask, explored, points, labels, box)


def test_an_object_across_six_tiles_is_grown_whole():
    decode = StandInDecoder()
    mask = grow(decode)
    np.testing.assert_array_equal(mask, LARGE)
    for call in decode.calls:  # each tile is prompted on the object's known part only
        inner = call["extra"][0].astype(int)
        assert len(inner) and LARGE[inner[:, 0], inner[:, 1]].all()


def test_the_users_negative_points_and_box_reach_every_tile():
    decode = StandInDecoder()
    points = np.array([[150.0, 100.0], [150.0, 250.0]])  # on the object, on the neighbour
    box = np.array([10.0, 10.0, 290.0, 195.0])
    grow(decode, points, np.array([1, 0]), box)
    assert decode.calls
    for call in decode.calls:
        np.testing.assert_array_equal(call["points"], points[1:])
        np.testing.assert_array_equal(call["labels"], [0])
        np.testing.assert_array_equal(call["box"], box)


# the tiles of the second column: the object continues into them and they show the neighbour
@pytest.mark.parametrize(
    "misleading", [t for t in TILES if t.index[1] == 1], ids=lambda t: f"tile{t.index}"
)
def test_a_tile_that_returns_the_neighbour_is_not_merged(misleading):
    decode = StandInDecoder(misleading)
    mask = grow(decode)
    assert misleading.window in [call["window"] for call in decode.calls]  # it was asked
    assert not (mask & NEIGHBOUR).any()
    assert not (mask & ~LARGE).any()
    lost = LARGE & ~mask  # only what no other decoded window showed
    assert lost.any() and not lost[~_window_mask(misleading.window)].any()


def _window_mask(window):
    inside = np.zeros(SHAPE, bool)
    inside[window] = True
    return inside


def test_inner_points_lie_deep_inside_and_apart():
    bar = np.zeros((40, 120), bool)
    bar[10:31, 5:115] = True  # 21 rows: the centre row is 11 pixels from the edges
    points = inner_points(bar, 3)
    assert points.shape == (3, 2) and points.dtype == float
    rows, cols = points.astype(int).T
    assert bar[rows, cols].all()
    assert (rows == 20).all()  # on the centre line, the deepest pixels
    gaps = np.abs(cols[:, None] - cols[None, :])[np.triu_indices(3, 1)]
    assert gaps.min() > 2 * 11  # spread: no two within twice their depth


def test_inner_points_treat_the_array_border_as_an_edge():
    part = np.ones((21, 21), bool)
    ((row, col),) = inner_points(part, 1)
    assert (row, col) == (10, 10)


def test_inner_points_returns_fewer_when_the_part_has_no_room():
    small = np.zeros((20, 20), bool)
    small[8:11, 8:11] = True
    np.testing.assert_array_equal(inner_points(small, 3), [[9.0, 9.0]])
