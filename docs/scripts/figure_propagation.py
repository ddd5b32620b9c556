"""Figure for docs/propagation.md: a side view of propagated nuclei in the cells3d volume.

``python docs/scripts/figure_propagation.py [--cache DIR]`` writes
``docs/images/propagation_side.png``: the (z, col) section through three nuclei, each
prompted with one box on its middle slice, with the labels' outline (green), a naive
propagation (box of the previous mask, stop below IoU 0.5: red) and the defaults
(yellow), and the 3D IoU of each in the title.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from napari_sam.batch.embedding import open_cached_session
from napari_sam.engine.annotation.propagation import PropagationSettings
from napari_sam.engine.annotation.session import bounding_box
from napari_sam.io.samples import load_cells3d_nuclei

OUT = Path(__file__).resolve().parents[1] / "images" / "propagation_side.png"
NUCLEI = (3, 8, 14)
NAIVE = PropagationSettings(projection="box", min_iou=0.5, min_score=0.0, max_growth=np.inf)
COLOURS = {"labels": (0, 220, 0), "naive": (255, 40, 40), "defaults": (255, 220, 0)}
ZOOM = 3
TITLE = 16


def propagate(session, labels, label, settings):
    slices = np.nonzero((labels == label).any(axis=(1, 2)))[0]
    z = int(slices[len(slices) // 2])
    item = session.preview((z,), boxes=bounding_box(labels[z] == label)[None]).objects[0]
    anchor = {z: (item.mask, item.prediction.logits[item.chosen])}
    (found,) = session.propagate((0,), [anchor], settings=settings).objects
    return found.volume(len(labels), labels.shape[1:])


def outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def panel(volume, labels, label, found: dict) -> Image.Image:
    truth = labels == label
    row = int(np.round(np.nonzero(truth)[1].mean()))
    section = volume[:, row, :].astype(float)
    low, high = np.percentile(section, (1, 99.8))
    grey = (np.clip((section - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb = np.repeat(np.repeat(rgb, ZOOM, axis=0), ZOOM, axis=1)
    for name, mask in (("labels", truth), *found.items()):
        big = np.repeat(np.repeat(mask[:, row, :], ZOOM, axis=0), ZOOM, axis=1)
        rgb[outline(big)] = COLOURS[name]
    picture = Image.fromarray(rgb)
    framed = Image.new("RGB", (picture.width, picture.height + TITLE), "white")
    framed.paste(picture, (0, TITLE))
    scores = ", ".join(
        f"{name} {np.count_nonzero(m & truth) / np.count_nonzero(m | truth):.2f}"
        for name, m in found.items()
    )
    ImageDraw.Draw(framed).text((4, 2), f"nucleus {label}, 3D IoU: {scores}", fill="black")
    return framed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/napari_sam_eval"))
    args = parser.parse_args()
    volume, labels = load_cells3d_nuclei()
    session = open_cached_session(volume, args.cache / "cells3d.emb", capacity=64)
    panels = []
    for label in NUCLEI:
        found = {
            "naive": propagate(session, labels, label, NAIVE),
            "defaults": propagate(session, labels, label, replace(PropagationSettings())),
        }
        panels.append(panel(volume, labels, label, found))
    width = max(p.width for p in panels)
    sheet = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    top = 0
    for picture in panels:
        sheet.paste(picture, (0, top))
        top += picture.height
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
