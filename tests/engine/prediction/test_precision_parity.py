"""What bf16 encoding does to SAM's masks: real MobileSAM weights on the DSB2018 image
(issue 18; the numbers and their discussion are in docs/precision.md).

The encoder runs once in fp32 and once under bf16 autocast (on CPUs without native bf16,
such as AVX2-only ones, emulated: correct, but about a minute and a half, so once per
module); the decoder decodes both embeddings in fp32. Prompts are those of Meta's
reference fixtures (``dsb2018_vit_t.npz``: a single point with three candidates, a box, a
point + a negative point, a box refined with its own logits); our fp32 masks equal the
reference's (test_parity.py), so bf16 is compared with both. The encoder's convolutions
stay float32 under autocast (``network.common.Float32Conv2d``). The issue's bar, mean mask
IoU >= 0.99 and worst >= 0.95, holds for boxes, refined boxes, point + negative point, the
mask a single click shows (its best-scored candidate) and every candidate SAM itself calls
stable; it does not hold for all three candidates of a click (two of 72 are masks of
stability 0.02 and 0.07 that move), which are held to the level measured, so that a
regression still fails. Segment-everything with every grid point decoded keeps AP@0.5
within 0.01 of fp32's (measured: the same, 0.6000, with AMX; 0.0038 below emulated).
The same comparison on 381 objects of five image sets, with a noise floor, is
benchmarks/eval_precision.py (docs/precision.md); the last tests hold it on one image.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precision, mask_iou

FAMILIES = ("point", "box", "pos_neg", "box_refined")
ISSUE_BAR = (0.99, 0.95)  # (mean, worst) mask IoU per prompt family, asked for by issue 18
# (mean, worst) bf16 must reach against fp32 and the reference, per family; below the
# issue's bar where it is not met, under the measured values with room for the rounding
# of other CPUs' bf16 kernels. Measured on a 2-core Intel Xeon with AMX (native bf16) and
# with oneDNN limited to AVX2 (emulated, as on AVX2-only CPUs), with channel-last
# convolution weights: docs/precision.md.
BARS = {
    "box": ISSUE_BAR,  # measured 0.9991 / 0.9951 (AMX), 0.9993 / 0.9959 (AVX2)
    "box_refined": ISSUE_BAR,  # measured 0.9988 / 0.9931, 0.9989 / 0.9931
    "point": (0.985, 0.75),  # all three candidates; measured 0.9933 / 0.8275, 0.9930 / 0.8504
    "pos_neg": ISSUE_BAR,  # measured 0.9981 / 0.9775, 0.9985 / 0.9886
}
STABLE = 0.95  # SAM's stability threshold for a confident mask (segment-everything's)
AP_TOLERANCE = 0.01  # |AP@0.5 bf16 - fp32|, every grid point; measured 0 (AMX), 0.0038 (AVX2)


@pytest.fixture(scope="module")
def reference(reference_dir):
    return dict(np.load(reference_dir / "dsb2018_vit_t.npz"))


@pytest.fixture(scope="module")
def predictors(dsb_every_point):
    """(fp32, bf16) predictors sharing one loaded model."""
    from napari_sam.engine.prediction.predictor import Predictor

    fp32 = dsb_every_point[0]
    return fp32, Predictor(fp32.model, precision="bf16")


@pytest.fixture(scope="module")
def embeddings(predictors, reference, dsb_every_point):
    """{"fp32": Embedding, "bf16": Embedding} of the reference image (one encode each; the
    fp32 one is the shared fixture's)."""
    return {"fp32": dsb_every_point[1], "bf16": predictors[1].encode(reference["image"])}


def decode_families(predictor, embedding, reference) -> dict[str, list[np.ndarray]]:
    """Masks of each reference case: family -> one (N, rows, cols) bool array per object."""
    predictor.set_embedding(embedding)
    points, negatives, boxes = (
        reference["points_rc"],
        reference["negative_points_rc"],
        reference["boxes_rc"],
    )
    masks: dict[str, list[np.ndarray]] = {family: [] for family in FAMILIES}
    for i in range(len(points)):
        masks["point"].append(predictor.predict(points=points[i : i + 1], multimask=True).masks)
        box = predictor.predict(box=boxes[i])
        masks["box"].append(box.masks)
        both = np.stack([points[i], negatives[i]])
        masks["pos_neg"].append(predictor.predict(points=both, point_labels=[1, 0]).masks)
        refined = predictor.predict(box=boxes[i], mask_input=box.logits[0])
        masks["box_refined"].append(refined.masks)
    return masks


@pytest.fixture(scope="module")
def decoded(predictors, embeddings, reference):
    fp32 = predictors[0]
    return {name: decode_families(fp32, embeddings[name], reference) for name in embeddings}


def reference_masks(reference, family: str) -> np.ndarray:
    """(24, N, 512, 512) bool masks of the reference for one family."""
    masks = np.unpackbits(reference[f"{family}_masks"], axis=-1)[..., :512].astype(bool)
    return masks if family == "point" else masks[:, None]


def ious(ours: list[np.ndarray], theirs) -> list[float]:
    return [mask_iou(a, b) for mine, other in zip(ours, theirs) for a, b in zip(mine, other)]


def test_bf16_embedding_is_float32_near_fp32(embeddings):
    fp32, bf16 = embeddings["fp32"], embeddings["bf16"]
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert str(bf16.features.dtype) == "torch.float32"
    difference = (bf16.features - fp32.features).abs()
    print(
        f"bf16 embedding against fp32: max abs {float(difference.max()):.4f}, mean abs "
        f"{float(difference.mean()):.5f} (fp32 std {float(fp32.features.std()):.4f})"
    )
    assert float(difference.mean()) < 0.001  # measured 0.0004 (0.0014 with bf16 convolutions)
    assert float(difference.max()) < 0.02  # measured 0.005 (0.024)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_masks_against_fp32_and_the_reference(decoded, reference, family):
    bf16 = decoded["bf16"][family]
    against_fp32 = ious(bf16, decoded["fp32"][family])
    against_reference = ious(bf16, reference_masks(reference, family))
    print(
        f"{family}: bf16 vs fp32 mean IoU {np.mean(against_fp32):.4f} worst "
        f"{np.min(against_fp32):.4f}; bf16 vs reference mean {np.mean(against_reference):.4f} "
        f"worst {np.min(against_reference):.4f}"
    )
    mean, worst = BARS[family]
    for values in (against_fp32, against_reference):
        assert np.mean(values) >= mean
        assert np.min(values) >= worst


@pytest.fixture(scope="module")
def clicks(predictors, embeddings, reference):
    """{"fp32": [...], "bf16": [...]}: a click's three candidates on each reference point."""
    fp32 = predictors[0]
    results = {}
    for precision, embedding in embeddings.items():
        fp32.set_embedding(embedding)
        results[precision] = [
            fp32.predict(points=point[None], multimask=True) for point in reference["points_rc"]
        ]
    return results


def test_the_mask_a_click_shows_meets_the_issues_bar(clicks):
    """The best-scored of a click's three candidates (what the annotator shows): measured
    mean IoU 0.9994, worst 0.9975 against fp32 (the same candidate chosen every time)."""
    pairs = list(zip(clicks["bf16"], clicks["fp32"]))
    values = [mask_iou(a.best_mask, b.best_mask) for a, b in pairs]
    score_error = max(float(np.abs(a.scores - b.scores).max()) for a, b in pairs)
    print(
        f"point, mask shown: mean IoU {np.mean(values):.4f}, worst {np.min(values):.4f}, "
        f"predicted IoU within {score_error:.4f}"
    )
    assert np.mean(values) >= ISSUE_BAR[0] and np.min(values) >= ISSUE_BAR[1]
    assert score_error <= 0.015  # measured 0.0078 (0.0066 emulated on AVX2)


def test_every_stable_candidate_of_a_click_meets_the_issues_bar(clicks):
    """A click's candidates that SAM calls stable (stability score >= 0.95 in fp32: the mask
    barely changes between logit thresholds -1 and +1) keep the issue's bar; the two that
    miss it in the "point" family are unstable (stability 0.02 and 0.07 measured), masks
    segment-everything would reject, whose edges lie where the logits are flat near zero.
    Measured: 41 of 72 stable, mean 0.9993, worst 0.9957."""
    values, unstable = [], []
    for ours, base in zip(clicks["bf16"], clicks["fp32"]):
        for j in range(len(base.masks)):
            logits = np.asarray(base.logits[j])
            stability = (logits > 1).sum() / max(int((logits > -1).sum()), 1)
            iou = mask_iou(ours.masks[j], base.masks[j])
            (values if stability >= STABLE else unstable).append(iou)
    print(
        f"stable candidates: {len(values)} of {len(values) + len(unstable)}, mean IoU "
        f"{np.mean(values):.4f}, worst {np.min(values):.4f}; unstable worst {np.min(unstable):.4f}"
    )
    assert len(values) >= 30  # measured 41: the check is about most candidates
    assert np.mean(values) >= ISSUE_BAR[0] and np.min(values) >= ISSUE_BAR[1]


def segment(predictor, embedding, settings: EverythingSettings):
    segmenter = AutomaticSegmenter(predictor, settings)
    plane = np.zeros(embedding.original_size)
    candidates = segmenter.initialise(plane, embed=lambda window: embedding)
    return candidates, segmenter.generate(candidates)


def test_segment_everything_ap_stays_near_fp32(predictors, embeddings, reference, dsb_every_point):
    """Every grid point decoded (a deterministic grid; the default order is adaptive and
    moves by about 0.02 with any small change of the embedding, docs/precision.md)."""
    settings = EverythingSettings().every_point()
    found = {}
    for precision, embedding in embeddings.items():
        if precision == "fp32":  # decoded once for the whole run
            candidates = dsb_every_point[2]
            result = AutomaticSegmenter(predictors[0], settings).generate(candidates)
        else:
            candidates, result = segment(predictors[0], embedding, settings)
        assert candidates.points_decoded == 1024
        found[precision] = (average_precision(result.labels, reference["labels"], 0.5), result)
        ap, result = found[precision]
        print(
            f"segment everything, every point, {precision}: AP@0.5 {ap:.4f}, {result.count} objects"
        )
    assert abs(found["bf16"][0] - found["fp32"][0]) <= AP_TOLERANCE
    assert abs(found["bf16"][1].count - found["fp32"][1].count) <= 3  # measured 123 and 123


NOISE_IMAGE = ("scratch_cells", "scratch cells[z=1]")  # label-free cells: the hardest set


@pytest.fixture(scope="module")
def noise_floor(predictors):
    """{"bf16": ious, "noise": ious} per family on an image outside the reference
    fixture: bf16, and fp32 after each pixel moved by one grey level (-1, 0, +1 of 255),
    each against fp32 (the measurement of benchmarks/eval_precision.py, on one image)."""
    from napari_sam.engine.prediction.preprocess import Normalization
    from napari_sam.training.evaluation import _box, _neighbour_points, interior_point
    from napari_sam.training.image_sets import load_image_set

    (item,) = [i for i in load_image_set(NOISE_IMAGE[0]).images if i.name == NOISE_IMAGE[1]]
    ids = item.object_ids(30)
    ids = np.sort(np.random.default_rng(0).choice(ids, min(24, len(ids)), replace=False))
    truth = item.labels[None] == ids[:, None, None]
    points = np.stack([interior_point(mask) for mask in truth])
    boxes = np.stack([_box(mask) for mask in truth])
    negatives = _neighbour_points(item.labels, ids)
    rgb = item.normalization.apply(item.image)
    noise = np.random.default_rng(1).integers(-1, 2, rgb.shape[:2])[..., None]
    noisy = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    fp32, bf16 = predictors
    identity = Normalization(0.0, 255.0)
    embeddings = {
        "fp32": fp32.encode(rgb, identity),
        "bf16": bf16.encode(rgb, identity),
        "noise": fp32.encode(noisy, identity),
    }
    masks = {}
    for name, embedding in embeddings.items():
        fp32.set_embedding(embedding)
        click = fp32.predict_batch(points=points[:, None], multimask=True)
        both = fp32.predict_batch(
            points=np.stack([points, negatives], axis=1),
            point_labels=np.tile([1, 0], (len(points), 1)),
        )
        masks[name] = {
            "shown": click.masks[np.arange(len(points)), click.scores.argmax(axis=1)],
            "box": fp32.predict_batch(boxes=boxes).masks[:, 0],
            "pos_neg": both.masks[:, 0],
        }
    return {
        name: {f: [mask_iou(a, b) for a, b in zip(masks[name][f], masks["fp32"][f])] for f in m}
        for name, m in masks.items()
        if name != "fp32"
    }


@pytest.mark.parametrize("family", ["shown", "box", "pos_neg"])
def test_bf16_moves_masks_less_than_one_grey_level_of_noise(noise_floor, family):
    """Measured on this image (AMX): mean IoU loss shown 0.0004 (noise 0.0026), box
    0.0014 (0.0081), point + negative 0.0051 (0.0182); worst 0.996, 0.993, 0.973 (AVX2,
    emulated: 0.992, 0.986, 0.969). Over
    381 objects of five sets bf16 lost 4-15x less than the noise in every family
    (docs/precision.md)."""
    bf16, noise = (np.asarray(noise_floor[k][family]) for k in ("bf16", "noise"))
    print(
        f"{NOISE_IMAGE[1]}, {family}: bf16 mean {bf16.mean():.4f} worst {bf16.min():.3f}; "
        f"one grey level mean {noise.mean():.4f} worst {noise.min():.3f}"
    )
    assert 1 - bf16.mean() < 1 - noise.mean()
    assert bf16.mean() >= ISSUE_BAR[0] and bf16.min() >= ISSUE_BAR[1]
