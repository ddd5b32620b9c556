import json

import pytest
import tifffile

from napari_sam.cli import build_parser, main


@pytest.fixture
def tiny_cli(monkeypatch, tiny_model, tiny_architecture):
    """`train` and `evaluate` use the tiny random SAM instead of downloading vit_t."""
    from napari_sam.engine.model import loading
    from tiny_sam import random_model
    from napari_sam.training import network

    original = network.load_trainable
    monkeypatch.setattr(network, "load_trainable",
                        lambda *args, **kwargs: original(random_model(tiny_architecture)))
    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: tiny_model)


def _folder(path, discs, layouts):
    disc_labels, disc_image = discs
    path.mkdir()
    for index, centres in enumerate(layouts):
        labels = disc_labels(centres=centres)
        tifffile.imwrite(path / f"img{index}.tif", disc_image(labels, index))
        tifffile.imwrite(path / f"img{index}_labels.tif", labels)
    return path


def test_train_prints_before_after_and_fills_the_card(tmp_path, discs, tiny_cli, capsys):
    train = _folder(tmp_path / "train", discs, [((30, 30), (60, 60))])
    test = _folder(tmp_path / "test", discs, [((40, 40), (70, 20))])
    out = tmp_path / "out"
    code = main(["train", "--train-folder", str(train), "--test-folder", str(test),
                 "--reference-folder", str(test), "--out", str(out), "--steps", "1", "--objects", "1",
                 "--iterations", "1", "--quiet-iterations", "0", "--validation-fraction", "0",
                 "--clicks", "1", "--max-objects", "1", "--tolerance", "1.0"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "finetuned_random.pt: 1 steps (completed) in " in printed
    # the "before" rows are printed as soon as they are measured, then again beside "after"
    assert printed.count("before random-seed0") == 4 and printed.count("after finetuned@") == 2
    card = json.loads((out / "finetuned_random.json").read_text())
    assert set(card["metrics"]) == {"test", "reference", "regression_check"}
    assert card["metrics"]["regression_check"]["passed"] is True
    assert (out / "evaluation.csv").read_text().count("\n") == 1 + 4 * 6
    assert card["training"]["settings"]["freeze_iou_head"] is True and card["iou_head"].startswith("released")
    assert card["training"]["settings"]["validation_objects"] == 24


def test_train_without_images_is_an_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path)]) == 1
    assert "No training images" in capsys.readouterr().err


def test_bad_z_range_is_an_error(tmp_path, discs, capsys):
    folder = _folder(tmp_path / "d", discs, [((30, 30),)])
    code = main(["evaluate", "--test-pair", str(folder / "img0.tif"), str(folder / "img0_labels.tif"), "3-4"])
    assert code == 1 and "START:STOP" in capsys.readouterr().err


def test_iou_head_flags_are_parsed():
    parse = build_parser().parse_args
    base = ["train", "--out", "x"]
    assert parse(base).freeze_iou_head is True  # the default: segment-everything keeps working
    assert parse(base + ["--train-iou-head"]).freeze_iou_head is False
    assert parse(base + ["--freeze-iou-head"]).freeze_iou_head is True
    assert parse(base + ["--validation-objects", "40"]).validation_objects == 40
    with pytest.raises(SystemExit):
        parse(base + ["--freeze-iou-head", "--train-iou-head"])


def test_train_without_evaluation_measures_nothing(tmp_path, discs, tiny_cli, capsys):
    train = _folder(tmp_path / "train", discs, [((30, 30), (60, 60))])
    test = _folder(tmp_path / "test", discs, [((40, 40), (70, 20))])
    out = tmp_path / "out"
    code = main(["train", "--train-folder", str(train), "--test-folder", str(test), "--out", str(out),
                 "--steps", "1", "--objects", "1", "--iterations", "1", "--quiet-iterations", "0",
                 "--validation-fraction", "0", "--no-evaluation", "--train-iou-head"])
    printed = capsys.readouterr().out
    assert code == 0 and "before" not in printed and not (out / "evaluation.csv").exists()
    card = json.loads((out / "finetuned_random.json").read_text())
    assert card["metrics"] == {} and card["training"]["settings"]["freeze_iou_head"] is False
