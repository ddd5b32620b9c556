"""Every registry architecture, built on the meta device (shapes and sizes, no compute)."""

import pytest
import torch

from napari_sam.engine.model.registry import MODELS
from napari_sam.engine.model.weights import read_state_dict
from napari_sam.engine.network.sam import IMAGENET_MEAN, IMAGENET_STD, Sam

# Total parameters of Meta's released SAM models (SAM paper / model card: 93.7M, 312M,
# 641M); no checkpoint of these is at hand in the tests, so the totals stand in for them.
PUBLISHED_PARAMETERS = {"vit_b": 93.7e6, "vit_l": 312e6, "vit_h": 641e6}


@pytest.fixture(scope="module")
def meta_models():
    with torch.device("meta"):
        return {name: Sam(spec.architecture).eval() for name, spec in MODELS.items()}


@pytest.fixture(scope="module")
def released(default_weights):
    """The state dict of the released mobile_sam.pt."""
    return read_state_dict(default_weights)


def shapes(state: dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Key -> tensor shape of the entries of a state dict that start with ``prefix``."""
    return {key: tuple(value.shape) for key, value in state.items() if key.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_vit_parameter_counts_round_to_the_published_totals(meta_models, name):
    count = sum(p.numel() for p in meta_models[name].parameters())
    assert float(f"{count:.3g}") == PUBLISHED_PARAMETERS[name]


def test_vit_t_has_the_keys_and_shapes_of_the_released_checkpoint(meta_models, released):
    assert shapes(meta_models["vit_t"].state_dict()) == shapes(released)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_the_released_prompt_encoder_and_decoder(meta_models, released, name):
    ours = meta_models[name].state_dict()  # MobileSAM kept SAM's prompt encoder and decoder
    for part in ("prompt_encoder.", "mask_decoder."):
        assert shapes(ours, part) == shapes(released, part)
    assert "pixel_mean" not in ours and "pixel_std" not in ours  # buffers no checkpoint holds


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
