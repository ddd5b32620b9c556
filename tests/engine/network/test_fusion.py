import pytest
import torch
from torch import nn

from napari_sam.engine.model.registry import MODELS
from napari_sam.engine.model.weights import read_state_dict
from napari_sam.engine.network.fusion import fold_batchnorm
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
