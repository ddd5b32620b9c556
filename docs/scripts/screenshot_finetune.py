"""Screenshot of the fine-tuning widget after a short run on label-free whole cells.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_finetune.py``);
writes ``docs/images/finetune_widget.png``. The committed objects are the curated whole
cells of the scratch-assay time-lapse (10 frames, oblique light; two frames validate);
the domains to keep are the development nuclei (the widget's default). The run is limited
to MINUTES minutes, enough to show both validation curves, the two numbers and the
offer to use the new weights; it is not the experiment of docs/training.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_sam._widgets.finetune import FineTuneWidget
from napari_sam.training.image_sets import load_scratch_assay

OUT = Path(__file__).resolve().parents[1] / "images" / "finetune_widget.png"
MINUTES = 4


def main() -> None:
    viewer = napari.Viewer(title="napari-sam: fine-tuning")
    viewer.window._qt_window.resize(1500, 900)
    channels = load_scratch_assay()
    viewer.add_image(channels[1], name="scratch assay (oblique light)")
    viewer.add_labels(channels[3], name="committed objects", opacity=0.35)
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM fine-tuning", area="right")
    widget.image_box.setCurrentText("scratch assay (oblique light)")
    widget.labels_box.setCurrentText("committed objects")
    widget.minutes_box.setValue(MINUTES)
    widget.output_edit.setText(tempfile.mkdtemp(prefix="napari-sam-shot-"))
    widget.run()

    def poll() -> None:
        if widget.worker is not None:
            return
        timer.stop()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(OUT), canvas_only=False)
        print(widget.status.text())
        viewer.close()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(500)
    napari.run()


if __name__ == "__main__":
    sys.exit(main())
