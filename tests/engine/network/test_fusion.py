import pytest
import torch
from torch import nn

from napari_sam.engine.model.registry import MODELS
from napari_sam.engine.model.weights import read_state_dict
from napari_sam.engine.network.fusion import channels_last_weights, fold_batchnorm
from napari_sam.engine.network.tiny_vit import ConvBN, TinyViTConfig, TinyViTImageEncoder

SMALL = {
    "embed_dims": (16, 32, 40, 320),
    "depths": (1, 1, 1, 1),
    "num_heads": (1, 2, 2, 4),
    "window_sizes": (7, 7, 14, 7),
    "classifier_classes": 0,
}


def _randomise_batchnorms(module: nn.Module) -> None:
    """Give every batch norm statistics and an affine map far from the identity."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0.0, 0.5)
                bn.running_var.uniform_(0.3, 3.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0.0, 0.3)


@pytest.mark.parametrize(("kernel", "img_size"), [(3, 64), (1, 16)])
def test_fold_batchnorm_keeps_tiny_vit_outputs(kernel, img_size):
    torch.manual_seed(0)
    encoder = TinyViTImageEncoder(TinyViTConfig(img_size=img_size, stem_kernel=kernel, **SMALL))
    _randomise_batchnorms(encoder)
    encoder.eval()
    x = torch.randn(1, 3, img_size, img_size)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    with torch.no_grad():
        before = encoder(x)
        assert fold_batchnorm(encoder) == batchnorms
        after = encoder(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    assert (before - after).abs().max() < 1e-4
    assert before.abs().max() > 0.1
    assert fold_batchnorm(encoder) == 0  # nothing left to fold


def test_fold_batchnorm_adds_an_existing_convolution_bias():
    torch.manual_seed(0)
    block = ConvBN(4, 6, 3, 1, 1)
    block.c.bias = nn.Parameter(torch.randn(6))
    _randomise_batchnorms(block)
    block.eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        before = block(x)
        assert fold_batchnorm(block) == 1
        torch.testing.assert_close(block(x), before, atol=1e-5, rtol=1e-5)


def test_every_batchnorm_of_the_released_mobile_sam_is_folded(default_weights):
    # one num_batches_tracked entry per batch norm in the checkpoint
    released = [k for k in read_state_dict(default_weights) if k.endswith(".num_batches_tracked")]
    with torch.device("meta"):
        encoder = TinyViTImageEncoder(MODELS["vit_t"].architecture.encoder)
    assert fold_batchnorm(encoder) == len(released)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())


def test_channels_last_weights_keep_values_and_outputs():
    torch.manual_seed(0)
    encoder = TinyViTImageEncoder(TinyViTConfig(img_size=64, **SMALL)).eval()
    fold_batchnorm(encoder)
    convolutions = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    plain = [m.weight.clone() for m in convolutions]
    # 1x1 and depthwise weights count as channel-last already; the 3x3 ones of the stem
    # (two) and the neck (one) do not
    full = sum(not m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    assert full == 3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = encoder(x)
        changed = channels_last_weights(encoder)
        after = encoder(x)
    assert changed == full
    for conv, weight in zip(convolutions, plain):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(conv.weight, weight)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert channels_last_weights(encoder) == 0  # nothing left to restride


def test_channels_last_weights_keep_trainability():
    conv = nn.Conv2d(3, 4, 3)
    assert channels_last_weights(conv) == 1
    assert conv.weight.requires_grad
    conv(torch.randn(1, 3, 5, 5)).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.shape == (4, 3, 3, 3)


def test_a_loaded_model_has_channels_last_convolution_weights(default_weights):
    from napari_sam.engine.model.loading import load_model

    model = load_model("vit_t", device="cpu")
    weights = [m.weight for m in model.module.image_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(weights) == 29  # the stem's 2, the MBConv stage's 6, merges' 9, blocks' 10, neck's 2
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    full = [w for w in weights if w.shape[1] > 1 and w.shape[2:] == (3, 3)]
    assert len(full) == 3 and not any(w.is_contiguous() for w in full)  # the stem's, the neck's


def test_the_embedding_leaves_in_the_standard_layout():
    """Channel-last weights make the neck compute channel-last; the embedding is still
    (B, C, H, W)-contiguous, as the reference's, for every consumer downstream."""
    torch.manual_seed(0)
    encoder = TinyViTImageEncoder(TinyViTConfig(img_size=64, **SMALL)).eval()
    channels_last_weights(encoder)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 64, 64)).is_contiguous()
