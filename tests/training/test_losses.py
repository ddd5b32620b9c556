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
