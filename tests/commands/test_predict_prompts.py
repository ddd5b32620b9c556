"""``napari-sam predict STACK --prompts FILE --propagate z``: a prompts file replayed on a stack.

Bad requests are refused before the model loads, with one error line; a real run on a
crop of the cells3d volume (real weights) writes the propagated nuclei with their ids,
close to the labels, and equal to the same request through ``AnnotationSession``.
"""

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.cli import main
from napari_sam.engine.annotation.session import bounding_box

NUCLEI = (4, 12)


def refused(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from napari_sam.io.samples import load_cells3d_nuclei

    volume, labels = load_cells3d_nuclei()
    path = tmp_path_factory.mktemp("stack") / "nuclei.tif"
    tifffile.imwrite(path, volume, metadata={"axes": "ZYX"})
    return path, labels


def prompts_file(folder, labels, ids=NUCLEI):
    objects = []
    for label in ids:
        slices = np.nonzero((labels == label).any(axis=(1, 2)))[0]
        z = int(slices[len(slices) // 2])
        objects.append(
            {"id": label, "plane": [z], "box": bounding_box(labels[z] == label).tolist()}
        )
    path = folder / "prompts.json"
    path.write_text(json.dumps({"objects": objects}))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--point", "5,5"], "either --prompts"),
        (["--out", "labels.png"], "use .tif, .npy or .zarr"),
        (["--overlay", "o.png"], "--overlay"),
        (["--propagate", "t"], "no t axis"),
    ],
)
def test_bad_requests_are_refused_before_the_model_loads(stack, tmp_path, capsys, extra, message):
    path, labels = stack
    prompts = prompts_file(tmp_path, labels)
    argv = ["predict", str(path), "--prompts", str(prompts), "--out", str(tmp_path / "l.zarr")]
    err = refused(argv + extra, capsys)
    assert message in err
    assert not (tmp_path / "l.zarr").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "Cannot read prompts"),
        ('{"objects": []}', "holds no objects"),
        (
            '{"objects": [{"plane": [3], "points": [[4, 5]], "point_labels": [0]}]}',
            "positive point",
        ),
        ('{"objects": [{"plane": [3], "box": [1, 2, 3]}]}', "box must be"),
        ('{"objects": [{"id": 0, "plane": [3], "box": [1, 2, 3, 4]}]}', "at least 1"),
    ],
)
def test_bad_prompts_files_say_what_is_wrong(stack, tmp_path, capsys, content, message):
    path, _ = stack
    prompts = tmp_path / "p.json"
    prompts.write_text(content)
    argv = ["predict", str(path), "--prompts", str(prompts), "--out", str(tmp_path / "l.tif")]
    assert message in refused(argv, capsys)


def test_propagate_needs_a_prompts_file(stack, tmp_path, capsys):
    path, _ = stack
    argv = ["predict", str(path), "--propagate", "z", "--out", str(tmp_path / "l.tif")]
    assert "add --prompts" in refused(argv, capsys)


def test_a_prompts_file_propagated_through_z(stack, tmp_path, capsys, cells3d_cache):
    from napari_sam.batch.embedding import open_cached_session
    from napari_sam.engine.annotation.prompt_files import read_prompts, segment_prompts

    path, labels = stack
    cache = cells3d_cache[0]  # embeddings of the same volume: the run only decodes
    prompts = prompts_file(tmp_path, labels)
    out = tmp_path / "nuclei.zarr"
    argv = ["predict", str(path), "--prompts", str(prompts), "--propagate", "z"]
    argv += ["--cache", str(cache), "--out", str(out)]
    assert main(argv) == 0
    assert "2 objects" in capsys.readouterr().out
    written = np.asarray(zarr.open_array(str(out), mode="r"))
    assert written.shape == labels.shape and set(np.unique(written)) == {0, *NUCLEI}
    for label in NUCLEI:
        found, truth = written == label, labels == label
        assert np.count_nonzero(found & truth) / np.count_nonzero(found | truth) >= 0.75
    session = open_cached_session(tifffile.imread(path), cache, capacity=64)
    expected, _ = segment_prompts(session, read_prompts(prompts), axis=0)
    np.testing.assert_array_equal(written, expected)
    assert "already exists" in refused(argv, capsys)
    assert not (tmp_path / "nuclei.zarr.partial").exists()
