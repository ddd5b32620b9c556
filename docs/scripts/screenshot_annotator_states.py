"""Screenshots of the SAM annotator while its model loads and when a commit asks first.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_annotator_states.py``);
writes ``docs/images/annotator_loading.png`` and ``docs/images/annotator_large_commit.png``.
The model load is held on an event for the first picture (a real load of the cached vit_t
weights takes about a second); the second shows two positive clicks in "one object" mode,
one on a nucleus and one on the background, after the first Commit.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QTimer

from napari_sam._widgets import open_annotator
from napari_sam.demo import prompts_from_labels
from napari_sam.io.samples import load_dsb2018

IMAGES = Path(__file__).resolve().parents[1] / "images"


def main() -> int:
    viewer = napari.Viewer(title="napari-sam: annotator")
    viewer.window._qt_window.resize(1500, 900)
    image, truth = load_dsb2018()
    viewer.add_image(image, name="DSB2018 nuclei")
    widget = open_annotator(viewer, image="DSB2018 nuclei", start=False)
    release = threading.Event()
    load = widget._shared_model

    def held_load():  # runs on the torch thread; the GUI keeps drawing meanwhile
        release.wait(60)
        return load()

    widget._shared_model = held_load
    widget.start()
    _ids, _boxes, points = prompts_from_labels(truth)
    background = (148, 237)  # a background pixel (as in tests/widgets/test_annotator_commit.py)
    steps = iter([loading_shot, wait_ready, clicks, commit_shot])
    state = {"widget": widget, "viewer": viewer, "release": release}
    state["points"] = [points[0], np.array(background, float)]

    def tick() -> None:
        step = state.get("step") or next(steps, None)
        if step is None:
            timer.stop()
            viewer.close()
            return
        state["step"] = None if step(state) else step

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(700)
    napari.run()
    return 0


def loading_shot(state) -> bool:
    widget = state["widget"]
    print("loading:", widget.status.text())
    state["viewer"].screenshot(str(IMAGES / "annotator_loading.png"), canvas_only=False)
    state["release"].set()
    return True


def wait_ready(state) -> bool:
    widget = state["widget"]
    return widget.worker is None and widget.session is not None


def clicks(state) -> bool:
    for point in state["points"]:
        state["widget"].points_layer.add(point)
    return True


def commit_shot(state) -> bool:
    widget = state["widget"]
    widget.commit()
    print("commit:", widget.status.text())
    state["viewer"].screenshot(str(IMAGES / "annotator_large_commit.png"), canvas_only=False)
    return True


if __name__ == "__main__":
    sys.exit(main())
