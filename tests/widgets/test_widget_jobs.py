"""Background jobs of the widgets: the model loads off the GUI thread, a replaced job's
signals leave its successor alone, and errors reach the widget. Tiny random SAM (fast).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool, QTimer

from napari_sam.errors import CheckpointError, InvalidInputError, OperationCancelled

WAIT_MS = 60_000


@pytest.fixture
def ticks(qtbot):
    """Counts the ticks of a 10 ms QTimer on the GUI thread: proof the event loop runs."""
    count = [0]
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: count.__setitem__(0, count[0] + 1))
    timer.start()
    yield count
    timer.stop()


def blocking(release: threading.Event, result):
    """A loader that waits for ``release`` (on the torch thread), then returns or raises."""

    def load(*args, **kwargs):
        assert release.wait(WAIT_MS / 1000), "the test never released the loader"
        if isinstance(result, Exception):
            raise result
        return result

    return load


@pytest.fixture
def annotator(make_napari_viewer, image_300x500):
    from napari_sam._widgets import open_annotator

    viewer = make_napari_viewer()
    viewer.add_image(image_300x500, name="blobs")
    widget = open_annotator(viewer, image="blobs", start=False)
    yield viewer, widget
    widget.close_session()


def test_annotator_loads_the_model_while_the_gui_runs(annotator, qtbot, ticks, tiny_model):
    from napari_sam.engine.prediction.predictor import Predictor

    viewer, widget = annotator
    release = threading.Event()
    widget._shared_model = blocking(release, Predictor(tiny_model))
    assert not widget.commit_button.isEnabled()  # no session yet
    widget.start()
    assert widget.jobs.kind == "load" and widget.status.text().startswith("loading model vit_t")
    assert not widget.start_button.isEnabled() and widget.cancel_button.isEnabled()
    assert widget.cancel_button.text() == "Cancel loading"
    before = ticks[0]
    qtbot.waitUntil(lambda: ticks[0] >= before + 5, timeout=WAIT_MS)  # GUI alive meanwhile
    assert widget.session is None and widget.jobs.kind == "load"
    assert [layer.name for layer in viewer.layers] == ["blobs"]

    release.set()
    qtbot.waitUntil(lambda: widget.worker is None and widget.session is not None, timeout=WAIT_MS)
    assert widget.session.has_embedding(())  # loaded, then encoded
    assert widget.start_button.isEnabled() and widget.commit_button.isEnabled()
    assert not widget.cancel_button.isEnabled()
    assert widget.labels_box.currentText() == "SAM objects"
    assert [layer.name for layer in viewer.layers] == [
        "blobs",
        "SAM preview",
        "SAM objects",
        "SAM boxes",
        "SAM points",
    ]


def test_a_failed_load_is_shown_in_the_annotator(annotator, qtbot):
    _viewer, widget = annotator
    release = threading.Event()
    error = CheckpointError("Checksum mismatch for mobile_sam.pt: got sha256 00, expected 6d.")
    widget._shared_model = blocking(release, error)
    widget.start()
    release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.text() == f"Error: {error}"
    assert widget.session is None and widget.start_button.isEnabled()
    assert not widget.cancel_button.isEnabled() and not widget.commit_button.isEnabled()


def test_cancel_stops_a_download_and_keeps_nothing(annotator, qtbot):
    _viewer, widget = annotator
    started, release = threading.Event(), threading.Event()

    def download(*args, **kwargs):  # what load_model does with the progress callback
        widget._download(1_000_000, 40_000_000)
        started.set()
        assert release.wait(WAIT_MS / 1000)
        widget._download(2_000_000, 40_000_000)  # the next chunk sees the cancellation
        raise AssertionError("the download went on after Cancel")

    widget._shared_model = download
    widget.start()
    assert started.wait(WAIT_MS / 1000)
    qtbot.waitUntil(lambda: "downloaded 1 of 40 MB" in widget.status.text(), timeout=WAIT_MS)
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.session is None and widget.start_button.isEnabled()
    assert widget.status.text().startswith("Cancelled: The model download was cancelled")


@pytest.fixture
def opened(annotator, qtbot, tiny_model):
    """The annotator with a session on the tiny SAM, its plane encoded."""
    from napari_sam.engine.prediction.predictor import Predictor

    viewer, widget = annotator
    predictor = Predictor(tiny_model)
    widget._shared_model = lambda *_: predictor
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None and widget.session is not None, timeout=WAIT_MS)
    return viewer, widget


def test_a_replaced_job_ending_later_leaves_cancel_enabled(opened, qtbot):
    _viewer, widget = opened
    first_release, second_release = threading.Event(), threading.Event()
    results = []

    def first(stop):  # still running when the second job starts; ends cancelled
        assert first_release.wait(WAIT_MS / 1000)
        if stop():
            raise OperationCancelled("The image encoding was cancelled.")
        return "first"

    def second(stop):
        assert second_release.wait(WAIT_MS / 1000)
        return "second"

    first_worker = widget.jobs.start(first, results.append, kind="encode")
    second_worker = widget.jobs.start(second, results.append, kind="encode")
    widget.status.setText("Encoding plane 1 in the background...")
    with qtbot.waitSignal(first_worker.finished, timeout=WAIT_MS):
        first_release.set()
    assert widget.worker is second_worker and widget.cancel_button.isEnabled()
    assert widget.status.text() == "Encoding plane 1 in the background..."
    assert results == []
    second_release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert results == ["second"] and not widget.cancel_button.isEnabled()


@pytest.mark.parametrize("outcome", ["returned", "errored"])
def test_signals_of_a_finished_replaced_job_are_dropped(opened, qtbot, outcome):
    """The first job has ended and its signals wait in the queue when the second starts."""
    _viewer, widget = opened
    first_release, release, results, delivered = threading.Event(), threading.Event(), [], []

    def first(stop):
        assert first_release.wait(WAIT_MS / 1000)
        if outcome == "errored":
            raise InvalidInputError("a stale error that is still shown")
        return "first"

    first_worker = widget.jobs.start(first, results.append, kind="encode")
    first_worker.finished.connect(lambda: delivered.append(True))
    first_release.set()
    assert QThreadPool.globalInstance().waitForDone(WAIT_MS)  # ended; signals not delivered
    assert delivered == []
    second_worker = widget.jobs.start(
        lambda stop: release.wait(WAIT_MS / 1000) and "second", results.append, kind="encode"
    )
    qtbot.waitUntil(lambda: delivered == [True], timeout=WAIT_MS)  # the queued signals arrive
    assert widget.worker is second_worker and widget.cancel_button.isEnabled()
    assert results == []
    release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert results == ["second"] and not widget.cancel_button.isEnabled()


def test_everything_loads_the_model_while_the_gui_runs(
    make_napari_viewer, qtbot, ticks, tiny_model, image_300x500, monkeypatch
):
    from napari_sam._widgets import everything
    from napari_sam.engine.prediction.predictor import Predictor

    viewer = make_napari_viewer()
    viewer.add_image(image_300x500, name="blobs")
    widget = everything.EverythingWidget(viewer, model="vit_t")
    widget.points_box.setValue(4)
    release = threading.Event()
    monkeypatch.setattr(everything, "open_predictor", blocking(release, Predictor(tiny_model)))
    widget.preview()
    assert widget.jobs.kind == "load" and widget.status.text().startswith("loading model vit_t")
    assert not widget.preview_button.isEnabled() and not widget.run_button.isEnabled()
    assert widget.cancel_button.isEnabled()
    before = ticks[0]
    qtbot.waitUntil(lambda: ticks[0] >= before + 5, timeout=WAIT_MS)
    assert widget.session is None and "SAM everything preview" not in viewer.layers

    release.set()
    qtbot.waitUntil(lambda: "SAM everything preview" in viewer.layers, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.session.predictor.model is tiny_model
    assert "decoded grid points" in widget.status.text()
    assert widget.preview_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_finetuning_loads_the_model_while_the_gui_runs(
    make_napari_viewer, qtbot, ticks, tmp_path, monkeypatch
):
    from napari_sam._widgets.finetune import FineTuneWidget
    from napari_sam.training import annotations

    viewer = make_napari_viewer()
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30], labels[40:60, 35:55] = 1, 2
    viewer.add_image((labels > 0) * 1000.0 + 100, name="cells")
    viewer.add_labels(labels, name="committed")
    widget = FineTuneWidget(viewer)
    widget.image_box.setCurrentText("cells")
    widget.labels_box.setCurrentText("committed")
    widget.output_edit.setText(str(tmp_path))
    release = threading.Event()
    error = CheckpointError("finetuned.pt does not fit the architecture of 'vit_t'.")
    monkeypatch.setattr(annotations, "load_trainable", blocking(release, error))
    widget.run()
    assert widget.status.text().startswith("loading model vit_t and preparing 1 image(s)")
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    before = ticks[0]
    qtbot.waitUntil(lambda: ticks[0] >= before + 5, timeout=WAIT_MS)
    assert widget.worker is not None
    release.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.text() == str(error)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    widget.close()
