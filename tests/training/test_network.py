import pytest
import torch

from napari_sam.engine.model.registry import get_model_spec
from napari_sam.engine.model.weights import read_state_dict
from napari_sam.errors import CheckpointError
from napari_sam.training.network import inference_model, load_trainable, save_weights
from tiny_sam import random_model


def test_saved_vit_t_has_the_released_keys_and_values(default_weights, tmp_path):
    spec = get_model_spec("vit_t")
    trainable = load_trainable("vit_t")
    path = save_weights(trainable.module, tmp_path / "copy_vit_t.pt")
    released = read_state_dict(default_weights)
    saved = read_state_dict(path)
    assert list(saved) == list(
        released
    )  # same keys, same order: Meta's and MobileSAM's loaders accept it
    assert all(torch.equal(saved[k], released[k]) for k in released)
    model = inference_model(trainable)
    assert (
        model.model_id == spec.model_id
    )  # unchanged weights keep their identity (and cached embeddings)


def test_changed_weights_get_a_new_identity(tiny_architecture):
    trainable = load_trainable(random_model(tiny_architecture, seed=0))
    before = inference_model(trainable).model_id
    with torch.no_grad():
        trainable.module.mask_decoder.iou_token.weight.add_(1.0)
    after = inference_model(trainable, "mine").model_id
    assert (
        before == "random-seed0" and after.startswith("mine@") and len(after) == len("mine@") + 12
    )


def test_folded_models_cannot_be_trained(default_weights):
    from napari_sam.engine.model.loading import load_model

    with pytest.raises(CheckpointError, match="batch norm folded"):
        load_trainable(load_model("vit_t", device="cpu"))
