"""Prompts on tiled planes with the real default model: objects across tile borders."""

import numpy as np
import pytest

from napari_sam.demo import mask_iou, prompts_from_labels
from napari_sam.io.samples import load_dsb2018

TILE, HALO = 192, 32  # 256-pixel windows on the 512x512 image: many nuclei cross borders


@pytest.fixture(scope="module")
def setup():
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.engine.prediction.preprocess import compute_normalization

    image, truth = load_dsb2018()
    ids, boxes, points = prompts_from_labels(truth)
    return (
        Predictor("vit_t", device="cpu"),
        image,
        truth,
        ids,
        boxes,
        points,
        compute_normalization(image),
    )


def crossing(boxes):
    edges = (TILE, 2 * TILE)
    return [
        i for i, b in enumerate(boxes) if any(b[0] < e <= b[2] or b[1] < e <= b[3] for e in edges)
    ]


def window_centred_on(box, side, shape):
    """The window of ``side`` pixels centred on a box, shifted to lie inside the plane."""
    bounds = []
    for centre, size in zip(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), shape):
        start = min(max(0, round(centre - side / 2)), max(0, size - side))
        bounds.append(slice(start, min(size, start + side)))
    return tuple(bounds)


def test_objects_across_tile_borders_match_a_window_centred_on_them(setup):
    from napari_sam.engine.tiling.prompting import TiledPlane

    predictor, image, truth, ids, boxes, _, norm = setup
    tiled = TiledPlane(predictor, image, norm, TILE, HALO)
    ideal = TiledPlane(predictor, image, norm, TILE, HALO)
    chosen = crossing(boxes)
    assert len(chosen) >= 15
    ious, quality = [], []
    for i in chosen:
        mask = tiled.predict(box=boxes[i]).masks[0]
        window = window_centred_on(boxes[i], ideal.side, image.shape)
        reference = np.zeros(image.shape, bool)
        reference[window] = ideal.decode_window(window, None, None, boxes[i]).best_mask
        ious.append(mask_iou(mask, reference))
        quality.append(mask_iou(mask, truth == ids[i]))
    print(
        f"{len(chosen)} objects across borders: IoU with centred windows mean {np.mean(ious):.3f}, "
        f"min {np.min(ious):.3f}; IoU with the human labels {np.mean(quality):.3f}"
    )
    assert np.min(ious) >= 0.9
    assert np.mean(quality) > 0.8


def test_a_click_outside_the_first_window_is_still_used(setup):
    from napari_sam.engine.tiling.prompting import TiledPlane

    predictor, image, _truth, _ids, _, points, norm = setup
    tiled = TiledPlane(predictor, image, norm, TILE, HALO)
    i = crossing([np.r_[p - 3, p + 3] for p in points])[0]
    prediction = tiled.predict(points=points[i : i + 1])
    assert prediction.masks.shape == (1, 512, 512)
    assert prediction.masks[0][int(points[i][0]), int(points[i][1])]
    assert tiled.encoder_calls <= 3  # only windows near the object are encoded


def large_object_image():
    """(768, 768) uint16: a textured cell of 600 x 440 pixels among small nuclei, and its mask."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[:768, :768]
    image = np.full((768, 768), 200.0)
    for _ in range(40):
        r, c = rng.uniform(0, 768, 2)
        radius = rng.uniform(6, 14)
        image += 2000 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * radius**2))
    cell = ((rows - 384) / 300.0) ** 2 + ((cols - 384) / 220.0) ** 2 <= 1
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (768, 768)), 6)
    image[cell] = 1500 + 300 * texture[cell] / texture.std()
    image += rng.normal(0, 40, image.shape)
    return image.clip(0, 65535).astype(np.uint16), cell


def test_an_object_larger_than_a_window_gets_a_whole_mask(setup, monkeypatch):
    import napari_sam.engine.tiling.prompting as tiled_prompting
    from napari_sam.engine.prediction.preprocess import compute_normalization

    predictor = setup[0]
    image, cell = large_object_image()
    norm = compute_normalization(image)
    rows, cols = np.nonzero(cell)
    box = np.array([rows.min(), cols.min(), rows.max(), cols.max()], float)
    predictor.set_image(image, norm)  # 768 pixels: the untiled model sees the whole cell
    untiled = {
        "box": predictor.predict(box=box).best_mask,
        "point": predictor.predict(points=[(384, 384)], multimask=False).best_mask,
    }
    tiled = tiled_prompting.TiledPlane(
        predictor, image, norm, TILE, HALO, capacity=32
    )  # windows of 256
    found = {
        "box": tiled.predict(box=box).masks[0],
        "point": tiled.predict(points=[(384, 384)]).masks[0],
    }
    for prompt in ("box", "point"):
        print(
            f"{prompt}: tiled vs untiled IoU {mask_iou(found[prompt], untiled[prompt]):.4f}, "
            f"vs the drawn cell {mask_iou(found[prompt], cell):.4f} "
            f"({tiled.encoder_calls} windows encoded)"
        )
        assert mask_iou(found[prompt], untiled[prompt]) >= 0.95
        assert mask_iou(found[prompt], cell) >= 0.95
    monkeypatch.setattr(
        tiled_prompting, "grow_across_tiles", lambda tiles, decode, mask, *rest: mask
    )
    alone = tiled.predict(points=[(384, 384)]).masks[0]  # one re-centred window, no merging
    print(f"without merging neighbouring tiles: IoU {mask_iou(alone, cell):.3f}")
    assert mask_iou(alone, cell) < 0.5


def dsb_mosaic():
    """The DSB image repeated 2 x 2 (1024 x 1024: the untiled encoder sees it at scale 1)."""
    image, truth = load_dsb2018()
    labels = np.zeros((1024, 1024), np.int32)
    for quarter, (r, c) in enumerate([(0, 0), (0, 512), (512, 0), (512, 512)]):
        labels[r : r + 512, c : c + 512] = np.where(truth > 0, truth + 1000 * quarter, 0)
    return np.tile(image, (2, 2)), labels


def test_upscaling_gives_small_nuclei_better_masks(setup):
    from napari_sam.engine.prediction.preprocess import compute_normalization
    from napari_sam.engine.tiling.prompting import TiledPlane

    predictor = setup[0]
    image, labels = dsb_mosaic()
    ids, boxes, _ = prompts_from_labels(labels[:512, :512])  # the first copy
    areas = np.array([(labels == i).sum() for i in ids])
    small = np.argsort(areas)[:16]  # the 16 smallest nuclei of the first copy
    norm = compute_normalization(image)
    ious = {}
    for upscale in (1.0, 2.0):
        tiled = TiledPlane(predictor, image, norm, capacity=16, upscale=upscale)
        ious[upscale] = [
            mask_iou(tiled.predict(box=boxes[i]).masks[0], labels == ids[i]) for i in small
        ]
        print(
            f"upscale {upscale:g}: {len(tiled.tiles)} tile(s) of {tiled.side} px, "
            f"IoU with the labels of {len(small)} small nuclei {np.mean(ious[upscale]):.3f}"
        )
    assert np.mean(ious[2.0]) >= np.mean(ious[1.0]) + 0.05
