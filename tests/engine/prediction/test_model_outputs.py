"""NaN or infinite model outputs are refused, never written as empty masks with IoU nan.

A tiny SAM whose weights hold one NaN (or inf) stands for a damaged weights file. The
encoder's embedding and the decoder's logits and predicted IoU are each checked, on
every path that decodes: ``predict``, ``predict_batch``, ``predict_low_res`` (segment
everything) and the annotator's session.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.engine.everything.segmenter import segment_plane
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.model.registry import MODELS
from napari_sam.engine.model.weights import weights_path
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.errors import InvalidInputError, ModelOutputError
from tiny_sam import random_model

ENCODER = "image_encoder.patch_embed.proj.bias"
IOU_HEAD = "mask_decoder.iou_prediction_head.layers.2.bias"
MASK_HEAD = "mask_decoder.output_upscaling.3.bias"


def _poisoned(architecture, name: str, value: float = math.nan):
    """The tiny SAM (seed 0) with parameter ``name`` filled with ``value``."""
    model = random_model(architecture, seed=0)
    dict(model.module.named_parameters())[name].data.fill_(value)
    return model


@pytest.fixture(scope="module")
def image(make_image):
    return make_image((120, 160), seed=3)


@pytest.fixture(scope="module")
def decoder_poisoned(tiny_architecture, image):
    """A predictor whose encoder is sound and whose IoU head returns NaN."""
    predictor = Predictor(_poisoned(tiny_architecture, IOU_HEAD))
    predictor.set_image(image)
    return predictor


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_encoder_output_with_nan_or_inf_is_refused(tiny_architecture, image, value):
    predictor = Predictor(_poisoned(tiny_architecture, ENCODER, value))
    with pytest.raises(
        ModelOutputError,
        match=r"The model random-seed0 returned NaN or infinite values in its image embedding "
        r"\((\d+) of 1048576 values\): the weights file may be damaged: check how the "
        r"weights of 'random' were made\. No mask was made\.",
    ):
        predictor.set_image(image)
    assert predictor.current_embedding is None  # nothing half-set


def test_the_message_names_the_fix_for_registry_and_custom_weights(tiny_architecture, image):
    model = _poisoned(tiny_architecture, ENCODER)
    spec = dataclasses.replace(MODELS["vit_t"], architecture=model.spec.architecture)
    registered = dataclasses.replace(model, spec=spec)
    with pytest.raises(
        ModelOutputError,
        match=rf"delete {re.escape(str(weights_path(spec)))} and run "
        "`napari-sam weights fetch vit_t` to download it again",
    ):
        Predictor(registered).set_image(image)
    custom = dataclasses.replace(model, spec=dataclasses.replace(model.spec, path=Path("mine.pt")))
    with pytest.raises(ModelOutputError, match=r"check the custom checkpoint mine\.pt"):
        Predictor(custom).set_image(image)


def test_predicted_iou_nan_is_refused_by_predict(decoder_poisoned):
    assert np.isfinite(decoder_poisoned.embedding.features.numpy()).all()
    with pytest.raises(ModelOutputError, match=r"in its predicted IoU \((\d+) of 3 values\)"):
        decoder_poisoned.predict(points=[(60, 80)])
    with pytest.raises(ModelOutputError, match=r"in its predicted IoU \((\d+) of 2 values\)"):
        decoder_poisoned.predict_batch(boxes=[(10, 10, 50, 50), (60, 60, 100, 150)])


def test_mask_logits_nan_are_refused_on_every_decoding_path(tiny_architecture, image):
    predictor = Predictor(_poisoned(tiny_architecture, MASK_HEAD))
    predictor.set_image(image)
    logits = r"in its mask logits \((\d+) of (\d+) values\)"
    with pytest.raises(ModelOutputError, match=logits):
        predictor.predict(box=(10, 10, 50, 50))
    with pytest.raises(ModelOutputError, match=logits):
        predictor.predict_batch(points=[(20, 20), (90, 120)])
    with pytest.raises(ModelOutputError, match=logits):
        predictor.predict_low_res(np.array([(20.0, 20.0)]))  # segment-everything's path


def test_segment_everything_and_the_annotator_hit_the_check(decoder_poisoned, image):
    with pytest.raises(ModelOutputError, match="predicted IoU"):
        segment_plane(decoder_poisoned, image, settings=EverythingSettings(points_per_side=4))
    session = AnnotationSession(decoder_poisoned, image)
    with pytest.raises(ModelOutputError, match="predicted IoU"):
        session.preview((), points=np.array([(60, 80)]), point_labels=np.array([1]))


def test_a_sound_model_passes_the_check(predictor_300x500):
    prediction = predictor_300x500.predict(points=[(100, 200)])
    assert np.isfinite(prediction.scores).all() and np.isfinite(prediction.logits).all()


def test_nan_images_stay_a_user_error(tiny_model):
    image = np.ones((50, 60), np.float32)
    image[5, 5] = np.nan
    with pytest.raises(InvalidInputError, match="The image contains NaN or infinite values"):
        Predictor(tiny_model).set_image(image)


def test_nan_mask_input_is_a_user_error_not_blamed_on_the_weights(predictor_300x500):
    logits = np.zeros((256, 256), np.float32)
    logits[3, 3] = np.nan
    with pytest.raises(InvalidInputError, match="mask_input holds NaN or infinite values"):
        predictor_300x500.predict(mask_input=logits)


def test_a_stored_embedding_holding_nan_is_refused(predictor_300x500, tiny_model):
    stored = predictor_300x500.embedding
    damaged = dataclasses.replace(stored, features=stored.features.clone())
    damaged.features[0, 5, 6, 7] = math.nan  # e.g. a cache written by damaged weights
    predictor = Predictor(tiny_model)
    with pytest.raises(
        ModelOutputError,
        match=r"This embedding \(made by random-seed0\) holds NaN or infinite values: it was "
        r"computed by damaged weights or read from a damaged embedding cache\. Delete the "
        r"embedding cache",
    ):
        predictor.set_embedding(damaged)
    assert predictor.current_embedding is None
    predictor.set_embedding(stored)  # the sound one is taken
    assert predictor.current_embedding is stored


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_the_sum_check_finds_one_bad_value_and_forgives_an_overflowing_sum(tiny_model, bad):
    """check_finite sums first (20x cheaper than an isfinite pass); one NaN or infinity
    among many values makes the sum non-finite, and finite values whose float32 sum
    overflows (None: 1e38 everywhere) fall back to the value-by-value check and pass."""
    from napari_sam.engine.prediction.output_checks import check_finite

    output = torch.full((3, 64, 64), 1e38) if bad is None else torch.randn(3, 64, 64)
    if bad is None:
        assert not torch.isfinite(output.sum())  # the sum overflowed: the slow path decides
        assert check_finite(tiny_model, output, "mask logits") is output
        return
    output[2, 63, 1] = bad
    with pytest.raises(ModelOutputError, match=r"mask logits \(1 of 12288 values\)"):
        check_finite(tiny_model, output, "mask logits")
