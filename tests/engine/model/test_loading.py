import re

import pytest
import torch
from torch import nn

from napari_sam.engine.model.downloads import file_sha256
from napari_sam.engine.model.loading import build_sam, load_model
from napari_sam.engine.model.registry import MODELS
from napari_sam.errors import CheckpointError, UnknownModelError


@pytest.fixture(scope="module")
def mobile_state():
    """A random state dict with MobileSAM's keys and shapes (batch norms unfolded)."""
    torch.manual_seed(0)
    return build_sam(MODELS["vit_t"]).state_dict()


@pytest.fixture(autouse=True)
def _isolated(cache_dir, monkeypatch):
    # load_model tunes the process's malloc; keep the test process as it was
    monkeypatch.setenv("NAPARI_SAM_NO_MALLOC_TUNING", "1")


def test_load_a_user_checkpoint(tmp_path, mobile_state):
    path = tmp_path / "finetuned_mobile_sam.pt"
    torch.save({"model": mobile_state}, path)
    model = load_model(path, device="cpu")  # architecture guessed from the name
    assert model.spec.path == path and model.device == "cpu" and model.input_size == 1024
    assert model.model_id == f"finetuned_mobile_sam@{file_sha256(path)[:12]}"
    module = model.module
    assert not module.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())  # folded
    assert not any(p.requires_grad for p in module.parameters())
    state = module.state_dict()
    for key in ("mask_decoder.iou_token.weight", "image_encoder.neck.0.weight"):
        assert torch.equal(state[key], mobile_state[key])


def _message_keys(message: str, title: str) -> list[str]:
    """The keys a CheckpointError lists as ``N missing: a, b`` or ``N unexpected: ...``."""
    found = re.search(rf"\d+ {title}: ([^;]*?)(; |\)\. Pick)", message)
    return found.group(1).split(", ") if found else []


def test_checkpoint_with_missing_and_renamed_keys(tmp_path, mobile_state):
    state = dict(mobile_state)
    del state["mask_decoder.iou_token.weight"]
    state["prompt_encoder.extra.weight"] = state.pop("prompt_encoder.no_mask_embed.weight")
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the .*vit_t architecture.*\(2 missing: .*; 1 unexpected: .*\)\. Pick",
    ) as caught:
        load_model(path, architecture="vit_t")
    message = str(caught.value)
    assert _message_keys(message, "missing") == [
        "mask_decoder.iou_token.weight",
        "prompt_encoder.no_mask_embed.weight",
    ]
    assert _message_keys(message, "unexpected") == ["prompt_encoder.extra.weight"]


def test_checkpoint_with_a_wrongly_shaped_tensor(tmp_path, mobile_state):
    state = dict(mobile_state)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"1 shape: mask_decoder\.iou_token\.weight: file \(1, 128\) vs model \(1, 256\)",
    ):
        load_model(path, architecture="vit_t")


def test_checkpoint_of_another_architecture_lists_eight_keys_and_counts(tmp_path, mobile_state):
    path = tmp_path / "mobile.pt"
    torch.save(mobile_state, path)
    with pytest.raises(
        CheckpointError, match=r"171 missing: .* and 163 more; 296 unexpected: "
    ) as caught:
        load_model(path, architecture="vit_b")
    message = str(caught.value)
    shown = _message_keys(message, "missing")
    assert len(shown) == 8 and shown[0] == "image_encoder.blocks.0.attn.proj.bias"
    assert shown[-1] == "image_encoder.blocks.0.mlp.lin1.weight and 163 more"
    assert message.endswith(
        "1 shape: image_encoder.neck.0.weight: file (256, 320, 1, 1) vs model (256, 768, 1, 1))."
        " Pick the matching model name or pass architecture=."
    )


def test_truncated_checkpoint(tmp_path, mobile_state):
    path = tmp_path / "cut_mobile_sam.pt"
    torch.save(mobile_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"Cannot read checkpoint .*cut_mobile_sam.pt"):
        load_model(path)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="Unknown model 'mobile'"):
        load_model("mobile")


def test_build_sam_loads_a_state_dict_exactly():
    torch.manual_seed(5)
    state = build_sam(MODELS["vit_t"]).state_dict()
    loaded = build_sam(MODELS["vit_t"], state).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
