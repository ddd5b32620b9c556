"""Screenshot of the segment-everything widget previewing the bundled DSB2018 nuclei.

Run under a display
(``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/screenshot_everything.py``);
writes ``docs/images/everything_widget.png``: the point grid with the default settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
from qtpy.QtCore import QTimer

from napari_sam._widgets.everything import EverythingWidget
from napari_sam.io.samples import load_dsb2018

OUT = Path(__file__).resolve().parents[1] / "images" / "everything_widget.png"


def main() -> None:
    viewer = napari.Viewer(title="napari-sam: segment everything")
    viewer.window._qt_window.resize(1500, 900)
    image, _ = load_dsb2018()
    viewer.add_image(image, name="nuclei")
    widget = EverythingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM segment everything", area="right")
    widget.image_box.setCurrentText("nuclei")
    widget.preview()

    def poll() -> None:
        if widget.worker is not None or "SAM everything preview" not in viewer.layers:
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
