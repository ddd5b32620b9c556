import numpy as np
import pytest

from napari_sam.engine.annotation.objects import plan_commit
from napari_sam.engine.annotation.records import AnnotationRecord, object_record, replay
from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.errors import InvalidInputError


@pytest.fixture(scope="module")
def session(tiny_model, make_image):
    return AnnotationSession(
        tiny_model, np.stack([make_image((96, 128), seed=s) for s in range(2)])
    )


def test_round_trip_and_replay_reproduce_the_labels(session, tmp_path):
    record = AnnotationRecord(session.model_id, session.normalization, session.layout.shape)
    expected = np.zeros((2, 96, 128), np.int32)
    for label, (plane, box) in enumerate(
        [((0,), (10, 10, 50, 60)), ((1,), (40, 50, 90, 120))], start=1
    ):
        preview = session.preview(plane, boxes=[box])
        plan = plan_commit(expected[plane], preview.masks(), label)
        expected[plane][plan.rows, plan.cols] = plan.values
        record = record.with_object(object_record(preview.objects[0], plane, label))
    loaded = AnnotationRecord.load(record.save(tmp_path / "r.json"))
    assert loaded == record
    np.testing.assert_array_equal(replay(session, loaded), expected)
    assert expected.max() == 2 and (expected > 0).sum() > 0


@pytest.mark.parametrize(
    "text, message", [("{", "invalid JSON"), ('{"format": "other"}', "Not a napari-sam record")]
)
def test_foreign_files_are_refused(text, message):
    with pytest.raises(InvalidInputError, match=message):
        AnnotationRecord.from_json(text)


def test_replay_refuses_other_data(session, tiny_model, make_image):
    record = AnnotationRecord(session.model_id, session.normalization, (5, 96, 128))
    with pytest.raises(InvalidInputError, match="shape"):
        replay(session, record)
    other = AnnotationRecord(
        session.model_id, session.normalization.__class__(0.0, 1.0), session.layout.shape
    )
    with pytest.raises(InvalidInputError, match="normalisation differs"):
        replay(session, other)
