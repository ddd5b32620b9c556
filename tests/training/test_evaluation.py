import json

import numpy as np
import pytest

from napari_sam.errors import InvalidInputError
from napari_sam.training.config import EvaluationSettings
from napari_sam.training.evaluation import (
    EvaluationReport,
    check_regression,
    corrective_click,
    evaluate,
    interior_point,
)
from napari_sam.training.records import add_metrics
from napari_sam.training.reports import format_table, write_csv


def test_interior_point_and_corrective_click():
    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    assert interior_point(truth).tolist() == [14.0, 14.0]
    predicted = truth.copy()
    predicted[5:25, 15:25] = False  # missed right half: a positive click inside it
    point, label = corrective_click(predicted, truth, None)
    assert (
        label == 1
        and truth[int(point[0]), int(point[1])]
        and not predicted[int(point[0]), int(point[1])]
    )
    predicted = truth.copy()
    predicted[30:38, 30:38] = True  # a false positive blob larger than any miss
    predicted[5, 5] = False
    point, label = corrective_click(predicted, truth, None)
    assert label == 0 and 30 <= point[0] < 38 and 30 <= point[1] < 38
    same, label = corrective_click(truth, truth, np.array([10.0, 10.0]))
    assert same.tolist() == [10.0, 10.0] and label == 1


def test_evaluate_reports_means_per_prompt_and_click(tiny_model, labelled_images):
    settings = EvaluationSettings(clicks=2, max_objects=2)
    report = evaluate(tiny_model, labelled_images[:1], settings)
    assert report.objects == 2 and report.images == 1
    assert len(report.iterative_point) == 2 and len(report.iterative_box) == 2
    assert report.iterative_point[0] == pytest.approx(report.point)
    assert report.iterative_box[0] == pytest.approx(report.box)
    values = [report.point, report.box, report.point_negative, *report.iterative_point]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert (
        0.0 < report.predicted_iou < 1.5
    )  # the IoU head's output is unbounded, random weights near 0..1
    without = evaluate(
        tiny_model,
        labelled_images[:1],
        EvaluationSettings(clicks=1, max_objects=2, point_negative=False),
    )
    assert np.isnan(without.point_negative) and without.point == pytest.approx(report.point)
    with pytest.raises(InvalidInputError, match="clicks must be at least 1"):
        evaluate(tiny_model, labelled_images[:1], EvaluationSettings(clicks=0))
    with pytest.raises(InvalidInputError, match="No images"):
        evaluate(tiny_model, [], settings)


def _report(point, box, clicks):
    return EvaluationReport("m", 1, 10, point, box, point, tuple(clicks), tuple(clicks))


def test_regression_check_flags_only_real_drops(tmp_path):
    before = _report(0.80, 0.85, [0.80, 0.85, 0.90])
    assert check_regression(before, _report(0.795, 0.86, [0.795, 0.85, 0.90])).passed
    check = check_regression(before, _report(0.70, 0.86, [0.70, 0.80, 0.85]), tolerance=0.01)
    assert not check.passed
    assert check.worse[0] == "point: 0.800 -> 0.700 (-0.100)"
    assert any(w.startswith("point + 2 clicks: 0.900 -> 0.850") for w in check.worse)
    rows = [("held-out", "before", before), ("held-out", "after", check.after)]
    table = format_table(rows)
    assert "0.800" in table and "0.700" in table
    lines = write_csv(tmp_path / "e.csv", rows).read_text().splitlines()
    assert (
        lines[0] == "data,model,model_id,objects,measure,clicks,mean_iou"
        and len(lines) == 1 + 2 * 10
    )
    assert "held-out,before,m,10,predicted_iou,1,nan" in lines  # not measured in these reports


def test_model_card_collects_metrics(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"format": "napari-sam model card 1", "metrics": {}}))
    add_metrics(card, "test", {"point": 0.8})
    assert json.loads(card.read_text())["metrics"] == {"test": {"point": 0.8}}
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="not a napari-sam model card"):
        add_metrics(tmp_path / "other.json", "test", {})


def test_automatic_ap_is_reported_per_threshold(tiny_model, labelled_images, monkeypatch):
    from types import SimpleNamespace

    from napari_sam.engine.everything import segmenter

    image = labelled_images[0]
    # segment-everything itself is tested in tests/engine; here: its labels scored at 0.5..0.95
    monkeypatch.setattr(
        segmenter,
        "segment_plane",
        lambda predictor, plane, normalization, settings, embed: SimpleNamespace(
            labels=image.labels
        ),
    )
    report = evaluate(
        tiny_model, [image], EvaluationSettings(clicks=1, max_objects=1, automatic=True)
    )
    assert list(report.automatic_ap) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert set(report.automatic_ap.values()) == {1.0}
    assert "AP50" in format_table([("d", "m", report)])
