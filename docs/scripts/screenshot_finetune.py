"""Screenshot of the fine-tuning widget after a short run on the bundled DSB2018 nuclei.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_finetune.py``);
writes ``docs/images/finetune_widget.png``. The run is 4 steps, enough to show the widget's
final state (status line with the logit calibration), not a useful model.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_sam._widgets.finetune import FineTuneWidget
from napari_sam.io.samples import load_dsb2018

OUT = Path(__file__).resolve().parents[1] / "images" / "finetune_widget.png"


def main() -> None:
    viewer = napari.Viewer(title="napari-sam: fine-tuning")
    viewer.window._qt_window.resize(1500, 900)
    image, labels = load_dsb2018()
    viewer.add_image(image, name="DSB2018")
    viewer.add_labels(labels, name="committed objects", opacity=0.45)
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM fine-tuning", area="right")
    widget.image_box.setCurrentText("DSB2018")
    widget.labels_box.setCurrentText("committed objects")
    widget.steps_box.setValue(4)
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
