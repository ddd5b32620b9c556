"""How long the GUI stalls while the annotator propagates objects through a stack.

Usage: ``xvfb-run -a python benchmarks/bench_propagation_gui.py`` (the viewer is never
shown, but napari needs OpenGL to add layers, which Qt's offscreen platform lacks).

Opens the SAM annotator (default weights) on the cells3d nuclei volume (60 x 256 x 256),
encodes all 60 planes first so that propagation runs at decoder speed, commits on slice 30
the box of every nucleus labelled there, and presses Propagate with nothing previewed (the
committed objects are carried through the stack with the engine's default settings). A
10 ms QTimer ticks on the GUI thread from the press until the result is written; the
longest gap between two ticks is the longest the GUI froze, the press and the final
write into the labels layer included (the writes are planned on the torch thread; the GUI
thread checks and writes them). The same gap measured for as long with nothing
running is the baseline. Prints one JSON line.
"""

from __future__ import annotations

import json
import time

import numpy as np

PLANE = 30  # the middle of the 60 slices
TICK_MS = 10
IDLE_S = 2.0  # how long the baseline listens to an idle event loop


def wait(condition, timeout: float = 600.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        time.sleep(0.005)
        if time.monotonic() > end:
            raise TimeoutError("the annotator did not get ready")


def tick_gaps(until, start=None) -> list[float]:
    """Gaps in ms between the ticks of a 10 ms timer, from ``start()`` until ``until()``."""
    from qtpy.QtCore import QEventLoop, QTimer

    ticks: list[float] = []
    loop = QEventLoop()

    def tick() -> None:
        ticks.append(time.perf_counter())
        if until():
            loop.quit()

    timer = QTimer(interval=TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    if start is not None:
        QTimer.singleShot(0, start)  # the press runs inside the event loop, like a click
    loop.exec_()
    timer.stop()
    return list(1000 * np.diff(ticks))


def commit_nuclei(widget, labels: np.ndarray) -> int:
    """Commit the box of every nucleus labelled on slice PLANE; returns how many."""
    plane = labels[PLANE]
    rectangles = []
    for label in np.unique(plane[plane > 0]):
        rows, cols = np.nonzero(plane == label)
        r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
        rectangles.append([[PLANE, r0, c0], [PLANE, r0, c1], [PLANE, r1, c1], [PLANE, r1, c0]])
    widget.boxes_layer.add_rectangles(np.array(rectangles, float))
    widget.commit(force=True)
    return len(rectangles)


def main() -> None:
    import napari

    from napari_sam._widgets import open_annotator
    from napari_sam.io.samples import load_cells3d_nuclei

    image, labels = load_cells3d_nuclei()
    viewer = napari.Viewer(show=False)
    viewer.add_image(image, name="nuclei")
    widget = open_annotator(viewer, image="nuclei")
    wait(lambda: widget.worker is None and widget.session is not None)
    session = widget.session
    session.store.capacity = len(image)  # the default keeps 16 planes; propagation needs 60
    start = time.perf_counter()
    for z in range(len(image)):
        session.embed((z,))
    encode_s = time.perf_counter() - start
    viewer.dims.set_current_step(0, PLANE)
    wait(lambda: widget.worker is None and session.has_embedding((PLANE,)))
    objects = commit_nuclei(widget, labels)

    wait(lambda: widget.worker is None)
    idle_end = time.perf_counter() + IDLE_S
    idle = tick_gaps(lambda: time.perf_counter() > idle_end)
    handled: list[float] = []  # the GUI thread's share of the end: check, write, status
    done = widget._propagated_done

    def timed_done(*args):
        began = time.perf_counter()
        try:
            return done(*args)
        finally:
            handled.append(time.perf_counter() - began)

    widget._propagated_done = timed_done
    pressed = []
    start = time.perf_counter()
    gaps = tick_gaps(
        lambda: bool(pressed) and widget.jobs.kind != "propagate",
        lambda: pressed.append(widget.propagate()),
    )
    propagation_s = time.perf_counter() - start
    propagation, _ = next(iter(widget._propagated.values()))
    print(
        json.dumps(
            {
                "benchmark": "propagation_gui_stall",
                "objects": objects,
                "slice_objects": widget._progress[0],
                "slices_written": sum(len(o.slices) for o in propagation.objects),
                "propagation_s": round(propagation_s, 2),
                "longest_stall_ms": round(max(gaps), 1),
                "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
                "final_write_ms": round(1000 * handled[0], 1),
                "idle_longest_gap_ms": round(max(idle), 1),
                "encode_60_planes_s": round(encode_s, 1),
                "status": widget.status.text(),
            }
        )
    )
    widget.close_session()
    viewer.close()


if __name__ == "__main__":
    main()
