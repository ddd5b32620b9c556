import json
from dataclasses import replace

import pytest
import tifffile

from napari_sam.cli import build_parser, main
from napari_sam.commands.training import evaluation_settings, training_config
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.errors import InvalidInputError
from napari_sam.training.config import (
    PAPER_PROMPTS,
    EvaluationSettings,
    RetentionSettings,
    TrainingConfig,
)


@pytest.fixture(autouse=True)
def no_development_nuclei(monkeypatch):
    """Without --keep-* images, `train` would rehearse on the development nuclei: not here."""
    from napari_sam.training import retention

    real = retention.domains_to_keep
    monkeypatch.setattr(
        retention,
        "domains_to_keep",
        lambda keep=None, seed=0: real(keep, seed) if keep else ([], []),
    )


@pytest.fixture
def tiny_cli(monkeypatch, tiny_model, tiny_architecture):
    """`train` and `evaluate` use the tiny random SAM instead of downloading vit_t."""
    # Imported before any patch: a module first imported under the patch would keep the
    # fake `load_model` it bound for the rest of the session (the predictor did, once).
    from napari_sam.engine.model import loading
    from napari_sam.engine.prediction import predictor
    from napari_sam.training import network
    from tiny_sam import random_model

    original = network.load_trainable
    monkeypatch.setattr(
        network, "load_trainable", lambda *args, **kwargs: original(random_model(tiny_architecture))
    )
    for module in (loading, predictor):
        monkeypatch.setattr(module, "load_model", lambda *args, **kwargs: tiny_model)


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
    code = main(
        [
            "train",
            "--train-folder",
            str(train),
            "--test-folder",
            str(test),
            "--reference-folder",
            str(test),
            "--out",
            str(out),
            "--steps",
            "1",
            "--objects",
            "1",
            "--iterations",
            "1",
            "--quiet-iterations",
            "0",
            "--validation-fraction",
            "0",
            "--clicks",
            "1",
            "--max-objects",
            "1",
            "--tolerance",
            "1.0",
            "--no-keep",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "finetuned_random.pt: 1 steps (completed) in " in printed
    assert "mixed with the released" not in printed
    # the "before" rows are printed as soon as they are measured, then again beside "after"
    assert printed.count("before random-seed0") == 4 and printed.count("after finetuned@") == 2
    card = json.loads((out / "finetuned_random.json").read_text())
    assert set(card["metrics"]) == {"test", "reference", "regression_check"}
    assert card["metrics"]["regression_check"]["passed"] is True
    assert (out / "evaluation.csv").read_text().count("\n") == 1 + 4 * 6
    assert card["training"]["settings"]["freeze_iou_head"] is False and card["iou_head"].startswith(
        "trained"
    )
    assert card["training"]["settings"]["validation_objects"] == TrainingConfig().validation_objects


def test_train_keeps_the_given_domains(tmp_path, discs, tiny_cli, capsys):
    """--keep-folder: half rehearses, half is the reference validation that the mix honours."""
    train = _folder(tmp_path / "train", discs, [((30, 30), (60, 60))])
    validation = _folder(tmp_path / "validation", discs, [((40, 40), (70, 20))])
    keep = _folder(tmp_path / "keep", discs, [((20, 20), (70, 70)), ((50, 30), (30, 70))])
    out = tmp_path / "out"
    flags = ["train", "--train-folder", str(train), "--validation-folder", str(validation)]
    flags += ["--out", str(out), "--steps", "2", "--objects", "1", "--validate-every", "1"]
    flags += ["--validation-objects", "1", "--no-evaluation", "--keep-folder", str(keep)]
    flags += ["--rehearsal", "0.5"]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert "mixed with the released weights at alpha " in printed
    card = json.loads((out / "finetuned_random.json").read_text())
    mix = card["training"]["mix_with_released"]
    assert mix["alpha"] in TrainingConfig().retention.mix_grid
    assert [row["alpha"] for row in mix["scores"]] == list(TrainingConfig().retention.mix_grid)
    assert card["training"]["settings"]["retention"]["rehearsal"] == 0.5
    one = _folder(tmp_path / "one", discs, [((20, 20), (70, 70))])
    flags[flags.index(str(keep))] = str(one)
    flags[flags.index(str(out))] = str(tmp_path / "out2")
    assert main(flags) != 0
    assert "at least two whole images" in capsys.readouterr().err


def test_without_keep_images_the_development_nuclei_stand_in(monkeypatch):
    from napari_sam.commands.training import keep_sets
    from napari_sam.errors import DownloadError
    from napari_sam.training import retention

    parse = build_parser().parse_args
    monkeypatch.setattr(retention, "domains_to_keep", lambda keep, seed: (["r"], ["v"]))
    assert keep_sets([], parse(["train", "--out", "x"])) == (["r"], ["v"])
    assert keep_sets([], parse(["train", "--out", "x", "--no-keep"])) == ([], [])
    assert keep_sets([], parse(["train", "--out", "x", "--development"])) == ([], [])

    def offline(keep, seed):
        raise DownloadError("no network")

    monkeypatch.setattr(retention, "domains_to_keep", offline)
    assert keep_sets([], parse(["train", "--out", "x"])) == ([], [])  # warns, trains on


def test_train_without_images_is_an_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path)]) == 1
    assert "No training images" in capsys.readouterr().err


def test_bad_z_range_is_an_error(tmp_path, discs, capsys):
    folder = _folder(tmp_path / "d", discs, [((30, 30),)])
    code = main(
        [
            "evaluate",
            "--test-pair",
            str(folder / "img0.tif"),
            str(folder / "img0_labels.tif"),
            "3-4",
        ]
    )
    assert code == 1 and "START:STOP" in capsys.readouterr().err


def test_iou_head_flags_are_parsed():
    parse = build_parser().parse_args
    base = ["train", "--out", "x"]
    assert parse(base).freeze_iou_head is False  # the default: trained, then shifted back
    assert parse(base + ["--train-iou-head"]).freeze_iou_head is False
    assert parse(base + ["--freeze-iou-head"]).freeze_iou_head is True
    assert parse(base + ["--validation-objects", "40"]).validation_objects == 40
    with pytest.raises(SystemExit):
        parse(base + ["--freeze-iou-head", "--train-iou-head"])


def test_train_without_evaluation_measures_nothing(tmp_path, discs, tiny_cli, capsys):
    train = _folder(tmp_path / "train", discs, [((30, 30), (60, 60))])
    test = _folder(tmp_path / "test", discs, [((40, 40), (70, 20))])
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "--train-folder",
            str(train),
            "--test-folder",
            str(test),
            "--out",
            str(out),
            "--steps",
            "1",
            "--objects",
            "1",
            "--iterations",
            "1",
            "--quiet-iterations",
            "0",
            "--validation-fraction",
            "0",
            "--no-evaluation",
            "--train-iou-head",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "before" not in printed and not (out / "evaluation.csv").exists()
    card = json.loads((out / "finetuned_random.json").read_text())
    assert card["metrics"] == {} and card["training"]["settings"]["freeze_iou_head"] is False


def test_train_without_tuning_flags_runs_the_default_config():
    """One source for each default: the flags' defaults are TrainingConfig's."""
    args = build_parser().parse_args(["train", "--development", "--out", "x"])
    assert training_config(args) == TrainingConfig()
    assert evaluation_settings(args) == EvaluationSettings()
    evaluate = build_parser().parse_args(["evaluate", "--development"])
    assert evaluation_settings(evaluate) == EvaluationSettings()


@pytest.mark.parametrize(
    ("flags", "changed"),
    [
        (["--steps", "7"], {"steps": 7}),
        (["--objects", "3"], {"objects_per_step": 3}),
        (["--lr", "0.002"], {"learning_rate": 0.002}),
        (["--warmup", "4"], {"warmup_steps": 4}),
        (
            ["--trainable", "full", "--encoder-blocks", "3"],
            {"trainable": "full", "encoder_blocks": 3},
        ),
        (["--layer-decay", "0.5", "--drop-path", "0.1"], {"layer_decay": 0.5, "drop_path": 0.1}),
        (["--crop", "64", "--flips"], {"crop_size": 64, "flips": True}),
        (
            ["--freeze-iou-head", "--no-calibration"],
            {"freeze_iou_head": True, "calibrate_logits": False},
        ),
        (["--fixed-rehearsal"], {"retention": RetentionSettings(adaptive=False)}),
        (["--iou-head-mix", "0.5"], {"retention": RetentionSettings(iou_head_mix=0.5)}),
        (["--no-everything-guard"], {"retention": RetentionSettings(everything_guard=False)}),
        (
            ["--validate-every", "3", "--validation-objects", "5", "--patience", "2"],
            {"validate_every": 3, "validation_objects": 5, "patience": 2},
        ),
        (
            ["--max-minutes", "2.5", "--seed", "4", "--name", "b"],
            {"max_minutes": 2.5, "seed": 4, "name": "b"},
        ),
        (["--max-minutes", "0"], {"max_minutes": None}),  # 0 lifts the time limit
        (
            ["--rehearsal", "0.3", "--anchor", "2", "--no-mix"],
            {"retention": RetentionSettings(rehearsal=0.3, anchor=2.0, mix=False)},
        ),
        (
            ["--rehearse-on", "released", "--no-step-guard", "--joint-rehearsal"],
            {
                "retention": RetentionSettings(
                    rehearsal_targets="released", guard_steps=False, joint=True
                )
            },
        ),
    ],
)
def test_each_training_flag_sets_its_setting(flags, changed):
    config = training_config(build_parser().parse_args(["train", "--out", "x", *flags]))
    assert {name: getattr(config, name) for name in changed} == changed
    assert config == replace(TrainingConfig(), **changed)  # and nothing else


def test_the_paper_prompting_is_two_flags_away():
    args = build_parser().parse_args(
        [
            "train",
            "--out",
            "x",
            "--iterations",
            str(PAPER_PROMPTS.iterations),
            "--quiet-iterations",
            str(PAPER_PROMPTS.quiet_iterations),
        ]
    )
    assert training_config(args).prompts == PAPER_PROMPTS


def test_a_negative_time_limit_is_refused():
    args = build_parser().parse_args(["train", "--out", "x", "--max-minutes", "-1"])
    with pytest.raises(InvalidInputError, match=r"max_minutes must be positive; got -1\.0"):
        training_config(args)


def test_help_states_the_defaults_in_use(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    defaults = TrainingConfig()
    assert f"peak learning rate (default {defaults.learning_rate})" in shown
    assert f"training steps (default {defaults.steps})" in shown
    paper = PAPER_PROMPTS.iterations
    assert f"(default {defaults.prompts.iterations}; the SAM paper's {paper})" in shown
    assert f"default {defaults.max_minutes:g}, 0: no limit" in shown
    assert f"threshold (default {EverythingSettings().pred_iou_thresh})" in shown
