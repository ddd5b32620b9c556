"""The optional ONNX Runtime encoder: same embeddings and masks as the PyTorch encoder.

Skipped where onnxruntime is not installed (the ``onnx`` extra). The parity test uses the
real MobileSAM weights and the reference outputs of ``test_parity.py``.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from napari_sam.errors import InvalidInputError, MissingDependencyError


@pytest.fixture(scope="module")
def onnx_encoder():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from napari_sam.engine.model import onnx_encoder

    return onnx_encoder


def test_same_embedding_and_masks_as_pytorch(onnx_encoder, tiny_model, image_300x500, cache_dir):
    from napari_sam.engine.prediction.predictor import Predictor

    fast = onnx_encoder.use_onnx_encoder(tiny_model)
    assert fast.model_id == tiny_model.model_id
    assert onnx_encoder.onnx_path(tiny_model.model_id).is_file()
    assert not isinstance(tiny_model.module.image_encoder, onnx_encoder.OnnxImageEncoder)
    eager, onnx = Predictor(tiny_model), Predictor(fast)
    features = [p.set_image(image_300x500).features for p in (eager, onnx)]
    assert features[1].shape == (1, 256, 64, 64) and features[1].dtype == torch.float32
    assert (features[0] - features[1]).abs().max() < 1e-4
    point = [(150, 250)]
    np.testing.assert_array_equal(
        eager.predict(points=point).masks, onnx.predict(points=point).masks
    )


def test_export_is_cached_per_model_id(onnx_encoder, tiny_model, cache_dir):
    path = onnx_encoder.onnx_path(tiny_model.model_id)
    onnx_encoder.use_onnx_encoder(tiny_model)
    written = path.stat().st_mtime_ns
    onnx_encoder.use_onnx_encoder(tiny_model)
    assert path.stat().st_mtime_ns == written
    other = dataclasses.replace(tiny_model, model_id="random-seed1")
    assert onnx_encoder.onnx_path(other.model_id) != path
    assert list(path.parent.glob("*.tmp")) == []


def test_model_not_on_cpu_is_refused(onnx_encoder, tiny_model, tmp_path):
    on_gpu = dataclasses.replace(tiny_model, device="cuda")
    with pytest.raises(InvalidInputError, match="runs on the CPU"):
        onnx_encoder.use_onnx_encoder(on_gpu, path=tmp_path / "encoder.onnx")


def test_missing_onnxruntime_says_how_to_install(tiny_model, tmp_path, monkeypatch):
    from napari_sam.engine.model import onnx_encoder

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"napari-sam-microscopy\[onnx\]"):
        onnx_encoder.use_onnx_encoder(tiny_model, path=tmp_path / "encoder.onnx")


def test_masks_match_reference_with_real_weights(onnx_encoder, reference_dir, tmp_path):
    from napari_sam.demo import mask_iou
    from napari_sam.engine.model.loading import load_model
    from napari_sam.engine.prediction.predictor import Predictor

    reference = dict(np.load(reference_dir / "dsb2018_vit_t.npz"))
    model = onnx_encoder.use_onnx_encoder(
        load_model("vit_t", device="cpu"), tmp_path / "vit_t.onnx"
    )
    predictor = Predictor(model)
    features = predictor.set_image(reference["image"]).features.numpy()
    difference = np.abs(features - reference["embedding"]).max()
    print(f"ONNX embedding max abs difference: {difference:.2e}")
    assert difference < 1e-3
    for case in ("point", "box"):
        ref_masks = np.unpackbits(reference[f"{case}_masks"], axis=-1)[..., :512].astype(bool)
        ious = []
        for i in range(len(reference["points_rc"])):
            if case == "point":
                masks = predictor.predict(
                    points=reference["points_rc"][i : i + 1], multimask=True
                ).masks
                ious += [mask_iou(a, b) for a, b in zip(masks, ref_masks[i])]
            else:
                masks = predictor.predict(box=reference["boxes_rc"][i]).masks
                ious.append(mask_iou(masks[0], ref_masks[i]))
        print(f"ONNX {case}: mean IoU {np.mean(ious):.5f}, min {np.min(ious):.5f}")
        assert np.mean(ious) >= 0.99
        assert np.min(ious) >= 0.95
