"""The one parser of ``START:STOP`` z-ranges (``--train-pair``, and ``--z-range`` of embed
and segment-everything)."""

import pytest

from napari_sam.commands.arguments import parse_z_range
from napari_sam.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:5", (0, 5)),
        ("12:13", (12, 13)),
        (" 2 : 9 ", (2, 9)),
    ],
)
def test_start_stop_is_parsed(text, expected):
    assert parse_z_range(text) == expected


@pytest.mark.parametrize("text", ["3-4", "a:b", "1:2:3", "", "5", ":5", "5:", "1.5:3"])
def test_anything_but_two_integers_is_refused(text):
    with pytest.raises(InvalidInputError, match=r"A z-range is START:STOP \(two integers\); got '"):
        parse_z_range(text)


@pytest.mark.parametrize("text", ["5:5", "7:3", "-1:4"])
def test_an_empty_or_negative_range_is_refused(text):
    with pytest.raises(InvalidInputError, match=rf"needs 0 <= START < STOP; got '{text}'"):
        parse_z_range(text)
