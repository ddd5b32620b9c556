"""The per-image classifier behind ranked decoding: fit, separation check."""

import pytest
import torch

from napari_sam.engine.everything.point_order import cross_validated_auc, fit_logistic


def two_clusters(count: int, spread: float, seed: int = 0):
    """(2 * count, 4) unit-ish features: class 1 around +x, class 0 around -x."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    noise = torch.randn(2 * count, 4, generator=generator, dtype=torch.float64) * spread
    features = torch.cat([centre + noise[:count], -centre + noise[count:]])
    targets = torch.cat([torch.ones(count), torch.zeros(count)]).double()
    return features, targets


def test_logistic_regression_ranks_the_positive_class_first():
    features, targets = two_clusters(40, 0.3)
    weights = fit_logistic(features, targets)
    scores = features @ weights[1:] + weights[0]
    assert scores[:40].min() > scores[40:].max()
    assert weights[1] > 0  # the separating axis


def test_classes_of_unequal_size_are_balanced():
    features, targets = two_clusters(40, 0.3)
    few = torch.cat([torch.arange(40), torch.arange(40, 44)])  # 40 positives, 4 negatives
    weights = fit_logistic(features[few], targets[few])
    probability = torch.sigmoid(features @ weights[1:] + weights[0])
    assert probability[40:].max() < 0.5 < probability[:40].min()


@pytest.mark.parametrize(
    "spread, expected",
    [(0.3, (0.99, 1.0)), (30.0, (0.2, 0.8))],  # separated clusters; noise that hides the axis
)
def test_cross_validated_auc_measures_separation_on_held_out_examples(spread, expected):
    features, targets = two_clusters(40, spread)
    low, high = expected
    assert low <= cross_validated_auc(features, targets) <= high


def test_identical_features_or_too_few_examples_give_chance():
    features = torch.ones(20, 4, dtype=torch.float64)
    targets = torch.cat([torch.ones(10), torch.zeros(10)]).double()
    assert cross_validated_auc(features, targets) == pytest.approx(0.5)
    separated, labels = two_clusters(3, 0.1)  # 3 of each: too few to hold any out
    assert cross_validated_auc(separated, labels) == 0.5
