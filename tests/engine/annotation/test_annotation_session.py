"""The annotation session on a tiny random SAM: planes, caching, previews, cancel."""

import numpy as np
import pytest

from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import OperationCancelled


@pytest.fixture(scope="module")
def stack(make_image):
    return np.stack([make_image((120, 160), seed=s) for s in range(4)])


@pytest.fixture
def session(tiny_model, stack):
    return AnnotationSession(tiny_model, stack, capacity=2)


def test_each_plane_is_encoded_once_and_equals_a_direct_encoding(session, tiny_model, stack):
    calls = []
    original = session.predictor.encode
    session.predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    first = session.embed((1,))
    again = session.embed((1,))
    assert again is first and len(calls) == 1
    direct = Predictor(tiny_model).encode(stack[1], session.normalization)
    np.testing.assert_array_equal(first.features.numpy(), direct.features.numpy())


def test_one_normalization_for_every_plane(session):
    assert session.embed((0,)).normalization == session.embed((3,)).normalization


def test_preview_equals_the_predictor_on_that_plane(session, tiny_model, stack):
    preview = session.preview((2,), points=[(60, 80)])
    direct = Predictor(tiny_model)
    direct.set_image(stack[2], session.normalization)
    expected = direct.predict(points=[(60, 80)])
    (item,) = preview.objects
    assert item.chosen == expected.best
    np.testing.assert_allclose(item.prediction.scores, expected.scores, atol=1e-5)
    assert np.count_nonzero(item.mask != expected.best_mask) <= 3


def test_previews_on_two_planes_differ(session):
    a = session.preview((0,), points=[(60, 80)]).objects[0].prediction.logits
    b = session.preview((3,), points=[(60, 80)]).objects[0].prediction.logits
    assert np.abs(a - b).max() > 1e-3


def test_batched_objects_get_their_own_masks(session):
    preview = session.preview((1,), boxes=[(10, 10, 50, 60), (70, 90, 110, 150)])
    assert len(preview.objects) == 2
    labels = preview.labels((120, 160))
    assert set(np.unique(labels)) <= {0, 1, 2}
    single = session.preview((1,), boxes=[(70, 90, 110, 150)]).objects[0]
    np.testing.assert_allclose(
        preview.objects[1].prediction.logits, single.prediction.logits, atol=1e-4
    )


def test_cycling_candidates_wraps(session):
    preview = session.preview((0,), points=[(30, 40)])
    start = preview.objects[0].chosen
    chosen = [
        preview.cycle(0).objects[0].chosen,
        preview.cycle(0).cycle(0).cycle(0).objects[0].chosen,
    ]
    assert chosen == [(start + 1) % 3, start]


def test_memory_is_bounded_and_neighbours_are_listed(session):
    for z in range(4):
        session.embed((z,))
    assert len(session.store) == 2
    assert session.neighbours((0,)) == [(1,)]
    assert session.neighbours((2,), reach=2) == [(3,), (1,), (0,)]


def test_cancel_stops_the_encoder(session):
    polls = []

    def stop():
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(OperationCancelled, match="cancelled"):
        session.embed((3,), should_stop=stop)
    assert not session.has_embedding((3,))
    assert len(polls) == 2


def test_refining_a_mask_prompts_its_box_and_logits(session):
    existing = np.zeros((120, 160), bool)
    existing[30:60, 40:90] = True
    preview = session.preview((0,), mask_input=existing)
    (item,) = preview.objects
    assert item.prompt.box.tolist() == [30, 40, 59, 89]
    assert item.mask.shape == (120, 160)
