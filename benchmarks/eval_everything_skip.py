"""How segment-everything's skip rules trade decoded points against AP, on many images.

Usage:
``python benchmarks/eval_everything_skip.py [--quick] [--no-baseline] [--bbbc-stride K] [--resume]``

Images: the DSB2018 image (hand-labelled), the 14 BBBC007 images (algorithmic labels,
fetched from PyPI on first use, see ``napari_sam.training.development_data``) and every
10th plane of the cells3d nuclei volume (automatic labels). Each image is encoded once;
every setting decodes the same embedding. For each setting the script prints the grid
points decoded and AP@0.5 / AP@0.75 summed over images, and writes
``results/everything_skip.json`` with the per-image numbers (after every image: ``--resume``
continues an interrupted run). ``--quick`` uses DSB2018 and four BBBC007 images only,
``--bbbc-stride K`` every K-th BBBC007 image.

The settings compared are the default skip rules and their variants; ``coverage only``
(no embedding-similarity skip) is the baseline the others must match in AP.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_sam.engine.everything.segmenter import AutomaticSegmenter
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.metrics import average_precisions
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.io.samples import load_cells3d_nuclei, load_dsb2018
from napari_sam.training.datasets import images_from_arrays
from napari_sam.training.development_data import load_bbbc007

DEFAULT = EverythingSettings()
SETTINGS = {
    "coverage only": replace(DEFAULT, skip_margin=None),
    "margin 0.05": replace(DEFAULT, skip_margin=0.05, skip_distance=0.0),
    "margin 0.05, distance 2": replace(DEFAULT, skip_margin=0.05, skip_distance=2.0),
    "margin 0.0, distance 2": replace(DEFAULT, skip_margin=0.0, skip_distance=2.0),
}
if "--no-baseline" in sys.argv:  # coverage only decodes most of the grid: 5x the time
    del SETTINGS["coverage only"]


def images(quick: bool, bbbc_stride: int):
    dsb_image, dsb_labels = load_dsb2018()
    found = images_from_arrays(dsb_image, dsb_labels, name="DSB2018")
    bbbc = load_bbbc007()
    found += bbbc[::4] if quick else bbbc[::bbbc_stride]
    if not quick:
        volume, labels = load_cells3d_nuclei()
        planes = images_from_arrays(volume, labels, name="cells3d")
        found += [p for p in planes if int(p.name.split("=")[1].rstrip("]")) in (20, 30, 40)]
    return found


def main() -> None:
    quick = "--quick" in sys.argv
    stride = (
        int(sys.argv[sys.argv.index("--bbbc-stride") + 1]) if "--bbbc-stride" in sys.argv else 1
    )
    out = Path(__file__).parent / "results" / "everything_skip.json"
    # --resume keeps the rows of an interrupted run (written after every image)
    rows = json.loads(out.read_text()) if "--resume" in sys.argv and out.is_file() else []
    done = {(r["image"], r["setting"]) for r in rows}
    predictor = Predictor("vit_t", device="cpu")
    chosen = images(quick, stride)
    for item in chosen:
        todo = {name: s for name, s in SETTINGS.items() if (item.name, name) not in done}
        if not todo:
            continue
        embedding = predictor.encode(item.image, item.normalization)
        for name, settings in todo.items():
            segmenter = AutomaticSegmenter(predictor, settings)
            start = time.perf_counter()
            candidates = segmenter.initialise(
                item.image, item.normalization, embed=lambda window, embedding=embedding: embedding
            )
            result = segmenter.generate(candidates)
            seconds = time.perf_counter() - start
            ap = average_precisions(result.labels, item.labels, (0.5, 0.75))
            rows.append(
                {
                    "image": item.name,
                    "setting": name,
                    "decoded": candidates.points_decoded,
                    "objects": result.count,
                    "ap50": ap[0.5],
                    "ap75": ap[0.75],
                    "decode_seconds": round(seconds, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps(rows, indent=1))
    names = {item.name for item in chosen}
    rows = [r for r in rows if r["setting"] in SETTINGS and r["image"] in names]
    print(
        f"\n{'setting':26s} {'decoded':>8s} {'AP50 mean':>10s} {'AP75 mean':>10s}  "
        f"(over {len(rows) // len(SETTINGS)} images)"
    )
    for name in SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        print(
            f"{name:26s} {sum(r['decoded'] for r in mine):8d} "
            f"{np.mean([r['ap50'] for r in mine]):10.4f} "
            f"{np.mean([r['ap75'] for r in mine]):10.4f}"
        )


if __name__ == "__main__":
    main()
