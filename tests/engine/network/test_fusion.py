import pytest
import torch
from torch import nn

from napari_sam.engine.network.fusion import fold_batchnorm
from napari_sam.engine.network.tiny_vit import ConvBN, TinyViTConfig, TinyViTImageEncoder
from napari_sam.engine.model.registry import MODELS

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
    with torch.no_grad():
        before = encoder(x)
        # 2 stem + 3 MBConv + 3x3 merging + 3 attention blocks' local convs
        assert fold_batchnorm(encoder) == 17
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


def test_mobile_sam_has_27_batchnorms_to_fold():
    # DESIGN.md: TinyViT's 27 batch-norm passes; mobile_sam.pt holds 27 num_batches_tracked
    with torch.device("meta"):
        encoder = TinyViTImageEncoder(MODELS["vit_t"].architecture.encoder)
    assert fold_batchnorm(encoder) == 27
