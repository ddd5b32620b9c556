"""The same results on a GPU as on the CPU, with the real default weights (marked ``gpu``).

Each test runs one job on the bundled DSB2018 nuclei image twice, with a CPU predictor and
with one on ``DEVICE``, and compares the two: the predictor's point, box and mask prompts;
segment-everything; the annotator deciding from an embedding read back from the on-disk
cache (which returns it on the CPU); tiled planes whose tiles come from that cache. A
device result only has to match the CPU to float rounding (cuDNN convolutions run in TF32
by default), so masks are compared by IoU and objects by matching, with the tolerances
below. Run on a machine with CUDA (only torch, numpy, scipy, scikit-image, pillow,
tifffile, zarr and pytest are needed; the default weights must be in the cache)::

    PYTHONPATH=src python -m pytest -m gpu -s tests/engine/test_gpu_parity.py

Skipped when ``torch.cuda.is_available()`` is False. ``NAPARI_SAM_TEST_DEVICE`` picks the
device (default ``cuda``; ``cuda:1``, ``mps``); ``NAPARI_SAM_TEST_DEVICE=cpu`` runs every
path with the CPU standing in for the device, to check that the code runs (the comparisons
are then exact). Each test prints its measured agreement (``-s`` shows it).
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_sam.demo import prompts_from_labels
from napari_sam.engine.metrics import average_precision, instance_overlap, mask_iou
from napari_sam.io.samples import load_dsb2018

DEVICE = os.environ.get("NAPARI_SAM_TEST_DEVICE", "cuda")
MIN_AREA = 200  # pixels: masks compared one by one (one flipped pixel moves IoU by < 0.5 %)
MASK_IOU = 0.99  # least IoU between a device mask and the CPU's
SCORE_TOLERANCE = 0.01  # largest difference in predicted IoU
OBJECT_IOU = 0.9  # segment-everything: a CPU object is found again at this IoU ...
FOUND_AGAIN = 0.95  # ... for at least this fraction of the CPU objects
AP_TOLERANCE = 0.02  # and AP@0.5 against the human labels moves by at most this
TILE, HALO = 192, 32  # 256-pixel windows on the 512x512 image: many nuclei cross borders


def _available(device: str) -> bool:
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not _available(DEVICE),
        reason=f"no {DEVICE} device here (NAPARI_SAM_TEST_DEVICE=cpu runs these on the CPU)",
    ),
]


@pytest.fixture(scope="module")
def sample():
    """(512, 512) uint16 image, its int32 labels, and one box and point per nucleus."""
    image, truth = load_dsb2018()
    ids, boxes, points = prompts_from_labels(truth)
    return image, truth, ids, boxes, points


@pytest.fixture(scope="module")
def predictors(default_weights):
    """(CPU predictor, device predictor) of the default weights."""
    from napari_sam.engine.prediction.predictor import Predictor

    # fp32 on both: auto would be bf16 on a CPU with native bf16 (docs/precision.md)
    cpu = Predictor("vit_t", device="cpu", precision="fp32")
    device = Predictor("vit_t", device=DEVICE, precision="fp32")
    assert next(device.model.module.parameters()).device.type == torch.device(DEVICE).type
    return cpu, device


@pytest.fixture(scope="module")
def cpu_embedding(predictors, sample):
    """The CPU's embedding of the image (computed once for all comparisons)."""
    return predictors[0].encode(sample[0])


@pytest.fixture(scope="module")
def cpu_everything(predictors, sample, cpu_embedding) -> np.ndarray:
    """(512, 512) int32 labels of segment-everything on the CPU, default settings."""
    return _segment(predictors[0], sample[0], embed=lambda window: cpu_embedding)[1].labels


def _largest(truth: np.ndarray, ids: np.ndarray, count: int) -> np.ndarray:
    """Indices into ``ids`` of the ``count`` largest objects (ties by id)."""
    areas = np.array([np.count_nonzero(truth == i) for i in ids])
    return np.argsort(-areas, kind="stable")[:count]


def _agreement(cpu, device) -> list[float]:
    """IoU of each CPU mask of at least MIN_AREA pixels with the device's; (..., rows, cols)."""
    cpu = np.asarray(cpu).reshape(-1, *np.shape(cpu)[-2:])
    device = np.asarray(device).reshape(cpu.shape)
    return [mask_iou(a, b) for a, b in zip(cpu, device) if np.count_nonzero(a) >= MIN_AREA]


def _assert_same_masks(name: str, cpu, device, least: int) -> None:
    ious = _agreement(cpu.masks, device.masks)
    gap = float(np.abs(np.asarray(cpu.scores) - np.asarray(device.scores)).max())
    print(
        f"{name} on {DEVICE}: {len(ious)} masks, IoU with the CPU's min {min(ious):.4f}, ", end=""
    )
    print(f"mean {np.mean(ious):.4f}; predicted IoU differs by {gap:.4f} at most")
    assert len(ious) >= least  # the comparison means something
    assert min(ious) >= MASK_IOU
    assert gap <= SCORE_TOLERANCE


def test_point_box_and_mask_prompts_give_the_cpu_masks(predictors, sample, cpu_embedding):
    image, truth, ids, boxes, points = sample
    chosen = _largest(truth, ids, 24)
    runs = []
    for predictor in predictors:
        embedding = cpu_embedding if predictor is predictors[0] else predictor.encode(image)
        predictor.set_embedding(embedding)
        point = predictor.predict_batch(points=points[chosen], multimask=True)
        box = predictor.predict_batch(boxes=boxes[chosen])
        runs.append((embedding, point, box))
    (_, cpu_point, cpu_box), (embedding, point, box) = runs
    assert embedding.features.device.type == torch.device(DEVICE).type
    _assert_same_masks("point prompts (3 candidates)", cpu_point, point, least=24)
    _assert_same_masks("box prompts", cpu_box, box, least=24)
    # A mask prompt: the CPU's best point logits refine both (the same input on both).
    best = cpu_point.scores.argmax(axis=1)
    logits = cpu_point.logits[np.arange(len(chosen)), best]
    refined = [
        predictor.predict_batch(points=points[chosen], mask_input=logits)
        for predictor in predictors
    ]
    _assert_same_masks("point + mask prompts", *refined, least=24)
    single = [
        predictor.predict(box=boxes[chosen[0]], mask_input=logits[0]) for predictor in predictors
    ]
    _assert_same_masks("one box + mask prompt", *single, least=1)


def _segment(predictor, image, tile=None, embed=None):
    """Segment everything with the default settings -> (Candidates, PlaneSegmentation)."""
    from napari_sam.engine.everything.segmenter import AutomaticSegmenter

    segmenter = AutomaticSegmenter(predictor)
    candidates = segmenter.initialise(image, tile=tile, halo=0 if tile is None else 64, embed=embed)
    return candidates, segmenter.generate(candidates)


def _assert_same_objects(name: str, cpu_labels, device_labels, truth) -> None:
    overlap = instance_overlap(device_labels, cpu_labels)
    found = len(overlap.matches(OBJECT_IOU)) / max(1, len(overlap.true_ids))
    ap_cpu = average_precision(cpu_labels, truth, 0.5)
    ap_device = average_precision(device_labels, truth, 0.5)
    print(
        f"{name} on {DEVICE}: {len(overlap.predicted_ids)} objects vs "
        f"{len(overlap.true_ids)} on the CPU, {found:.3f} of them found again at IoU "
        f"{OBJECT_IOU}; AP@0.5 {ap_device:.3f} vs {ap_cpu:.3f}"
    )
    assert len(overlap.true_ids) >= 60  # the image has 125 nuclei: a real segmentation
    assert found >= FOUND_AGAIN
    assert abs(ap_device - ap_cpu) <= AP_TOLERANCE


def test_segment_everything_finds_the_cpu_objects(predictors, sample, cpu_everything):
    image, truth = sample[:2]
    candidates, device = _segment(predictors[1], image)
    assert candidates.views[0].logits.device.type == torch.device(DEVICE).type
    _assert_same_objects("segment everything", cpu_everything, device.labels, truth)


def test_segment_everything_in_tiles_finds_the_cpu_objects(predictors, sample):
    """Four 256-pixel tiles with a 64-pixel halo: survivors merged across views."""
    image, truth = sample[:2]
    (_, cpu), (candidates, device) = (_segment(p, image, tile=256) for p in predictors)
    assert len(candidates.views) == 4
    kind = torch.device(DEVICE).type
    assert all(view.logits.device.type == kind for view in candidates.views)
    _assert_same_objects("segment everything, 256 px tiles", cpu.labels, device.labels, truth)


def _cached_session(predictor, data, path, tile=None):
    """An annotation session (tiled when ``tile``) whose embeddings persist in ``path``."""
    from napari_sam.engine.annotation.session import AnnotationSession
    from napari_sam.engine.annotation.tiled_session import TiledSession
    from napari_sam.io.embedding_cache import EmbeddingCache, cache_signature

    if tile is None:
        session = AnnotationSession(predictor, data)
    else:
        session = TiledSession(predictor, data, tile=tile, halo=HALO)
    signature = cache_signature(
        data,
        session.layout,
        session.model_id,
        session.normalization,
        tile=tile,
        halo=0 if tile is None else HALO,
        precision=predictor.precision,
    )
    cache = EmbeddingCache.open(path, signature, session.layout)
    if tile is None:
        session.store.backend = cache
    else:
        session.tile_backends = cache.tiles
    return session, cache


def _predictions(preview) -> SimpleNamespace:
    """All candidates of a preview's objects: masks (M, rows, cols) and scores (M,)."""
    return SimpleNamespace(
        masks=np.concatenate([o.prediction.masks for o in preview.objects]),
        scores=np.concatenate([o.prediction.scores for o in preview.objects]),
    )


def _no_encoder(*args, **kwargs):
    raise AssertionError("the encoder ran although the cache holds the embedding")


def test_the_annotator_decides_on_the_device_from_a_cached_embedding(
    predictors, sample, tmp_path, monkeypatch
):
    """Encoded on the device, written to the cache, read back on the CPU, decoded on the
    device: the same masks as a CPU session, for points, boxes and a label being corrected."""
    from napari_sam.engine.annotation.session import AnnotationSession

    image, truth, ids, boxes, points = sample
    stack = np.stack([image[::-1], image])  # plane 1 is the image
    cpu_predictor, device_predictor = predictors
    writer, cache = _cached_session(device_predictor, stack, tmp_path / "cache.zarr")
    writer.embed((1,))
    assert cache.is_complete((1,))

    reader, _ = _cached_session(device_predictor, stack, tmp_path / "cache.zarr")
    monkeypatch.setattr(device_predictor, "encode", _no_encoder)
    assert reader.store.get((1,)).features.device.type == "cpu"  # as the cache gives it
    reference = AnnotationSession(cpu_predictor, stack)
    chosen = _largest(truth, ids, 12)
    correcting = truth == ids[chosen[0]]
    for prompts in (
        dict(points=points[chosen], mode="per_point"),
        dict(boxes=boxes[chosen]),
        dict(mask_input=correcting),  # refines through the mask prompt
    ):
        cpu, device = (
            _predictions(session.preview((1,), **prompts)) for session in (reference, reader)
        )
        name = next(iter(prompts))
        _assert_same_masks(f"annotator from the cache, {name}", cpu, device, least=1)


def test_segment_everything_on_cached_embeddings_finds_the_cpu_objects(
    predictors, sample, cpu_embedding, cpu_everything, tmp_path, monkeypatch
):
    """The grid's state on the device, its embedding vectors read from the CPU."""
    from napari_sam.engine.everything.session import EverythingSession

    image, truth = sample[:2]
    device_predictor = predictors[1]
    writer, _ = _cached_session(device_predictor, image, tmp_path / "cache.zarr")
    writer.embed(())
    reader, _ = _cached_session(device_predictor, image, tmp_path / "cache.zarr")
    assert reader.normalization == cpu_embedding.normalization  # the CPU run's input
    monkeypatch.setattr(device_predictor, "encode", _no_encoder)
    device = EverythingSession.from_session(reader)
    candidates = device.initialise(())
    assert candidates.views[0].logits.device.type == torch.device(DEVICE).type
    labels = device.generate(()).labels
    _assert_same_objects("segment everything from the cache", cpu_everything, labels, truth)


def test_tiled_planes_from_a_tile_cache_give_the_cpu_masks(
    predictors, sample, tmp_path, monkeypatch
):
    """Objects across tile borders: re-centred windows are encoded on the device, grid tiles
    come from the cache on the CPU; whole-plane masks as a tiled CPU session's."""
    from napari_sam.engine.annotation.tiled_session import TiledSession

    image, truth, ids, boxes, points = sample
    cpu_predictor, device_predictor = predictors
    writer, cache = _cached_session(device_predictor, image, tmp_path / "tiles.zarr", TILE)
    writer.embed(())
    assert len(cache.tiles(()).completed()) == 9
    reader, _ = _cached_session(device_predictor, image, tmp_path / "tiles.zarr", TILE)
    assert reader.has_embedding(())
    reference = TiledSession(cpu_predictor, image, tile=TILE, halo=HALO)
    order = _largest(truth, ids, len(ids))
    # Inside one tile's interior, 8 px or more from its borders: decoded on that cached tile
    # alone, so the device decodes an embedding read from the cache without any encoding.
    inside = [i for i in order if _distance_to_borders(boxes[i]) >= 8][:4]
    assert len(inside) == 4
    with monkeypatch.context() as patch:
        patch.setattr(device_predictor, "encode", _no_encoder)
        cpu, device = (
            _predictions(session.preview((), boxes=boxes[inside]))
            for session in (reference, reader)
        )
    _assert_same_masks("tiled plane, boxes inside cached tiles", cpu, device, least=4)
    crossing = [i for i in order if _distance_to_borders(boxes[i]) < 0][:8]
    assert len(crossing) == 8
    for prompts in (dict(boxes=boxes[crossing]), dict(points=points[crossing], mode="per_point")):
        cpu, device = (session.preview((), **prompts) for session in (reference, reader))
        assert len(device.objects) == len(cpu.objects) == 8
        masks = [np.stack([o.mask for o in p.objects]) for p in (cpu, device)]
        ious = _agreement(*masks)
        print(f"tiled plane, {next(iter(prompts))} on {DEVICE}: IoU min {min(ious):.4f}")
        assert len(ious) == 8
        assert min(ious) >= MASK_IOU


def _distance_to_borders(box: np.ndarray) -> float:
    """Pixels from a box (row0, col0, row1, col1, inclusive) to the nearest tile border
    (rows or cols TILE and 2 * TILE); negative when the box crosses one."""
    distances = []
    for start, stop in ((box[0], box[2]), (box[1], box[3])):
        for edge in (TILE, 2 * TILE):
            distances.append(
                -1.0 if start < edge <= stop else min(abs(start - edge), abs(stop + 1 - edge))
            )
    return min(distances)
