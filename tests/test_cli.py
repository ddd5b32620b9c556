"""The ``napari-sam`` command, run in-process through ``main(argv)``.

Prediction tests use the real default weights (fetched by ``make test``) on the bundled
DSB2018 image, and compare masks with its human annotation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main
from napari_sam.demo import mask_iou, prompts_from_labels
from napari_sam.engine.metrics import average_precision
from napari_sam.io.samples import load_dsb2018


@pytest.fixture(scope="module")
def dsb(tmp_path_factory):
    image, labels = load_dsb2018()
    path = tmp_path_factory.mktemp("data") / "nuclei.tif"
    tifffile.imwrite(path, image)
    ids, boxes, points = prompts_from_labels(labels)
    return path, labels, ids, boxes, points


def test_predict_box_writes_the_nucleus(dsb, tmp_path, capsys):
    path, labels, ids, boxes, _ = dsb
    out, overlay = tmp_path / "mask.tif", tmp_path / "mask.png"
    box = ",".join(str(int(v)) for v in boxes[0])
    assert (
        main(["predict", str(path), "--box", box, "--out", str(out), "--overlay", str(overlay)])
        == 0
    )
    mask = tifffile.imread(out)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask_iou(mask.astype(bool), labels == ids[0]) > 0.75
    assert overlay.stat().st_size > 1000
    assert "predicted IoU" in capsys.readouterr().out


def test_predict_point_and_negative(dsb, tmp_path):
    path, labels, ids, _, points = dsb
    out = tmp_path / "mask.npy"
    target = labels == ids[3]
    point = f"{int(points[3][0])},{int(points[3][1])}"
    negative = f"{int(points[4][0])},{int(points[4][1])}"
    assert (
        main(["predict", str(path), "--point", point, "--negative", negative, "--out", str(out)])
        == 0
    )
    mask = np.load(out).astype(bool)
    assert mask[int(points[3][0]), int(points[3][1])]
    assert not mask[int(points[4][0]), int(points[4][1])]
    assert mask_iou(mask, target) > 0.5


def test_predict_refuses_to_overwrite(dsb, tmp_path, capsys):
    path, *_ = dsb
    out = tmp_path / "mask.tif"
    out.write_bytes(b"precious")
    assert main(["predict", str(path), "--point", "10,10", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--point", "600,10"], "outside the image"),
        (["--box", "50,50,10,10"], "inverted corners"),
        (["--negative", "10,10"], "only refine an object"),
        ([], "at least one prompt"),
        (["--point", "10,10", "--model", "no_such_model"], "Unknown model"),
    ],
)
def test_predict_errors_exit_1_with_a_message(dsb, tmp_path, capsys, arguments, message):
    path, *_ = dsb
    code = main(["predict", str(path), *arguments, "--out", str(tmp_path / "m.tif")])
    assert code == 1
    assert message in capsys.readouterr().err


def test_predict_missing_image(tmp_path, capsys):
    assert (
        main(
            [
                "predict",
                str(tmp_path / "none.tif"),
                "--point",
                "1,1",
                "--out",
                str(tmp_path / "m.tif"),
            ]
        )
        == 1
    )
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["12", "a,b", "1,2,3"])
def test_malformed_coordinates_exit_2(dsb, tmp_path, capsys, value):
    path, *_ = dsb
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(path), "--point", value, "--out", str(tmp_path / "m.tif")])
    assert exit_info.value.code == 2
    assert "ROW,COL" in capsys.readouterr().err


def test_weights_list_names_every_model(capsys):
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    for name in ("vit_t", "vit_b", "vit_l", "vit_h", "lite_medsam"):
        assert name in listing


def test_weights_path_of_cached_and_uncached(cache_dir, default_weights, capsys, monkeypatch):
    from napari_sam.engine.model import weights

    assert main(["weights", "path", "vit_b"]) == 1
    assert "not cached" in capsys.readouterr().err
    assert main(["weights", "fetch", "nonexistent"]) == 1
    assert "Unknown model" in capsys.readouterr().err
    # The released file in the cache is found, verified once, and its note spares re-hashing.
    cached = cache_dir / "weights" / default_weights.name
    cached.parent.mkdir(parents=True)
    cached.symlink_to(default_weights)
    assert main(["weights", "path", "vit_t"]) == 0
    assert capsys.readouterr().out.strip() == str(cached)
    assert cached.with_name(cached.name + ".verified").is_file()
    with monkeypatch.context() as patched:
        patched.setattr(weights, "file_sha256", lambda path: pytest.fail("hashed again"))
        assert main(["weights", "path", "vit_t"]) == 0
    assert capsys.readouterr().out.strip() == str(cached)
    assert main(["weights", "list"]) == 0
    listed = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed["vit_t"] == "yes" and listed["vit_b"] == "no"
    # A damaged file in its place is not the cached weights.
    cached.unlink()
    cached.write_bytes(b"truncated")
    assert main(["weights", "path", "vit_t"]) == 1
    assert "not cached" in capsys.readouterr().err


def test_demo_writes_labels_overlay_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    labels = tifffile.imread(tmp_path / "labels.tif")
    truth = load_dsb2018()[1]
    # Segment everything: AP 0.593 when the defaults were chosen; every grid point decoded
    # gives 0.600, the reference generator 0.613.
    assert summary["ap50"] >= 0.58
    assert average_precision(labels, truth, 0.5) == pytest.approx(summary["ap50"], abs=1e-4)
    assert len(np.unique(labels)) - 1 == summary["found"]
    assert summary["objects"] == 125
    boxes = tifffile.imread(tmp_path / "box_labels.tif")
    assert len(np.unique(boxes)) - 1 >= 120  # a few tiny nuclei may be fully covered
    assert summary["box_mean_iou"] > 0.78  # reference boxes on this image: 0.809 (24 objects)
    assert summary["point_mean_iou"] > 0.45
    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    assert "AP@0.5" in capsys.readouterr().out
