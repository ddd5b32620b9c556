"""Training an instance head: dihedral variants, the fit, distillation and training planes.

Everything runs on the tiny random SAM with a head of width 8 and a handful of steps, so
what is checked is the plumbing (variants, cards, progress, cached embeddings, masking,
cancelling, errors), not the head's quality (tests/engine/instances/test_head_quality.py).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.prediction.planes import plane_layout
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import compute_normalization
from napari_sam.errors import InvalidInputError, OperationCancelled
from napari_sam.training import head_distillation, head_training
from napari_sam.training.datasets import LabelledImage, images_from_arrays
from napari_sam.training.embeddings import EmbeddingStore
from napari_sam.training.head_data import labelled_planes
from napari_sam.training.head_distillation import distil_head, drop_containers, spread_planes
from napari_sam.training.head_settings import HeadTrainingSettings
from napari_sam.training.head_targets import head_targets
from napari_sam.training.head_training import (
    VARIANTS,
    encode_examples,
    fit_network,
    head_loss,
    train_head,
    transform,
)

TINY = HeadTrainingSettings(steps=4, batch_size=1, width=8, augment=2)

# The variants as numpy names them: (transpose, flip rows, flip cols) applied in that order.
NUMPY_EQUIVALENTS = {
    (False, False, False): lambda a: a,
    (False, False, True): np.fliplr,
    (False, True, False): np.flipud,
    (True, False, True): lambda a: np.rot90(a, -1),  # a quarter turn clockwise
    (True, False, False): lambda a: np.swapaxes(a, 0, 1),
    (False, True, True): lambda a: np.rot90(a, 2),
    (True, True, False): lambda a: np.rot90(a, 1),  # a quarter turn anticlockwise
    (True, True, True): lambda a: np.rot90(a, 2).swapaxes(0, 1),  # the anti-transpose
}


@pytest.fixture(scope="module")
def two_images(discs):
    """Two small labelled images: 2 and 3 discs."""
    disc_labels, disc_image = discs
    first = disc_labels((64, 64), centres=((18, 18), (44, 46)), radius=9)
    second = disc_labels((64, 64), centres=((16, 40), (40, 16), (46, 48)), radius=8)
    return images_from_arrays(disc_image(first, 0), first, name="a") + images_from_arrays(
        disc_image(second, 1), second, name="b"
    )


def test_the_eight_variants_are_the_dihedral_group():
    assert len(VARIANTS) == len(set(VARIANTS)) == 8
    assert set(VARIANTS) == set(NUMPY_EQUIVALENTS)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (5, 7)).astype(np.uint16)  # not square: transposes show
    labels = rng.integers(0, 4, (5, 7)).astype(np.int32)
    normalization = compute_normalization(image)
    original = LabelledImage(image, labels, "im", normalization, "group")
    seen = set()
    for variant in VARIANTS:
        made = transform(original, variant)
        expected = NUMPY_EQUIVALENTS[variant]
        np.testing.assert_array_equal(made.image, expected(image))
        np.testing.assert_array_equal(made.labels, expected(labels))
        assert made.image.flags.c_contiguous and made.labels.flags.c_contiguous
        assert made.normalization is normalization and made.group == "group"
        letters = "".join(letter for letter, on in zip("TVH", variant) if on)
        assert made.name == "im" + letters
        seen.add((made.image.tobytes(), made.image.shape, made.key))
    assert len(seen) == 8  # eight distinct images, each its own embedding key
    assert transform(original, VARIANTS[0]) is original


def test_variants_keep_the_channels_last():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    labels = np.zeros((4, 6), np.int32)
    labels[1, 2] = 1
    made = transform(
        LabelledImage(image, labels, "rgb", compute_normalization(image), "rgb"), VARIANTS[3]
    )
    assert made.image.shape == (6, 4, 3) and made.labels.shape == (6, 4)
    for channel in range(3):
        np.testing.assert_array_equal(made.image[..., channel], np.rot90(image[..., channel], -1))
    assert made.labels[2, 4 - 1 - 1] == 1  # pixel (1, 2) turned clockwise: (2, rows - 1 - 1)


def test_train_head_fills_the_card_and_reports_progress(tiny_model, two_images):
    events = []
    store = EmbeddingStore()
    head = train_head(
        tiny_model,
        two_images,
        TINY,
        store=store,
        progress=lambda stage, done, total: events.append((stage, done, total)),
    )
    card = head.card
    assert card.encoder == tiny_model.model_id == "random-seed0"
    assert (card.mode, card.planes, card.objects, card.width) == ("labels", 2, 5, 8)
    assert card.trained_on == "a, b" and card.embedding_channels == 256
    assert card.quality == {} and card.seconds >= 0
    encoding = [e for e in events if e[0] == "encoding"]
    training = [e for e in events if e[0] == "training"]
    assert encoding == [("encoding", i, 4) for i in range(1, 5)]  # 2 images x 2 variants
    assert training == [("training", i, 4) for i in range(1, 5)]
    assert events[-1] == ("training", TINY.steps, TINY.steps)
    assert events.index(training[0]) > events.index(encoding[-1])
    assert store.encoded == 4
    assert not head.network.training and head.network.out.out_channels == 3
    head.check_encoder(tiny_model.model_id)

    again = train_head(tiny_model, two_images, TINY, store=store, trained_on="my labels")
    assert store.encoded == 4  # every variant came from the store
    assert again.card.trained_on == "my labels"
    # Same seed, same embeddings: the same weights.
    for name, tensor in head.network.state_dict().items():
        assert torch.equal(tensor, again.network.state_dict()[name]), name


def test_the_loss_falls_on_a_fixed_example(monkeypatch, tiny_model, two_images):
    examples = encode_examples(tiny_model, two_images[:1], 1, EmbeddingStore(), None, None)
    losses = []

    def recording(logits, maps, valid):
        loss = head_loss(logits, maps, valid)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(head_training, "head_loss", recording)
    settings = HeadTrainingSettings(steps=60, batch_size=1, width=8, augment=1, learning_rate=1e-2)
    network = fit_network(examples, settings)
    assert len(losses) == 60
    assert losses[-1] < 0.8 * losses[0], losses[::10]
    assert not network.training


def test_training_can_be_cancelled(tiny_model, two_images):
    store = EmbeddingStore()
    with pytest.raises(OperationCancelled, match="instance head was cancelled"):
        train_head(tiny_model, two_images, TINY, store=store, should_stop=lambda: True)
    assert store.encoded == 0
    polls = []

    def after_encoding():  # 4 polls while encoding, then the first training step stops
        polls.append(1)
        return len(polls) > 4

    with pytest.raises(OperationCancelled):
        train_head(tiny_model, two_images, TINY, store=store, should_stop=after_encoding)
    assert store.encoded == 4 and len(polls) == 5


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"augment": 9}, "augment=9"),
        ({"augment": 0}, "augment=0"),
        ({"steps": 0}, "steps=0"),
        ({"width": 6}, "width=6"),
        ({"width": 10}, "width=10"),  # halved twice: a multiple of 4
        ({"batch_size": 0}, "batch_size=0"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ],
)
def test_bad_settings_name_the_field(values, named):
    with pytest.raises(InvalidInputError, match=f"Invalid head training settings: {named}"):
        HeadTrainingSettings(**values)


def test_no_images_is_an_error(tiny_model):
    with pytest.raises(InvalidInputError, match="needs at least one labelled image"):
        train_head(tiny_model, [], TINY)


def test_cells_outside_the_image_do_not_count():
    labels = np.zeros((40, 80), np.int32)
    labels[10:20, 10:30] = 1
    labels[25:35, 50:70] = 2
    targets = head_targets(labels, (512, 1024), 1024)  # half the frame: rows 128.. padding
    maps = torch.from_numpy(targets.maps)[None]
    valid = torch.from_numpy(targets.valid)[None]
    assert valid[0, :128].all() and not valid[0, 128:].any()
    logits = torch.randn((1, 3, 256, 256), generator=torch.Generator().manual_seed(0))
    loss = head_loss(logits, maps, valid)
    changed = logits.clone()
    changed[:, :, 128:] = torch.randn(changed[:, :, 128:].shape) * 50
    assert torch.equal(head_loss(changed, maps, valid), loss)
    inside = logits.clone()
    inside[:, :, :4] += 5.0  # cells inside the image do count
    assert not torch.equal(head_loss(inside, maps, valid), loss)
    # Predicting the targets themselves (as logits of sure probabilities) beats noise.
    sure = torch.logit(maps.clamp(1e-4, 1 - 1e-4))
    assert head_loss(sure, maps, valid) < 0.1 < loss


@pytest.mark.parametrize(
    ("count", "planes", "expected"),
    [
        (60, 5, [6, 18, 30, 42, 54]),
        (3, 5, [0, 1, 2]),  # more planes asked for than the stack has: all of them
        (10, 3, [1, 5, 8]),
        (1, 1, [0]),
        (4, 2, [1, 3]),
    ],
)
def test_spread_planes(count, planes, expected):
    assert spread_planes(count, planes) == expected


@pytest.mark.parametrize(("count", "planes"), [(0, 3), (5, 0), (-1, 2)])
def test_spread_planes_refuses_nothing_to_pick(count, planes):
    with pytest.raises(InvalidInputError, match=f"Cannot pick {planes} planes from a stack of"):
        spread_planes(count, planes)


class FakeTeacher:
    """Stands in for AutomaticSegmenter: known labels per plane, no decoding."""

    made: ClassVar[list] = []
    results: ClassVar[dict] = {}

    def __init__(self, predictor, settings):
        FakeTeacher.made.append(settings)

    def initialise(self, plane, normalization, should_stop=None):
        return int(plane[0, 0])  # the plane's index, written into its first pixel

    def generate(self, candidates):
        return type("Result", (), {"labels": FakeTeacher.results[candidates]})


@pytest.fixture
def fake_teacher(monkeypatch):
    monkeypatch.setattr(head_distillation, "AutomaticSegmenter", FakeTeacher)
    FakeTeacher.made, FakeTeacher.results = [], {}
    return FakeTeacher


def planes_for_teacher(make_image, count, shape=(64, 64)):
    planes = []
    for index in range(count):
        plane = make_image(shape, seed=index)
        plane[0, 0] = index
        planes.append((f"z={index}", plane))
    return planes


def test_distil_head_learns_from_the_teacher(fake_teacher, tiny_model, make_image):
    planes = planes_for_teacher(make_image, 3)
    rows, cols = np.mgrid[:64, :64]
    first = ((rows - 20) ** 2 + (cols - 20) ** 2 < 64).astype(np.int32)
    first[40:50, 40:52] = 2
    third = ((rows - 32) ** 2 + (cols - 44) ** 2 < 81).astype(np.int32) * 5
    fake_teacher.results = {0: first, 1: np.zeros((64, 64), np.int32), 2: third}
    events = []
    loose = EverythingSettings(points_per_side=4, skip_distance=3.0)
    head, labels = distil_head(
        Predictor(tiny_model),
        planes,
        compute_normalization(planes[0][1]),
        settings=loose,
        training=HeadTrainingSettings(steps=3, batch_size=1, width=8, augment=1),
        trained_on="my stack",
        progress=lambda stage, done, total: events.append((stage, done, total)),
    )
    assert len(labels) == 3
    for got, wanted in zip(labels, (first, fake_teacher.results[1], third)):
        np.testing.assert_array_equal(got, wanted)
    card = head.card
    assert (card.mode, card.planes, card.objects) == ("distilled", 2, 3)  # plane 1 had none
    assert (card.encoder, card.trained_on, card.width) == (tiny_model.model_id, "my stack", 8)
    (settings,) = fake_teacher.made  # the teacher decodes every grid point
    assert settings == loose.every_point() and settings.skip_covered is False
    assert [e for e in events if e[0] == "teacher"] == [("teacher", i, 3) for i in (1, 2, 3)]
    assert ("encoding", 2, 2) in events and events[-1] == ("training", 3, 3)


def sheet_with_nuclei() -> np.ndarray:
    """A cell sheet's mask (1) painted under three nuclei (2, 3, 4), as the teacher paints."""
    labels = np.zeros((40, 40), np.int32)
    labels[2:38, 2:30] = 1
    labels[5:11, 5:11] = 2
    labels[20:26, 8:14] = 3
    labels[14:20, 26:34] = 4  # a notch in the sheet's edge: not inside it
    return labels


def test_drop_containers_removes_an_object_holding_others():
    labels = sheet_with_nuclei()
    out = drop_containers(labels)
    assert not (out == 1).any()
    for index in (2, 3, 4):  # the members are untouched
        np.testing.assert_array_equal(out == index, labels == index)
    assert labels.max() == 4 and (labels == 1).any()  # the input is not changed


def test_drop_containers_keeps_objects_holding_fewer_than_two():
    labels = sheet_with_nuclei()
    labels[labels == 3] = 1  # now the sheet holds nucleus 2 only
    np.testing.assert_array_equal(drop_containers(labels), labels)
    np.testing.assert_array_equal(drop_containers(labels, holds=1) == 1, False)
    touching = np.zeros((20, 20), np.int32)  # side by side, none inside another
    touching[2:10, 2:10], touching[2:10, 10:18], touching[10:18, 2:18] = 1, 2, 3
    np.testing.assert_array_equal(drop_containers(touching), touching)


def test_distil_head_drops_the_teachers_containers(fake_teacher, tiny_model, make_image):
    planes = planes_for_teacher(make_image, 1, shape=(40, 40))
    fake_teacher.results = {0: sheet_with_nuclei()}
    head, (labels,) = distil_head(
        Predictor(tiny_model),
        planes,
        compute_normalization(planes[0][1]),
        training=HeadTrainingSettings(steps=1, batch_size=1, width=8, augment=1),
    )
    assert sorted(np.unique(labels).tolist()) == [0, 2, 3, 4]
    assert head.card.objects == 3


def test_distil_head_refuses_planes_without_objects(fake_teacher, tiny_model, make_image):
    planes = planes_for_teacher(make_image, 2)
    fake_teacher.results = {0: np.zeros((64, 64), np.int32), 1: np.zeros((64, 64), np.int32)}
    with pytest.raises(InvalidInputError, match=r"no object on the planes .*\(z=0, z=1\)"):
        distil_head(Predictor(tiny_model), planes, compute_normalization(planes[0][1]))


@pytest.fixture(scope="module")
def stack_and_labels(make_image):
    data = np.stack([make_image((64, 80), seed=z) for z in range(3)])
    labels = np.zeros((3, 64, 80), np.int32)
    labels[0, 5:15, 5:15] = 1
    labels[0, 28:36, 70:76] = 2  # across the tile border at row 32
    labels[2, 40:50, 40:50] = 7
    return data, labels


def test_labelled_planes_take_the_planes_with_objects(stack_and_labels):
    data, labels = stack_and_labels
    normalization = compute_normalization(data[0])
    images = labelled_planes(data, plane_layout(data.shape), normalization, labels, name="stack")
    assert [image.name for image in images] == ["stack[0]", "stack[2]"]
    assert [image.group for image in images] == ["stack[0]", "stack[2]"]
    for image, z in zip(images, (0, 2)):
        np.testing.assert_array_equal(image.image, data[z])
        np.testing.assert_array_equal(image.labels, labels[z])
        assert image.labels.dtype == np.int64 and image.normalization is normalization


def test_labelled_planes_cut_tiles_holding_objects(stack_and_labels):
    data, labels = stack_and_labels
    normalization = compute_normalization(data[0])
    images = labelled_planes(
        data, plane_layout(data.shape), normalization, labels, tile=32, name="stack"
    )
    assert [image.name for image in images] == [
        "stack[0][0:32,0:32]",
        "stack[0][0:32,64:80]",
        "stack[0][32:64,64:80]",
        "stack[2][32:64,32:64]",
    ]
    assert [image.group for image in images] == ["stack[0]"] * 3 + ["stack[2]"]
    windows = [
        (0, slice(0, 32), slice(0, 32)),
        (0, slice(0, 32), slice(64, 80)),
        (0, slice(32, 64), slice(64, 80)),
        (2, slice(32, 64), slice(32, 64)),
    ]
    for image, window in zip(images, windows):
        np.testing.assert_array_equal(image.image, data[window])
        np.testing.assert_array_equal(image.labels, labels[window])
        assert image.labels.any() and image.normalization is normalization
    assert [int(image.labels.max()) for image in images] == [1, 2, 2, 7]


def test_labelled_planes_errors_say_what_to_do(stack_and_labels):
    data, labels = stack_and_labels
    layout, normalization = plane_layout(data.shape), compute_normalization(data[0])
    with pytest.raises(
        InvalidInputError,
        match=r"labels have shape \(3, 64, 64\), but the image's planes need \(3, 64, 80\)",
    ):
        labelled_planes(data, layout, normalization, labels[:, :, :64])
    with pytest.raises(InvalidInputError, match="holds no object: paint or segment a few"):
        labelled_planes(data, layout, normalization, np.zeros_like(labels))
