"""Screenshot of the annotator after propagating the cells3d nuclei, in napari's 3D view.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_propagation.py
[--cache DIR]``); writes ``docs/images/propagation_3d.png``. One box per nucleus visible on
slice 30 (from the volume's labels), previewed, then **Propagate** [Shift-P]: every object
is carried up and down the stack in one batched pass and committed as one undo step; the
picture shows the objects layer in 3D beside the annotator. ``--cache`` reuses the
embeddings written by ``benchmarks/eval_propagation.py`` (otherwise the 60 planes are
encoded first, about a minute).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QTimer

from napari_sam._widgets import open_annotator
from napari_sam.engine.annotation.session import bounding_box
from napari_sam.io.samples import load_cells3d_nuclei

IMAGES = Path(__file__).resolve().parents[1] / "images"
SLICE = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/napari_sam_eval"))
    args = parser.parse_args()
    viewer = napari.Viewer(title="napari-sam: propagation")
    viewer.window._qt_window.resize(1500, 900)
    volume, labels = load_cells3d_nuclei()
    viewer.add_image(volume, name="cells3d nuclei", contrast_limits=(2000, 40000))
    widget = open_annotator(viewer, image="cells3d nuclei", start=False)
    cache = args.cache / "cells3d.emb"
    if cache.exists():
        widget.cache_edit.setText(str(cache))
    viewer.dims.set_current_step(0, SLICE)
    widget.start()
    state = {"widget": widget, "viewer": viewer, "labels": labels}
    steps = iter([ready, boxes, previewed, propagated, shot])

    def tick() -> None:
        step = state.get("step") or next(steps, None)
        if step is None:
            timer.stop()
            viewer.close()
            return
        state["step"] = None if step(state) else step

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(500)
    napari.run()
    return 0


def ready(state) -> bool:
    widget = state["widget"]
    return (
        widget.worker is None
        and widget.session is not None
        and widget.session.has_embedding((SLICE,))
    )


def boxes(state) -> bool:
    widget, labels = state["widget"], state["labels"]
    for label in np.unique(labels[SLICE])[1:]:
        if np.count_nonzero(labels[SLICE] == label) < 200:
            continue  # a nucleus's last sliver: its own middle slice is elsewhere
        row0, col0, row1, col1 = bounding_box(labels[SLICE] == label)
        corners = [
            [SLICE, row0, col0],
            [SLICE, row0, col1],
            [SLICE, row1, col1],
            [SLICE, row1, col0],
        ]
        widget.boxes_layer.add_rectangles(np.array(corners, float))
    return True


def previewed(state) -> bool:
    widget = state["widget"]
    if widget.preview_result is None or not widget.preview_result.objects:
        return False
    widget.propagate()
    return True


def propagated(state) -> bool:
    widget = state["widget"]
    if widget.worker is not None:
        return False
    print(widget.status.text())
    return True


def shot(state) -> bool:
    viewer, widget = state["viewer"], state["widget"]
    for layer in (widget.preview_layer, widget.points_layer, widget.boxes_layer):
        layer.visible = False
    viewer.layers["cells3d nuclei"].visible = False
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (10, -35, 60)
    viewer.camera.zoom = 2.2
    viewer.screenshot(str(IMAGES / "propagation_3d.png"), canvas_only=False)
    print(f"wrote {IMAGES / 'propagation_3d.png'}")
    return True


if __name__ == "__main__":
    raise SystemExit(main())
