"""Batch segment-everything with an instance head: ``--learn K`` and ``--head FILE``.

In-process runs (workers=0) of the real engine on the tiny random SAM. Learning trains a
head of width 8 for a few steps (the recipe is swapped for a tiny one), so what is checked
is the plumbing: where the head is saved, which planes it learns from, that a rerun reuses
it and resumes the store, that the store's signature follows the head file, and that every
slice is what the head segmenter gives for that plane.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_sam.batch.everything import segment_stack
from napari_sam.batch.head_tasks import learnt_head_path
from napari_sam.batch.settings import Execution, StackSettings
from napari_sam.batch.tasks import StackSource
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.instances.head import HeadCard, InstanceHead, TrainedHead, load_head
from napari_sam.engine.instances.segmenter import HeadSegmenter
from napari_sam.engine.metrics import average_precision
from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.prediction.planes import stack_normalization
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import CacheMismatchError, CheckpointError, InvalidInputError
from napari_sam.training import head_distillation
from napari_sam.training.head_settings import HeadTrainingSettings
from tiny_sam import random_model, tiny_architecture

SLICES = 4
TINY_RECIPE = HeadTrainingSettings(steps=3, batch_size=1, width=8, augment=1)
LOOSE = EverythingSettings(  # the tiny random SAM's masks mean nothing: keep them all
    points_per_side=4,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    keep_iou_floor=-10.0,
    drop_background=False,
    max_area_fraction=1.0,
    keep_stability_floor=0.0,
)


@functools.cache
def tiny_factory():
    return functools.partial(random_model, tiny_architecture(), seed=0)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory, make_image):
    base = make_image((64, 64), seed=4)
    stack = np.stack([np.roll(base, 2 * z, axis=0) for z in range(SLICES)])
    path = tmp_path_factory.mktemp("head_stack") / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def run(stack_file, out, **options):
    overwrite, z_range = options.pop("overwrite", False), options.pop("z_range", None)
    settings = StackSettings(model=tiny_factory(), settings=LOOSE, **{"linking": None, **options})
    return segment_stack(
        StackSource(str(stack_file)),
        out,
        settings,
        Execution(threads=1),
        z_range=z_range,
        overwrite=overwrite,
    )


def read(out, name):
    return np.asarray(zarr.open_group(out, mode="r")[name][...])


def tiny_training(monkeypatch, learnt=None):
    """Distillation trains with TINY_RECIPE; ``learnt`` collects each call's planes."""
    train_head = head_distillation.train_head

    def quick(model, images, settings=None, **options):
        if learnt is not None:
            learnt.append([image.name for image in images])
        return train_head(model, images, TINY_RECIPE, **options)

    monkeypatch.setattr(head_distillation, "train_head", quick)


def no_learning(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the head should have been reused, not learnt again")

    monkeypatch.setattr(head_distillation, "distil_head", refuse)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: learning runs outside Execution(threads=1), and two threads
    on our shared 2-core machines made its steps several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def learnt(stack_file, tmp_path_factory):
    """A --learn 2 run: (out folder, summary, planes of the teacher's labels, progress)."""
    out = tmp_path_factory.mktemp("learnt") / "labels.zarr"
    planes, stages = [], []
    with pytest.MonkeyPatch.context() as monkeypatch:
        tiny_training(monkeypatch, planes)
        summary = segment_stack(
            StackSource(str(stack_file)),
            out,
            StackSettings(model=tiny_factory(), settings=LOOSE, learn=2, linking=None),
            Execution(threads=1),
            progress=lambda stage, done, total: stages.append((stage, done, total)),
        )
    return out, summary, planes, stages


def test_learn_saves_the_head_beside_the_labels(learnt, stack_file):
    out, summary, planes, stages = learnt
    weights, card_file = out.parent / "labels.head.pt", out.parent / "labels.head.json"
    assert learnt_head_path(out) == weights
    assert weights.is_file() and card_file.is_file()
    assert summary.method == f"head-apg {weights.resolve()}"
    assert summary.method.startswith("head-apg")
    assert (summary.slices, summary.segmented, summary.reused) == (SLICES, SLICES, 0)
    assert planes == [["z=1", "z=3"]]  # the teacher found objects on both planes
    card = json.loads(card_file.read_text())
    assert card["mode"] == "distilled" and card["encoder"] == "random-seed0"
    assert card["width"] == TINY_RECIPE.width
    assert card["planes"] == 2 and card["objects"] >= 2
    # spread_planes(4, 2) == [1, 3]; the data is named by file and fingerprint.
    assert card["trained_on"].startswith("stack.tif (")
    assert re.search(
        r"\), random-seed0, planes 1,3, teacher settings [0-9a-f]{8}$", card["trained_on"]
    )
    assert [s for s in stages if s[0] == "teacher"] == [("teacher", 1, 2), ("teacher", 2, 2)]
    assert ("encoding", 2, 2) in stages and ("training", 3, 3) in stages
    assert ("segment", SLICES, SLICES) in stages and stages[-1] == ("link", SLICES, SLICES)
    learning, segmenting = stages.index(("training", 3, 3)), stages.index(("segment", 0, SLICES))
    assert learning < segmenting  # the head is learnt before any slice is segmented
    signature = zarr.open_group(out, mode="r").attrs["napari_sam"]
    assert signature["settings"]["method"] == "head-apg"
    assert signature["settings"]["head_sha256"] == file_sha256(weights)
    assert signature["settings"]["points_per_side"] == LOOSE.points_per_side
    assert read(out, "complete").tolist() == [1] * SLICES
    assert read(out, "objects").tolist() == [int(s.max()) for s in read(out, "sections")]


def copy_of(learnt, tmp_path):
    """The learnt run's store and head in a folder of their own (tests change them)."""
    out = tmp_path / "labels.zarr"
    shutil.copytree(learnt[0], out)
    for suffix in (".pt", ".json"):
        shutil.copy(learnt[0].parent / f"labels.head{suffix}", tmp_path)
    return out


def test_a_rerun_reuses_the_head_and_resumes(learnt, stack_file, tmp_path, monkeypatch):
    out = copy_of(learnt, tmp_path)
    head_bytes = (tmp_path / "labels.head.pt").read_bytes()
    no_learning(monkeypatch)
    summary = run(stack_file, out, learn=2)
    assert (summary.segmented, summary.reused) == (0, SLICES)
    assert summary.method == f"head-apg {(tmp_path / 'labels.head.pt').resolve()}"
    assert (tmp_path / "labels.head.pt").read_bytes() == head_bytes
    np.testing.assert_array_equal(read(out, "sections"), read(learnt[0], "sections"))


def test_learning_other_planes_needs_overwrite(learnt, stack_file, tmp_path, monkeypatch):
    out = copy_of(learnt, tmp_path)
    before = load_head(tmp_path / "labels.head.pt").card
    with pytest.raises(InvalidInputError, match="holds a head learnt for other data or planes"):
        run(stack_file, out, learn=3)
    with pytest.raises(InvalidInputError, match="Pass --overwrite"):
        run(stack_file, out, learn=3)
    assert load_head(tmp_path / "labels.head.pt").card == before  # left alone
    planes = []
    tiny_training(monkeypatch, planes)
    summary = run(stack_file, out, learn=3, overwrite=True)
    card = load_head(tmp_path / "labels.head.pt").card
    assert "planes 0,2,3, " in card.trained_on  # spread_planes(4, 3)
    assert len(planes) == 1 and set(planes[0]) <= {"z=0", "z=2", "z=3"}
    assert (summary.segmented, summary.reused) == (SLICES, 0)  # another head: a new store
    settings = zarr.open_group(out, mode="r").attrs["napari_sam"]["settings"]
    assert settings["head_sha256"] == file_sha256(tmp_path / "labels.head.pt")


def test_a_head_and_learning_exclude_each_other(stack_file, tmp_path):
    with pytest.raises(InvalidInputError, match=r"not both"):
        run(stack_file, tmp_path / "both.zarr", learn=2, head=str(tmp_path / "h.pt"))


def made_head(model_id: str, plane, normalization, quantile: float = 0.15) -> TrainedHead:
    """A random head whose maps hold a few seeds on these planes.

    A random head's centre map is noise around one level; shifting it so that only its
    lowest ``quantile`` of cells count as object centres, with the boundary map its
    mirror and the foreground everywhere, gives several watershed instances per plane.
    """
    torch.manual_seed(0)
    network = InstanceHead(256, 8).eval()
    embedding = Predictor(random_model(tiny_architecture(), seed=0)).encode(plane, normalization)
    with torch.no_grad():
        logits = network(embedding.features.float())[0, 1, :16, :16]  # the 64 x 64 plane
        out = network.out
        out.weight[0], out.bias[0] = 0.0, 10.0  # foreground everywhere
        out.bias[1] -= float(torch.quantile(logits, quantile))
        out.weight[2], out.bias[2] = -out.weight[1], -out.bias[1]  # boundary = 1 - centre
    card = HeadCard(
        encoder=model_id, trained_on="made", mode="labels", planes=1, objects=1, width=8
    )
    return TrainedHead(network, card)


@pytest.fixture(scope="module")
def stack_planes(stack_file):
    stack = StackSource(str(stack_file)).open()
    planes = np.asarray(stack.planes)
    return planes, stack_normalization(stack.planes, stack.layout)


def test_a_given_head_segments_every_slice_as_the_head_segmenter(
    stack_file, stack_planes, tiny_model, tmp_path
):
    planes, normalization = stack_planes
    head = made_head(tiny_model.model_id, planes[0], normalization)
    path = head.save(tmp_path / "heads" / "made")
    out = tmp_path / "ais.zarr"
    summary = run(stack_file, out, head=str(path), head_mode="ais")
    assert summary.method == f"head-ais {path.resolve()}"
    assert (summary.segmented, summary.reused) == (SLICES, 0)
    sections = read(out, "sections")
    segmenter = HeadSegmenter(Predictor(tiny_model), head, "ais")
    counts = []
    for z in range(SLICES):
        expected = segmenter.segment(planes[z], normalization).labels
        counts.append(int(expected.max()))
        assert int(sections[z].max()) == counts[-1]
        assert average_precision(sections[z], expected, 0.99) == 1.0, z
        np.testing.assert_array_equal(sections[z] > 0, expected > 0)
    assert min(counts) >= 2, counts  # the comparison is between real partitions
    assert summary.sections == sum(counts) == summary.objects  # --no-link: one id each
    settings = zarr.open_group(out, mode="r").attrs["napari_sam"]["settings"]
    assert settings["method"] == "head-ais" and settings["head_sha256"] == file_sha256(path)


def test_another_head_file_is_another_store(stack_file, stack_planes, tiny_model, tmp_path):
    planes, normalization = stack_planes
    path = made_head(tiny_model.model_id, planes[0], normalization).save(tmp_path / "head")
    out = tmp_path / "labels.zarr"
    first = run(stack_file, out, head=str(path), head_mode="ais", z_range=(0, 2))
    assert first.segmented == 2
    made_head(tiny_model.model_id, planes[0], normalization, quantile=0.3).save(path)
    with pytest.raises(CacheMismatchError, match="head_sha256"):
        run(stack_file, out, head=str(path), head_mode="ais", z_range=(0, 2))
    again = run(stack_file, out, head=str(path), head_mode="ais", z_range=(0, 2), overwrite=True)
    assert (again.segmented, again.reused) == (2, 0)
    # The mode is part of the signature too.
    with pytest.raises(CacheMismatchError, match="head-ais"):
        run(stack_file, out, head=str(path), head_mode="apg", z_range=(0, 2))


def foreign_head(stack_planes, tmp_path):
    planes, normalization = stack_planes
    return made_head("vit_b@0123", planes[0], normalization).save(tmp_path / "foreign")


def test_a_head_of_another_encoder_is_refused(stack_file, stack_planes, tmp_path):
    out = tmp_path / "foreign.zarr"
    with pytest.raises(CheckpointError, match="trained on embeddings of vit_b@0123"):
        run(stack_file, out, head=str(foreign_head(stack_planes, tmp_path)), head_mode="ais")
    assert not out.exists() or read(out, "complete").sum() == 0


def test_a_head_of_another_encoder_is_refused_before_any_slice(
    stack_file, stack_planes, tmp_path, monkeypatch
):
    from napari_sam.batch import head_tasks

    segmented = []
    segment = head_tasks.segment_with_head

    def spy(*args, **kwargs):
        segmented.append(1)
        return segment(*args, **kwargs)

    monkeypatch.setattr(head_tasks, "segment_with_head", spy)
    out = tmp_path / "foreign.zarr"
    with pytest.raises(CheckpointError, match="trained on embeddings of vit_b@0123"):
        run(stack_file, out, head=str(foreign_head(stack_planes, tmp_path)), head_mode="ais")
    assert segmented == [] and not (out / "zarr.json").exists()


def test_a_missing_head_file_is_refused_before_the_store(stack_file, tmp_path):
    out = tmp_path / "missing.zarr"
    with pytest.raises(InvalidInputError, match=r"No instance head at .*none\.pt"):
        run(stack_file, out, head=str(tmp_path / "none.pt"))
    assert not (out / "zarr.json").exists() and not (out / ".zattrs").exists()


def test_stack_settings_default_to_no_head():
    settings = StackSettings()
    assert (settings.head, settings.head_mode, settings.learn) == (None, "apg", None)
    assert replace(settings, learn=2).learn == 2
