"""The instance head on the command line: ``segment-everything --learn/--head`` and
``train --head``, in-process with the tiny random SAM in place of vit_t."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_sam.cli import build_parser, main
from napari_sam.commands.everything import stack_settings
from napari_sam.engine.instances.head import HeadCard, InstanceHead, TrainedHead, load_head
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.training.head_settings import HeadTrainingSettings


@pytest.fixture
def tiny_models(monkeypatch, tiny_model):
    """Every model the commands load is the tiny random SAM (no vit_t weights needed)."""
    # Imported before the patch: a module first imported under it would keep the fake.
    from napari_sam.batch import everything, tasks
    from napari_sam.engine.model import loading
    from napari_sam.engine.prediction import predictor

    for module in (loading, predictor):
        monkeypatch.setattr(module, "load_model", lambda *args, **kwargs: tiny_model)
    # The id a batch run records (and checks heads against) without loading the model.
    for module in (everything, tasks):
        monkeypatch.setattr(module, "model_identity", lambda model: tiny_model.model_id)
    return tiny_model


@pytest.fixture
def coarse_grid(monkeypatch):
    """The held-out scoring's point grid at 4 x 4 points: its default 32 x 32 grid takes
    about 50 s per image with the tiny SAM on our 2-core machines."""
    from napari_sam.engine.everything import segmenter
    from napari_sam.engine.everything.settings import EverythingSettings

    original, planes = segmenter.segment_plane, []

    def coarse(predictor, plane, normalization=None, settings=None, **options):
        planes.append(plane.shape)
        settings = replace(settings or EverythingSettings(), points_per_side=4)
        return original(predictor, plane, normalization, settings, **options)

    monkeypatch.setattr(segmenter, "segment_plane", coarse)
    return planes


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def discs(shape, centres, radius=9):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, 1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


def image_of(labels, seed):
    rng = np.random.default_rng(seed)
    image = 200 + 2000 * (labels > 0) + rng.normal(0, 60, labels.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


@pytest.fixture
def stack_file(tmp_path, make_image):
    base = make_image((64, 64), seed=4)
    path = tmp_path / "stack.tif"
    stack = np.stack([np.roll(base, 2 * z, axis=0) for z in range(2)])
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def error_line(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam: error: "), err
    return lines[0]


def test_learn_needs_at_least_one_plane(stack_file, tmp_path, capsys):
    line = error_line(
        ["segment-everything", str(stack_file), "--out", str(tmp_path / "o.zarr"), "--learn", "0"],
        capsys,
    )
    assert line == "napari-sam: error: --learn K needs K >= 1 planes; got 0."
    assert not (tmp_path / "o.zarr").exists()


def test_learn_and_head_exclude_each_other(stack_file, tmp_path, capsys):
    command = ["segment-everything", str(stack_file), "--out", str(tmp_path / "o.zarr")]
    with pytest.raises(SystemExit) as stopped:
        main(command + ["--learn", "2", "--head", "f"])
    assert stopped.value.code == 2
    assert "argument --head: not allowed with argument --learn" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(command + ["--head", "f", "--head-mode", "grid"])
    assert stopped.value.code == 2
    assert "invalid choice: 'grid'" in capsys.readouterr().err


def test_head_flags_fill_the_stack_settings():
    def parse(*flags):
        args = build_parser().parse_args(["segment-everything", "in.tif", "--out", "x", *flags])
        return stack_settings(args)

    assert (parse().head, parse().head_mode, parse().learn) == (None, "apg", None)
    assert parse("--learn", "3").learn == 3
    chosen = parse("--head", "my.pt", "--head-mode", "ais")
    assert (chosen.head, chosen.head_mode, chosen.learn) == ("my.pt", "ais", None)
    train = build_parser().parse_args(["train", "--out", "x", "--head"])
    defaults = HeadTrainingSettings()
    assert train.head is True and (train.head_steps, train.head_augment) == (
        defaults.steps,
        defaults.augment,
    )
    assert build_parser().parse_args(["train", "--out", "x"]).head is False


def test_a_missing_head_file_is_one_line_naming_it(stack_file, tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    out = tmp_path / "o.zarr"
    line = error_line(
        ["segment-everything", str(stack_file), "--out", str(out), "--head", str(missing)],
        capsys,
    )
    assert f"No instance head at {missing}:" in line
    assert "a head is two files, NAME.pt and NAME.json" in line
    assert not (out / "zarr.json").exists()


def test_segment_everything_with_a_head_file(stack_file, tmp_path, capsys, tiny_models):
    torch.manual_seed(0)
    card = HeadCard(
        encoder=tiny_models.model_id, trained_on="t", mode="labels", planes=1, objects=1, width=8
    )
    path = TrainedHead(InstanceHead(256, 8).eval(), card).save(tmp_path / "heads" / "h")
    out = tmp_path / "o.zarr"
    command = ["segment-everything", str(stack_file), "--out", str(out), "--workers", "0"]
    assert main(command + ["--head", str(path), "--head-mode", "ais", "--no-link"]) == 0
    printed = capsys.readouterr().out
    found = re.search(
        r"(\d+) objects in 2 slices \(2 segmented now, 0 already done\), .*"
        rf", head-ais {re.escape(str(path.resolve()))}\)$",
        printed.strip(),
    )
    assert found, printed
    group = zarr.open_group(out, mode="r")
    assert (
        int(found.group(1)) == int(group["labels"][...].max()) == int(group["objects"][...].sum())
    )
    settings = group.attrs["napari_sam"]["settings"]
    assert settings["method"] == "head-ais" and settings["head_sha256"] == file_sha256(path)
    # A rerun resumes; another mode is another run.
    assert main(command + ["--head", str(path), "--head-mode", "ais", "--no-link"]) == 0
    assert "(0 segmented now, 2 already done)" in capsys.readouterr().out
    assert main(command + ["--head", str(path)]) == 1  # apg
    err = capsys.readouterr().err
    assert "holds a segment-everything run for other data or settings" in err
    assert "'method': 'head-apg'" in err and "--overwrite" in err


@pytest.fixture
def pairs(tmp_path):
    """A training pair (3 discs) and a held-out pair (2 discs) as TIFF files."""
    files = {}
    for name, centres, seed in (
        ("train", ((18, 18), (44, 46), (20, 48)), 0),
        ("test", ((22, 40), (46, 18)), 1),
    ):
        labels = discs((64, 64), centres)
        files[name] = (tmp_path / f"{name}.tif", tmp_path / f"{name}_labels.tif")
        tifffile.imwrite(files[name][0], image_of(labels, seed))
        tifffile.imwrite(files[name][1], labels)
    return files


def test_train_head_writes_the_head_and_scores_held_out_images(
    pairs, tmp_path, capsys, tiny_models, coarse_grid
):
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "--head",
            "--out",
            str(out),
            "--train-pair",
            *map(str, pairs["train"]),
            "--test-pair",
            *map(str, pairs["test"]),
            "--head-steps",
            "3",
            "--head-augment",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert coarse_grid == [(64, 64)]  # the held-out image, once, by the grid
    assert (out / "head.pt").is_file() and (out / "head.json").is_file()
    card = json.loads((out / "head.json").read_text())
    quality = card["quality"]
    assert set(quality) == {
        "held_out_images",
        *(f"{method}_ap{iou}" for method in ("apg", "ais", "grid") for iou in (50, 75)),
    }
    assert quality["held_out_images"] == 1
    assert all(0 <= quality[key] <= 1 for key in quality if key != "held_out_images")
    assert (card["encoder"], card["mode"], card["planes"], card["objects"]) == (
        "random-seed0",
        "labels",
        1,
        3,
    )
    assert card["trained_on"].startswith("1 labelled images: ")
    assert card["width"] == HeadTrainingSettings().width
    printed = captured.out
    assert f"{out / 'head.pt'}: head for random-seed0, 1 images, 3 objects" in printed
    assert "held-out images: 1" in printed
    assert "| method | AP@0.5 | AP@0.75 | seconds per image |" in printed
    for method in ("apg", "ais", "grid"):
        row = re.search(rf"^\| {method} \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$", printed, re.M)
        assert row, printed
        assert float(row.group(1)) == pytest.approx(quality[f"{method}_ap50"], abs=5e-4)
    assert "encoding: 100%" in captured.err and "training: 100%" in captured.err
    assert load_head(out / "head").card == HeadCard(**card)


def test_train_head_without_test_images_has_no_quality(pairs, tmp_path, capsys, tiny_models):
    out = tmp_path / "out"
    command = ["train", "--head", "--out", str(out), "--train-pair", *map(str, pairs["train"])]
    assert main(command + ["--head-steps", "2", "--head-augment", "1"]) == 0
    assert "held-out images" not in capsys.readouterr().out
    assert json.loads((out / "head.json").read_text())["quality"] == {}


def test_train_head_needs_training_images(tmp_path, capsys):
    line = error_line(["train", "--head", "--out", str(tmp_path / "out")], capsys)
    assert "--head trains on labelled images: give --train-folder DIR or --train-pair" in line
    assert not (tmp_path / "out" / "head.pt").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--head-steps", "0"], "steps=0"), (["--head-augment", "9"], "augment=9")],
)
def test_train_head_refuses_bad_settings(pairs, tmp_path, capsys, tiny_models, flags, named):
    command = ["train", "--head", "--out", str(tmp_path / "o"), "--train-pair"]
    line = error_line(command + [*map(str, pairs["train"]), *flags], capsys)
    assert f"Invalid head training settings: {named}" in line
