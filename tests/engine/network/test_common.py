import torch

from napari_sam.engine.network.common import MLP, LayerNorm2d, MLPBlock


def test_layernorm2d_normalises_each_pixel_over_channels():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4) * 5 + 3
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
        norm.bias.copy_(torch.full((6,), 0.5))
        out = norm(x)
    assert out.shape == (2, 6, 3, 4)
    unit = (out - 0.5) / torch.arange(1.0, 7.0).view(1, 6, 1, 1)
    torch.testing.assert_close(unit.mean(1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(unit.pow(2).mean(1), torch.ones(2, 3, 4), atol=1e-4, rtol=0)


def test_mlp_has_relu_between_layers_only():
    torch.manual_seed(0)
    mlp = MLP(8, 16, 3, num_layers=3)
    x = torch.randn(5, 8)
    a, b, c = mlp.layers
    expected = c(torch.relu(b(torch.relu(a(x)))))
    out = mlp(x)
    assert out.shape == (5, 3)
    assert (out < 0).any()  # no ReLU after the last layer
    torch.testing.assert_close(out, expected)


def test_mlp_block_shape_and_activation():
    torch.manual_seed(0)
    block = MLPBlock(8, 32, torch.nn.ReLU)
    x = torch.randn(2, 7, 8)
    out = block(x)
    assert out.shape == (2, 7, 8)
    torch.testing.assert_close(out, block.lin2(torch.relu(block.lin1(x))))
