"""Screenshot of the segment-everything widget segmenting a cells3d plane with a head.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_instance_head.py
HEAD``) with HEAD a head for vit_t, e.g. the ``labels.head.pt`` of
``napari-sam segment-everything cells3d.tif --out labels.zarr --learn 5``; writes
``docs/images/instance_head_widget.png``: plane 35 of the cells3d nuclei (not one the head
learnt from), previewed in APG mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_sam._widgets.everything import EverythingWidget
from napari_sam.io.samples import load_cells3d_nuclei

OUT = Path(__file__).resolve().parents[1] / "images" / "instance_head_widget.png"
PLANE = 35


def main() -> None:
    viewer = napari.Viewer(title="napari-sam: segment everything with an instance head")
    viewer.window._qt_window.resize(1500, 900)
    volume, _ = load_cells3d_nuclei()
    viewer.add_image(volume, name="cells3d nuclei")
    viewer.dims.set_current_step(0, PLANE)
    widget = EverythingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM segment everything", area="right")
    widget.image_box.setCurrentText("cells3d nuclei")
    widget.load_head(sys.argv[1])
    widget.method_box.setCurrentIndex(1)  # head: SAM prompts (APG)
    widget.preview()

    def poll() -> None:
        if widget.worker is not None or "preview" not in viewer.layers:
            if "SAM everything preview" not in viewer.layers:
                return
        if widget.worker is not None:
            return
        timer.stop()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(OUT), canvas_only=False)
        print(widget.status.text(), "|", widget.head_label.text())
        viewer.close()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(500)
    napari.run()


if __name__ == "__main__":
    sys.exit(main())
