import numpy as np
import pytest
import tifffile

from napari_sam.errors import InvalidInputError
from napari_sam.training.datasets import (
    images_from_arrays,
    images_from_folder,
    make_labelled_image,
    split_images,
)


def test_volume_planes_share_normalisation_and_group_in_z_blocks(discs):
    disc_labels, disc_image = discs
    labels = np.stack([disc_labels()] * 12)
    labels[0] = 0  # an empty plane is skipped
    volume = np.stack([disc_image(plane, z) for z, plane in enumerate(labels)])
    planes = images_from_arrays(volume, labels, name="vol", z_range=(0, 12))
    assert [p.name for p in planes][:2] == ["vol[z=1]", "vol[z=2]"] and len(planes) == 11
    assert len({p.normalization for p in planes}) == 1
    assert [p.group for p in planes] == ["vol[z0]"] * 4 + ["vol[z5]"] * 5 + ["vol[z10]"] * 2


def test_split_holds_out_whole_groups(discs):
    disc_labels, disc_image = discs
    labels = np.stack([disc_labels()] * 20)
    volume = np.stack([disc_image(plane, z) for z, plane in enumerate(labels)])
    planes = images_from_arrays(volume, labels, name="vol")
    kept, held = split_images(planes, 0.25, seed=3)
    assert len(held) == 5 and len(kept) == 15
    assert not {p.group for p in kept} & {p.group for p in held}
    zs = sorted(int(p.name.split("=")[1][:-1]) for p in held)
    assert zs == list(range(zs[0], zs[0] + 5))  # one contiguous z-range
    with pytest.raises(InvalidInputError, match="one group"):
        split_images(planes[:3], 0.5)
    with pytest.raises(InvalidInputError, match=r"fraction must be in \(0, 1\)"):
        split_images(planes, 1.0)


def test_bad_pairs_raise_clear_errors(discs):
    disc_labels, disc_image = discs
    labels = disc_labels()
    image = disc_image(labels)
    with pytest.raises(InvalidInputError, match="labels must have the image's"):
        make_labelled_image(image, labels[:50], "a")
    with pytest.raises(InvalidInputError, match="labels must be integers"):
        make_labelled_image(image, labels.astype(float), "b")
    with pytest.raises(InvalidInputError, match="hold no object"):
        make_labelled_image(image, np.zeros_like(labels), "c")
    with pytest.raises(InvalidInputError, match="z_range needs a 3D pair"):
        images_from_arrays(image, labels, z_range=(0, 1))
    with pytest.raises(InvalidInputError, match="does not fit planes"):
        images_from_arrays(np.stack([image] * 3), np.stack([labels] * 3), z_range=(2, 9))


def test_folder_pairs_images_with_their_labels(tmp_path, discs):
    disc_labels, disc_image = discs
    for index in range(2):
        labels = disc_labels(centres=((30, 30), (60, 60 + 10 * index)))
        tifffile.imwrite(tmp_path / f"img{index}.tif", disc_image(labels, index))
        tifffile.imwrite(tmp_path / f"img{index}_labels.tif", labels)
    images = images_from_folder(tmp_path)
    assert [i.name for i in images] == ["img0", "img1"]
    assert [len(i.object_ids()) for i in images] == [2, 2]
    tifffile.imwrite(tmp_path / "lonely.tif", disc_image(disc_labels()))
    with pytest.raises(InvalidInputError, match=r"no labels file.*lonely.tif"):
        images_from_folder(tmp_path)
    with pytest.raises(InvalidInputError, match="No image matches"):
        images_from_folder(tmp_path, pattern="*.png")
