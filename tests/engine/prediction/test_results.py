import dataclasses

import numpy as np
import pytest

from napari_sam.engine.prediction.results import BatchPrediction, Prediction


def test_prediction_best_mask():
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[2, 1, 1] = True
    prediction = Prediction(masks, np.array([0.1, 0.5, 0.9], np.float32), np.zeros((3, 256, 256)))
    assert prediction.best == 2
    assert prediction.best_mask.sum() == 1 and prediction.best_mask[1, 1]


def test_batch_prediction_indexes_objects():
    masks = np.zeros((2, 1, 4, 5), dtype=bool)
    masks[1, 0, 3, 4] = True
    batch = BatchPrediction(masks, np.array([[0.2], [0.7]], np.float32), np.zeros((2, 1, 256, 256)))
    assert len(batch) == 2
    item = batch[1]
    assert isinstance(item, Prediction)
    assert item.masks.shape == (1, 4, 5) and item.best_mask[3, 4]
    assert item.scores[0] == np.float32(0.7)


def test_results_are_frozen():
    prediction = Prediction(np.zeros((1, 2, 2), bool), np.zeros(1), np.zeros((1, 256, 256)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.masks = None
