"""Figure for docs/everything.md: the defaults against every grid point on unseen images.

``python docs/scripts/figure_unseen_sets.py`` writes ``docs/images/everything_unseen.png``:
for a frame of the small-nuclei time-lapse (where the removed background rule found 3 of
71 objects) and a frame of the label-free whole cells, the labels, every grid point
decoded, and the defaults, with the decoded points and AP@0.5 in each title.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precision
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.overlay import overlay_labels
from napari_sam.training.image_sets import load_image_set

OUT = Path(__file__).resolve().parents[1] / "images" / "everything_unseen.png"
FRAMES = (("scratch_nuclei", "scratch nuclei[z=2]"), ("scratch_cells", "scratch cells[z=1]"))
TITLE_HEIGHT = 18


def panel(rgb: np.ndarray, labels: np.ndarray, title: str) -> Image.Image:
    picture = Image.fromarray(overlay_labels(rgb, labels))
    framed = Image.new("RGB", (picture.width, picture.height + TITLE_HEIGHT), "white")
    framed.paste(picture, (0, TITLE_HEIGHT))
    ImageDraw.Draw(framed).text((4, 3), title, fill="black")
    return framed


def main() -> None:
    predictor = Predictor("vit_t", device="cpu")
    rows = []
    for set_name, image_name in FRAMES:
        (item,) = [i for i in load_image_set(set_name).images if i.name == image_name]
        rgb = item.normalization.apply(item.image)
        embedding = predictor.encode(item.image, item.normalization)
        count = len(np.unique(item.labels)) - 1
        panels = [panel(rgb, item.labels, f"{image_name}: {count} labelled")]
        for title, settings in (
            ("every grid point", EverythingSettings().every_point()),
            ("defaults", EverythingSettings()),
        ):
            segmenter = AutomaticSegmenter(predictor, settings)
            candidates = segmenter.initialise(item.image, embed=lambda window, e=embedding: e)
            labels = segmenter.generate(candidates).labels
            ap = average_precision(labels, item.labels, 0.5)
            panels.append(
                panel(rgb, labels, f"{title}: {candidates.points_decoded} points, AP@0.5 {ap:.3f}")
            )
        rows.append(panels)
    width = sum(p.width for p in rows[0]) + 8 * (len(rows[0]) - 1)
    height = sum(r[0].height for r in rows) + 8 * (len(rows) - 1)
    figure = Image.new("RGB", (width, height), "white")
    top = 0
    for row in rows:
        left = 0
        for picture in row:
            figure.paste(picture, (left, top))
            left += picture.width + 8
        top += row[0].height + 8
    figure.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
