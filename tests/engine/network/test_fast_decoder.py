import pytest
import torch

from napari_sam.engine.network.fast_decoder import MAX_OBJECTS, FastDecoder


@pytest.fixture(scope="module")
def parts(tiny_model):
    torch.manual_seed(3)
    sam = tiny_model.module
    with torch.inference_mode():
        features = sam(torch.rand(1, 3, 614, 1024) * 255)
        pe = sam.prompt_encoder.dense_positional_encoding()
    return sam, features, pe


def _prompts(kind: str, batch: int):
    coords = torch.rand(batch, 2, 2) * 1000
    labels = torch.tensor([[1, 0]] * batch)
    boxes = torch.tensor([[10.0, 20.0, 600.0, 500.0]] * batch) + torch.arange(batch)[:, None]
    masks = torch.randn(batch, 1, 256, 256)
    return {
        "points": ((coords, labels), None, None),
        "box": (None, boxes, None),
        "points_box": ((coords, labels), boxes, None),
        "points_mask": ((coords, labels), None, masks),
    }[kind]


def _assert_close(fast, reference):
    fast_logits, fast_iou = fast
    logits, iou = reference
    assert fast_logits.shape == logits.shape and fast_iou.shape == iou.shape
    assert (fast_logits - logits).abs().max() < 1e-4 * float(logits.abs().max())
    torch.testing.assert_close(fast_iou, iou, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["points", "box", "points_box", "points_mask"])
@pytest.mark.parametrize("batch", [3, MAX_OBJECTS + 3])  # the second is decoded in two chunks
def test_fast_decoder_equals_mask_decoder(parts, kind, batch):
    sam, features, pe = parts
    torch.manual_seed(4)
    fast = FastDecoder(sam.mask_decoder)
    no_mask = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(*_prompts(kind, batch))
        logits, iou = sam.mask_decoder(features, pe, sparse, dense)
        dense_one = dense[:1] if kind == "points_mask" else no_mask
        context = fast.prepare(features, pe, dense if kind == "points_mask" else no_mask)
        context_one = fast.prepare(features, pe, dense_one)
        for chosen in (slice(0, 1), slice(1, None)):
            _assert_close(fast(context, sparse, chosen), (logits[:, chosen], iou[:, chosen]))
            # one object alone (the single-prompt path) gives the same as in the batch
            _assert_close(
                fast(context_one, sparse[:1], chosen), (logits[:1, chosen], iou[:1, chosen])
            )
