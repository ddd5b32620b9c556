"""The evaluation image sets: what each holds, and the scratch assay read without a codec."""

import numpy as np
import pytest

from napari_sam.training.image_sets import (
    IMAGE_SET_NAMES,
    SCRATCH_SHAPE,
    load_image_set,
    load_scratch_assay,
)


def test_the_scratch_assay_has_two_image_channels_and_two_label_channels():
    channels = load_scratch_assay()
    assert channels.shape == SCRATCH_SHAPE
    nuclei = [len(np.unique(frame)) - 1 for frame in channels[2]]
    cells = [len(np.unique(frame)) - 1 for frame in channels[3]]
    assert (nuclei[0], nuclei[-1], cells[0], cells[-1]) == (59, 83, 66, 103)
    assert channels[0].min() > 0 and channels[1].min() > 0  # camera offsets, not labels


@pytest.mark.parametrize("name", IMAGE_SET_NAMES)
def test_each_set_loads_labelled_planes(name):
    image_set = load_image_set(name)
    assert image_set.name == name and image_set.images
    for item in image_set.images:
        assert item.image.shape[:2] == item.labels.shape and item.labels.max() > 0
    if name.startswith("scratch"):  # one normalisation for the whole time-lapse
        assert len({item.normalization for item in image_set.images}) == 1


def test_an_unknown_set_names_the_known_ones():
    with pytest.raises(ValueError, match="scratch_nuclei"):
        load_image_set("tissuenet")
