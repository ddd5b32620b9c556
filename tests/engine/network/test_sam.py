"""Every registry architecture, built on the meta device (shapes and sizes, no compute)."""

import pytest
import torch

from napari_sam.engine.network.fusion import fold_batchnorm
from napari_sam.engine.network.sam import IMAGENET_MEAN, IMAGENET_STD, Sam
from napari_sam.engine.model.registry import MODELS

# Total parameters of Meta's released SAM models (SAM paper / model card: 93.7M, 312M,
# 641M); our exact counts round to those figures.
PUBLISHED_PARAMETERS = {"vit_b": 93.7e6, "vit_l": 312e6, "vit_h": 641e6}
PARAMETERS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}
# State-dict keys: 14 per ViT block + 9 more in the encoder + 137 in prompt encoder and
# decoder; mobile_sam.pt holds 439 keys; LiteMedSAM has no classifier head (4 keys fewer).
STATE_KEYS = {"vit_t": 439, "lite_medsam": 435, "vit_b": 314, "vit_l": 482, "vit_h": 594}


@pytest.fixture(scope="module")
def meta_models():
    with torch.device("meta"):
        return {name: Sam(spec.architecture).eval() for name, spec in MODELS.items()}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_vit_parameter_counts_match_published_totals(meta_models, name):
    count = sum(p.numel() for p in meta_models[name].parameters())
    assert count == PARAMETERS[name]
    assert float(f"{count:.3g}") == PUBLISHED_PARAMETERS[name]


def test_prompt_encoder_and_decoder_are_the_same_in_every_model(meta_models):
    for model in meta_models.values():
        assert sum(p.numel() for p in model.prompt_encoder.parameters()) == 6_220
        assert sum(p.numel() for p in model.mask_decoder.parameters()) == 4_058_340
        prompt_keys = len(model.prompt_encoder.state_dict())
        assert prompt_keys + len(model.mask_decoder.state_dict()) == 137


@pytest.mark.parametrize("name", sorted(STATE_KEYS))
def test_state_dict_key_counts(meta_models, name):
    keys = meta_models[name].state_dict()
    assert len(keys) == STATE_KEYS[name]
    assert "pixel_mean" not in keys and "pixel_std" not in keys  # not in the checkpoints
    encoder = MODELS[name].architecture.encoder
    if name.startswith("vit_") and name != "vit_t":
        assert len(keys) == 14 * encoder.depth + 9 + 137


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_architecture_encodes_and_decodes_to_sam_shapes(meta_models, name):
    model = meta_models[name]
    size = MODELS[name].architecture.input_size
    assert model.input_size == size == (256 if name == "lite_medsam" else 1024)
    with torch.device("meta"), torch.inference_mode():
        features = model(torch.empty(2, 3, size, size * 3 // 4))
        points = (torch.zeros(3, 2, 2), torch.ones(3, 2, dtype=torch.int64))
        sparse, dense = model.prompt_encoder(points, torch.zeros(3, 4), None)
        pe = model.prompt_encoder.dense_positional_encoding()
        logits, iou = model.mask_decoder(features[:1], pe, sparse, dense)
    assert features.shape == (2, 256, 64, 64)
    assert sparse.shape == (3, 4, 256)
    assert logits.shape == (3, 4, 256, 256)
    assert iou.shape == (3, 4)


def test_tiny_vit_keeps_64x64_at_the_last_stage(meta_models):
    assert meta_models["vit_t"].image_encoder.out_resolution == 64
    assert meta_models["lite_medsam"].image_encoder.out_resolution == 64
    assert meta_models["vit_t"].image_encoder.head.weight.shape == (1000, 320)
    assert not hasattr(meta_models["lite_medsam"].image_encoder, "head")


def test_mobile_sam_folds_27_batchnorms():
    with torch.device("meta"):
        model = Sam(MODELS["vit_t"].architecture)
    assert fold_batchnorm(model) == 27


def test_normalize_pixels_standardises_and_pads_bottom_right(tiny_model):
    sam = tiny_model.module
    rgb = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 6, 10).clone()
    rgb[0, :, 0, 0] += torch.tensor(IMAGENET_STD)
    x = sam.normalize_pixels(rgb)
    assert x.shape == (1, 3, 1024, 1024)
    torch.testing.assert_close(x[0, :, 0, 0], torch.ones(3))
    assert x.abs().sum() == pytest.approx(3.0, abs=1e-4)  # the rest is zero


def test_tiny_model_encodes_a_non_square_input(tiny_model):
    with torch.inference_mode():
        features = tiny_model.module(torch.rand(1, 3, 614, 1024) * 255)
    assert features.shape == (1, 256, 64, 64)
    assert torch.isfinite(features).all()
