"""Prompts on tiled planes with the real default model: objects across tile borders."""

import numpy as np
import pytest

from napari_sam.demo import mask_iou, prompts_from_labels
from napari_sam.samples import load_dsb2018

TILE, HALO = 192, 32  # 256-pixel windows on the 512x512 image: many nuclei cross borders


@pytest.fixture(scope="module")
def setup():
    from napari_sam.engine.predictor import Predictor
    from napari_sam.engine.preprocess import compute_normalization

    image, truth = load_dsb2018()
    ids, boxes, points = prompts_from_labels(truth)
    return Predictor("vit_t", device="cpu"), image, truth, ids, boxes, points, compute_normalization(image)


def crossing(boxes):
    edges = (TILE, 2 * TILE)
    return [i for i, b in enumerate(boxes) if any(b[0] < e <= b[2] or b[1] < e <= b[3] for e in edges)]


def test_objects_across_tile_borders_match_a_window_centred_on_them(setup):
    from napari_sam.engine.tiled_prompting import TiledPlane

    predictor, image, truth, ids, boxes, _, norm = setup
    tiled = TiledPlane(predictor, image, norm, TILE, HALO)
    ideal = TiledPlane(predictor, image, norm, TILE, HALO)
    chosen = crossing(boxes)
    assert len(chosen) >= 15
    ious, quality = [], []
    for i in chosen:
        mask = tiled.predict(box=boxes[i]).masks[0]
        centre = ((boxes[i][0] + boxes[i][2]) / 2, (boxes[i][1] + boxes[i][3]) / 2)
        reference = ideal._paste(ideal._decode(ideal._window_at(centre), None, None, boxes[i]),
                                 ideal._window_at(centre)).masks[0]
        ious.append(mask_iou(mask, reference))
        quality.append(mask_iou(mask, truth == ids[i]))
    print(f"{len(chosen)} objects across borders: IoU with centred windows mean {np.mean(ious):.3f}, "
          f"min {np.min(ious):.3f}; IoU with the human labels {np.mean(quality):.3f}")
    assert np.min(ious) >= 0.9
    assert np.mean(quality) > 0.8


def test_a_click_outside_the_first_window_is_still_used(setup):
    from napari_sam.engine.tiled_prompting import TiledPlane

    predictor, image, truth, ids, _, points, norm = setup
    tiled = TiledPlane(predictor, image, norm, TILE, HALO)
    i = crossing([np.r_[p - 3, p + 3] for p in points])[0]
    prediction = tiled.predict(points=points[i : i + 1])
    assert prediction.masks.shape == (1, 512, 512)
    assert prediction.masks[0][int(points[i][0]), int(points[i][1])]
    assert tiled.encoder_calls <= 3  # only windows near the object are encoded
