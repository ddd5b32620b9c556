"""Interactive loop in a real, shown napari viewer: point added -> preview layer updated.

Adds 50 points (one nucleus each, clearing between) to the SAM annotator's points layer
on the bundled 512x512 image and times each ``add`` until the preview layer holds the
new mask (the preview is computed synchronously on the GUI thread, so the call's
duration is the latency). For comparison in the same run: the engine's ``predict`` alone
and the reference-style decoder path. Needs a display: run under ``xvfb-run -a``.
Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from baseline import reference_style_predict

CLICKS = 50


def wait(condition, timeout=120.0):
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        time.sleep(0.005)
        if time.monotonic() > end:
            raise TimeoutError("the embedding did not finish")


def main() -> None:
    import napari

    from napari_sam._widgets import open_annotator
    from napari_sam.demo import prompts_from_labels
    from napari_sam.io.samples import load_dsb2018

    image, labels = load_dsb2018()
    _, _, points = prompts_from_labels(labels)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="nuclei")
    widget = open_annotator(viewer, image="nuclei")
    wait(lambda: widget.worker is None and widget.session.has_embedding(()))
    widget.points_layer.add(points[0])  # warm-up
    widget.clear_prompts()
    widget_times = []
    for point in points[1 : CLICKS + 1]:
        start = time.perf_counter()
        widget.points_layer.add(point)
        widget_times.append(time.perf_counter() - start)
        assert widget.preview_layer.data[int(point[0]), int(point[1])] in (0, 1)
        widget.clear_prompts()
    predictor = widget.session.predictor
    engine_times, baseline_times = [], []
    for point in points[1 : CLICKS + 1]:
        start = time.perf_counter()
        predictor.predict(points=point[None])
        engine_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference_style_predict(predictor.model.module, predictor.embedding, point)
        baseline_times.append(time.perf_counter() - start)
    median = lambda values: round(1000 * statistics.median(values), 1)  # noqa: E731
    print(
        json.dumps(
            {
                "benchmark": "annotator_point_to_preview",
                "clicks": CLICKS,
                "widget_ms_median": median(widget_times),
                "widget_ms_p90": round(1000 * sorted(widget_times)[int(0.9 * CLICKS)], 1),
                "engine_predict_ms_median": median(engine_times),
                "reference_style_ms_median": median(baseline_times),
            }
        )
    )
    widget.close_session()
    viewer.close()


if __name__ == "__main__":
    main()
