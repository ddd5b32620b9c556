"""The Predictor's encoder precision with the tiny random SAM: resolution, the embedding it
records, float32 features out of a bf16 encoder, and the decoder unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.engine.model.precision import CpuCapability
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError


@pytest.fixture(scope="module")
def bf16_embedding(tiny_model, image_300x500):
    return Predictor(tiny_model, precision="bf16").encode(image_300x500)


def test_default_is_auto_resolved_from_the_cpu(tiny_model, monkeypatch):
    from napari_sam.engine.model import precision

    monkeypatch.delenv(precision.NO_AUTO_BF16)  # the suite keeps auto at fp32 (conftest)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(precision, "cpu_capability", lambda: CpuCapability(True, "amx_bf16"))
    assert Predictor(tiny_model).precision == "bf16"
    monkeypatch.setattr(precision, "cpu_capability", lambda: CpuCapability(True, "avx512_bf16"))
    assert Predictor(tiny_model).precision == "fp32"
    assert Predictor(tiny_model, precision="bf16").precision == "bf16"


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(InvalidInputError, match=r"Unknown precision 'fp16'.*auto, fp32, bf16"):
        Predictor(tiny_model, precision="fp16")


def test_bf16_embedding_is_float32_and_says_bf16(bf16_embedding, predictor_300x500):
    fp32 = predictor_300x500.embedding
    assert bf16_embedding.precision == "bf16"
    assert fp32.precision == "fp32"
    assert bf16_embedding.features.dtype == fp32.features.dtype == torch.float32
    assert bf16_embedding.features.shape == fp32.features.shape
    # bf16 keeps 8 bits of mantissa: close to the fp32 embedding, not equal to it
    difference = (bf16_embedding.features - fp32.features).abs()
    scale = fp32.features.abs().max()
    assert 0 < float(difference.max()) < 0.1 * float(scale)


def test_bf16_embedding_decodes_like_fp32(tiny_model, bf16_embedding, predictor_300x500):
    predictor = Predictor(tiny_model, precision="bf16")
    predictor.set_embedding(bf16_embedding)
    box = np.array([40, 60, 160, 220])
    ours = predictor.predict(box=box)
    reference = predictor_300x500.predict(box=box)
    assert ours.logits.dtype == np.float32
    assert ours.masks.shape == reference.masks.shape
    # random weights amplify rounding; the masks still mostly agree
    agree = np.mean(ours.masks == reference.masks)
    assert agree > 0.9


def test_an_fp32_predictor_decodes_a_bf16_embedding(tiny_model, bf16_embedding):
    """Decoding is fp32 in both: an embedding of either precision serves either predictor."""
    predictor = Predictor(tiny_model, precision="fp32")
    predictor.set_embedding(bf16_embedding)
    assert predictor.predict(points=[(100, 100)]).masks.shape == (3, 300, 500)
