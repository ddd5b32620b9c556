import pytest
import torch

from napari_sam.engine.network.mask_decoder import MaskDecoder
from napari_sam.engine.network.transformer import Attention, TwoWayTransformer


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return MaskDecoder().eval()


def test_attention_matches_written_out_formula():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, downsample_rate=2)  # internal width 8, 4 per head
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    with torch.no_grad():
        out = attn(q, k, v)
        qh = attn.q_proj(q).view(3, 5, 2, 4).transpose(1, 2)
        kh = attn.k_proj(k).view(3, 7, 2, 4).transpose(1, 2)
        vh = attn.v_proj(v).view(3, 7, 2, 4).transpose(1, 2)
        mixed = ((qh @ kh.transpose(-2, -1)) / 2.0).softmax(-1) @ vh
        expected = attn.out_proj(mixed.transpose(1, 2).reshape(3, 5, 8))
    assert out.shape == (3, 5, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_two_way_transformer_shapes():
    torch.manual_seed(0)
    transformer = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64).eval()
    with torch.no_grad():
        tokens, image = transformer(
            torch.randn(2, 32, 8, 6), torch.randn(1, 32, 8, 6), torch.randn(2, 5, 32)
        )
    assert tokens.shape == (2, 5, 32)
    assert image.shape == (2, 48, 32)


def test_decoder_output_shapes(decoder):
    torch.manual_seed(1)
    with torch.no_grad():
        logits, iou = decoder(
            torch.randn(1, 256, 64, 64),
            torch.randn(1, 256, 64, 64),
            torch.randn(2, 4, 256),
            torch.randn(2, 256, 64, 64),
        )
    assert logits.shape == (2, 4, 256, 256)
    assert iou.shape == (2, 4)
    assert not torch.allclose(logits[0], logits[1])


def test_decoder_objects_are_independent_of_their_batch(decoder):
    torch.manual_seed(2)
    image, pe = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
    sparse, dense = torch.randn(2, 3, 256), torch.randn(2, 256, 64, 64)
    with torch.no_grad():
        logits, iou = decoder(image, pe, sparse, dense)
        alone_logits, alone_iou = decoder(image, pe, sparse[1:], dense[1:])
    torch.testing.assert_close(alone_logits[0], logits[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone_iou[0], iou[1], atol=1e-5, rtol=1e-5)
