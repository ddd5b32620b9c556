import torch

from napari_sam.training.losses import dice_loss, focal_loss, prompt_loss, true_iou


def _target():
    target = torch.zeros(1, 1, 256, 256)
    target[..., 100:150, 100:150] = 1
    return target


def test_perfect_logits_have_almost_no_loss_and_wrong_ones_much():
    target = _target()
    perfect = (target * 2 - 1) * 20
    assert focal_loss(perfect, target).item() < 1e-8
    assert dice_loss(perfect, target).item() < 1e-3
    assert focal_loss(-perfect, target).item() > 1.0
    assert dice_loss(-perfect, target).item() > 0.99


def test_best_candidate_is_the_lowest_loss_and_iou_is_exact():
    target = _target()
    good = (target * 2 - 1) * 10
    half = good.clone()
    half[..., 125:150, :] = -10  # loses half of the object
    logits = torch.cat([half, good, -good], dim=1)  # (1, 3, 256, 256)
    predicted = torch.tensor([[0.5, 1.0, 0.0]], requires_grad=True)
    loss = prompt_loss(logits, predicted, target)
    assert loss.best.tolist() == [1]
    assert true_iou(logits, target)[0, 0].item() == 0.5
    assert loss.best_iou == 1.0
    assert loss.iou < 1e-12  # predicted IoU equals the true IoU of every candidate
    loss.total.backward()
    assert predicted.grad is not None


def test_a_zero_iou_weight_leaves_the_iou_term_out_of_the_graph():
    from napari_sam.training.config import LossWeights

    target = _target()
    logits = ((target * 2 - 1) * 10).requires_grad_(True)
    predicted = torch.tensor([[0.2]], requires_grad=True)  # true IoU 1.0: MSE 0.64
    loss = prompt_loss(logits, predicted, target, LossWeights(iou=0.0))
    assert abs(loss.iou - 0.64) < 1e-6  # still measured
    assert abs(loss.total.item() - loss.mask) < 1e-6
    loss.total.backward()
    assert predicted.grad is None and logits.grad is not None


def test_iou_targets_replace_only_the_iou_heads_targets():
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 16, 16)
    predicted = torch.rand(4, 3)
    targets = (torch.rand(4, 1, 16, 16) > 0.5).float()
    released = torch.rand(4, 3)
    plain = prompt_loss(logits, predicted, targets)
    kept = prompt_loss(logits, predicted, targets, iou_targets=released)
    assert kept.mask == plain.mask and torch.equal(kept.best, plain.best)
    assert kept.best_iou == plain.best_iou  # still scored against the labels
    assert abs(kept.iou - float(((predicted - released) ** 2).mean())) < 1e-6
    assert abs(kept.iou - plain.iou) > 1e-3


def test_the_banded_iou_forgives_the_boundary_and_nothing_else():
    from napari_sam.training.losses import banded_iou

    truth = torch.zeros(1, 1, 32, 32)
    truth[0, 0, 8:20, 8:20] = 1  # 12 x 12
    logits = torch.full((1, 3, 32, 32), -1.0)
    logits[0, 0, 9:21, 8:21] = 1  # off by one pixel: plain IoU 132/168
    logits[0, 1, 8:20, 8:14] = 1  # half the object
    logits[0, 2] = 1  # everything
    plain, banded = true_iou(logits, truth)[0], banded_iou(logits, truth, 1)[0]
    assert abs(float(plain[0]) - 132 / 168) < 1e-6 and float(banded[0]) == 1.0
    # outside the band: the core is 10 x 10, the half-mask covers 10 x 5 of it
    assert abs(float(banded[1]) - 50 / 100) < 1e-6
    # everything: the 10 x 10 core against the 32 x 32 image less the 14 x 14 - 10 x 10 band
    assert abs(float(banded[2]) - 100 / (32 * 32 - 96)) < 1e-6
    assert torch.equal(banded_iou(logits, truth, 0), true_iou(logits, truth))
    # a target the band swallows (2 x 2) keeps the plain IoU: an empty mask scores 0, not 1
    tiny = torch.zeros(1, 1, 32, 32)
    tiny[0, 0, 5:7, 5:7] = 1
    assert torch.equal(banded_iou(logits, tiny, 1), true_iou(logits, tiny))
    assert float(banded_iou(torch.full((1, 1, 32, 32), -1.0), tiny, 1)[0, 0]) == 0.0
