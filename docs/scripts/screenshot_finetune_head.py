"""Screenshot of the fine-tuning widget learning an instance head, then segment-everything
previewing with it.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_finetune_head.py``);
writes ``docs/images/finetune_head.png``. The committed objects are every nucleus of plane
30 of the cells3d volume; the head learns from them (the default 500 steps, about 2-3
minutes on 2 cores), is handed to the segment-everything widget, and previews plane 36,
which it never saw, in AIS mode.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QTimer

from napari_sam._widgets.everything import EverythingWidget
from napari_sam._widgets.finetune import HEAD, FineTuneWidget
from napari_sam.io.samples import load_cells3d_nuclei

OUT = Path(__file__).resolve().parents[1] / "images" / "finetune_head.png"
LEARNT, SHOWN = 30, 36


def main() -> None:
    viewer = napari.Viewer(title="napari-sam: learn an instance head from committed objects")
    viewer.window._qt_window.resize(1500, 1000)
    volume, labels = load_cells3d_nuclei()
    committed = np.zeros_like(labels, dtype=np.int32)
    committed[LEARNT] = labels[LEARNT]  # one plane annotated in full
    viewer.add_image(volume, name="cells3d nuclei")
    viewer.add_labels(committed, name="committed objects", opacity=0.45)
    viewer.dims.set_current_step(0, SHOWN)
    tuner = FineTuneWidget(viewer)
    everything = EverythingWidget(viewer)
    viewer.window.add_dock_widget(tuner, name="SAM fine-tuning", area="right")
    viewer.window.add_dock_widget(everything, name="SAM segment everything", area="right")
    tuner.image_box.setCurrentText("cells3d nuclei")
    tuner.labels_box.setCurrentText("committed objects")
    tuner.parts_box.setCurrentText(HEAD)
    tuner.output_edit.setText(tempfile.mkdtemp(prefix="napari-sam-shot-"))
    everything.image_box.setCurrentText("cells3d nuclei")
    tuner.run()
    state = {"previewing": False}

    def poll() -> None:
        if tuner.worker is not None or everything.worker is not None:
            return
        if not state["previewing"]:
            state["previewing"] = True
            everything.method_box.setCurrentIndex(2)  # head: instances (AIS)
            everything.preview()
            return
        if "SAM everything preview" not in viewer.layers:
            return
        timer.stop()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(OUT), canvas_only=False)
        print(tuner.status.text(), "|", everything.status.text())
        viewer.close()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(500)
    napari.run()


if __name__ == "__main__":
    sys.exit(main())
