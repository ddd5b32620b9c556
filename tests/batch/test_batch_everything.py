"""Batch segment-everything: store layout, resume after SIGKILL, a 2-process LocalCluster, errors.

The per-plane segmenter here is a stand-in that still runs the tiny random SAM (its
embedding decides the labels), so equality across processes covers model loading on
workers; the real engine is exercised in tests/test_cli_everything.py.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from skimage.measure import label as connected_components

from napari_sam.batch.everything import segment_stack
from napari_sam.batch.settings import Execution, StackSettings
from napari_sam.batch.tasks import StackSource
from napari_sam.engine.everything.linking import LinkingSettings, link_slices
from napari_sam.errors import CacheMismatchError, InvalidInputError
from tiny_sam import random_model, tiny_architecture

SLICES = 6


@functools.cache
def tiny_factory():
    return functools.partial(random_model, tiny_architecture(), seed=0)


@dataclass(frozen=True)
class StandInSettings:
    """Settings of the stand-in segmenter (recorded like EverythingSettings)."""

    points_per_side: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def settings():
    return StandInSettings()


def embedding_segmenter(predictor, plane, normalization, settings, *, tile=None, halo=0):
    """Stand-in for segment_plane: bright pixels, split where the model's features disagree."""
    import torch

    embedding = predictor.encode(plane, normalization)
    rows, cols = embedding.input_size
    features = torch.nn.functional.interpolate(embedding.features[:, :1], scale_factor=16)[
        0, 0, :rows, :cols
    ]
    features = torch.nn.functional.interpolate(features[None, None], size=plane.shape[:2])[
        0, 0
    ].numpy()
    grey = normalization.apply(plane)[..., 0]
    labels = connected_components((grey > 100) & (features > np.median(features)))
    delay = float(os.environ.get("NAPARI_SAM_TEST_SLICE_DELAY", "0"))
    time.sleep(delay)  # lets the kill test land mid-run
    return type("Segmentation", (), {"labels": labels.astype(np.int32)})


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory, make_image):
    base = make_image((64, 80), seed=4)
    stack = np.stack([np.roll(base, 2 * z, axis=0) for z in range(SLICES)])  # blobs drifting in z
    path = tmp_path_factory.mktemp("stack") / "stack.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"})
    return path


def run(stack_file, out, execution=None, **options):
    stack_settings = StackSettings(
        model=tiny_factory(), settings=settings(), linking=options.pop("linking", LinkingSettings())
    )
    return segment_stack(
        StackSource(str(stack_file)),
        out,
        stack_settings,
        execution or Execution(threads=1),
        segmenter=embedding_segmenter,
        **options,
    )


def read(out, name):
    return np.asarray(zarr.open_group(out, mode="r")[name][...])


def completed(out) -> int:
    try:
        return int(read(out, "complete").sum())
    except (FileNotFoundError, KeyError):  # not created yet
        return 0


@pytest.fixture(scope="module")
def reference(stack_file, tmp_path_factory):
    """An uninterrupted in-process run (torch on 1 thread, as on the cluster's workers)."""
    out = tmp_path_factory.mktemp("reference") / "labels.zarr"
    summary = run(stack_file, out)
    return out, summary


def test_store_holds_sections_flags_and_linked_labels(reference):
    out, summary = reference
    sections, labels = read(out, "sections"), read(out, "labels")
    assert read(out, "complete").tolist() == [1] * SLICES
    assert read(out, "objects").tolist() == [int(s.max()) for s in sections]
    assert summary.sections == int(read(out, "objects").sum()) > SLICES
    np.testing.assert_array_equal(labels, link_slices(sections).labels)
    assert labels.dtype == np.int32 and summary.objects == int(labels.max()) > 0
    assert (summary.slices, summary.segmented, summary.reused) == (SLICES, SLICES, 0)
    assert 0 < summary.slice_seconds <= summary.segment_seconds
    attrs = zarr.open_group(out, mode="r").attrs
    assert attrs["napari_sam"]["model_id"] == "random-seed0"
    assert attrs["napari_sam"]["settings"]["points_per_side"] == 4
    assert attrs["run"]["objects"] == summary.objects
    assert attrs["run"]["linking"] == LinkingSettings().to_dict()
    assert json.loads(json.dumps(attrs["run"]))["execution"] == "in-process"


def test_partial_run_then_resume_equals_uninterrupted(stack_file, reference, tmp_path):
    out = tmp_path / "labels.zarr"
    part = run(stack_file, out, z_range=(1, 4))
    assert read(out, "complete").tolist() == [0, 1, 1, 1, 0, 0]
    assert read(out, "labels")[[0, 4, 5]].max() == 0 and part.slices == 3
    rest = run(stack_file, out)
    assert (rest.segmented, rest.reused) == (3, 3)
    for name in ("sections", "labels", "objects"):
        np.testing.assert_array_equal(read(out, name), read(reference[0], name))


def test_no_link_numbers_every_section_apart(stack_file, reference, tmp_path):
    out = tmp_path / "apart.zarr"
    summary = run(stack_file, out, linking=None)
    assert summary.objects == summary.sections == reference[1].sections
    assert zarr.open_group(out, mode="r").attrs["run"]["linking"] is None


def test_killed_run_resumes_to_the_same_labels(stack_file, reference, tmp_path):
    out = tmp_path / "killed.zarr"
    script = (
        "import sys, test_batch_everything as t; from pathlib import Path; "
        "t.run(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]),
        "NAPARI_SAM_TEST_SLICE_DELAY": "0.5",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(stack_file), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while completed(out) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = int(read(out, "complete").sum())
    assert 2 <= done < SLICES, "the kill should land mid-run"
    resumed = run(stack_file, out)
    assert (resumed.segmented, resumed.reused) == (SLICES - done, done)
    for name in ("sections", "labels", "complete"):
        np.testing.assert_array_equal(read(out, name), read(reference[0], name))


def test_two_local_worker_processes_give_the_same_labels(stack_file, reference, tmp_path):
    out = tmp_path / "cluster.zarr"
    summary = run(stack_file, out, Execution(workers=2, threads=1))
    assert summary.execution == "2 local workers" and summary.segmented == SLICES
    for name in ("sections", "labels", "objects"):
        np.testing.assert_array_equal(read(out, name), read(reference[0], name))


def test_errors(stack_file, reference, tmp_path):
    other = StackSettings(model=tiny_factory(), settings=StandInSettings(points_per_side=5))
    with pytest.raises(CacheMismatchError, match=r"settings: store has .*'points_per_side': 4"):
        segment_stack(
            StackSource(str(stack_file)), reference[0], other, segmenter=embedding_segmenter
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("a user's file")  # an empty folder is used
    with pytest.raises(
        CacheMismatchError, match="exists but is not a napari-sam segment-everything store"
    ):
        run(stack_file, tmp_path / "other")
    with pytest.raises(InvalidInputError, match=r"z-range 4:9 does not fit slices 0..6"):
        run(stack_file, tmp_path / "z.zarr", z_range=(4, 9))
    with pytest.raises(InvalidInputError, match="workers must be >= 0"):
        run(stack_file, tmp_path / "w.zarr", Execution(workers=-1))
    tz = tmp_path / "tz.tif"
    tifffile.imwrite(tz, np.zeros((2, 2, 16, 16), np.uint16), metadata={"axes": "TZYX"})
    with pytest.raises(
        InvalidInputError, match="has axes 'tzyx': segment-everything links slices along one"
    ):
        run(tz, tmp_path / "tz.zarr")


def test_overwrite_replaces_a_store_for_other_settings(stack_file, reference, tmp_path):
    out = tmp_path / "again.zarr"
    run(stack_file, out, z_range=(0, 1))
    other = StackSettings(model=tiny_factory(), settings=StandInSettings(points_per_side=5))
    summary = segment_stack(
        StackSource(str(stack_file)),
        out,
        other,
        Execution(threads=1),
        z_range=(0, 2),
        overwrite=True,
        segmenter=embedding_segmenter,
    )
    assert (summary.segmented, summary.reused) == (2, 0)
    assert zarr.open_group(out, mode="r").attrs["napari_sam"]["settings"]["points_per_side"] == 5


def test_a_local_cluster_leaves_the_environment_alone(monkeypatch):
    import os

    from napari_sam.batch.cluster import cluster_client

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = dict(os.environ)
    with cluster_client(1, None):
        pass
    assert dict(os.environ) == before  # distributed sets OMP_NUM_THREADS=1 for its workers
