"""The instance head of the segment-everything widget: learn, load, save, segment with it.

The data-engine loop in napari: segment, correct a few objects in a labels layer, learn a
head from them (:func:`~napari_sam.training.head_training.train_head` on the widget's torch
thread, cancellable), segment every plane with it
(:class:`~napari_sam.engine.instances.segmenter.HeadSegmenter` through
:meth:`~napari_sam.engine.everything.session.EverythingSession.use_method`), keep it as a
file. Learning only reads the labels layer. A head that cannot be used (another model's, a
damaged file) is refused with its reason, and the previous one stays.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFileDialog

from napari_sam._widgets._everything_form import PREVIEW, free_name
from napari_sam.errors import NapariSamError

KEPT = "SAM everything labels"  # the preview layer's new name once the user learns from it


class HeadActions:
    """The head half of :class:`~napari_sam._widgets.everything.EverythingWidget`.

    Mixed into the widget: uses its viewer, session, jobs, status line and form.
    """

    head = None  # the TrainedHead in use, or None
    head_source: str | None = None  # the file it came from (None: learnt here)
    _head_training = None  # HeadTrainingSettings; see head_training
    _head_store = None  # EmbeddingStore: retraining reuses the embeddings
    _learning: tuple[str, int, int] | None = None  # (stage, done, total) from the torch thread
    _applied: tuple | None = None  # (session, head, mode, settings) the session segments with

    @property
    def head_training(self):
        """The HeadTrainingSettings of Learn head (made on first use: that import loads torch)."""
        if self._head_training is None:
            from napari_sam.training.head_training import HeadTrainingSettings

            self._head_training = HeadTrainingSettings()
        return self._head_training

    @head_training.setter
    def head_training(self, settings) -> None:
        self._head_training = settings

    @property
    def head_mode(self) -> str | None:
        """'apg' or 'ais' when the method box picks a head; None for the point grid."""
        return self.method_box.currentData()

    # ------------------------------------------------------------ the method
    def choose_method(self, *_: object) -> None:
        """Switch between the point grid and the head (the method box)."""
        if self.head_mode is not None and self.head is None:
            self._select_grid()
            self._head_error(
                "No instance head yet: learn one from a labels layer (Learn head) or load one "
                "(Load head...). The point grid stays in use."
            )
            return
        if self.apply_method():
            self.status.setText(f"Method: {self.method_box.currentText()}. Press Preview.")

    def apply_method(self) -> bool:
        """Make the session segment with the chosen method and the form's thresholds.

        False, with the reason shown and the point grid back, when the head belongs to
        another model than the session's.
        """
        from napari_sam.engine.instances.segmenter import HeadSegmenter

        session, head, mode = self.session, self.head, self.head_mode
        if session is None:
            return True
        if head is None or mode is None:
            if self._applied != (session, None, None, None):
                session.use_method(None)
                self._applied = (session, None, None, None)
            return True
        wanted = (session, head, mode, self.current_settings())
        if self._applied == wanted:
            return True
        try:
            head.check_encoder(session.predictor.model.model_id)
        except NapariSamError as error:
            self._select_grid()
            self.apply_method()  # the point grid again
            self._head_error(str(error))
            return False
        session.use_method(HeadSegmenter(session.predictor, head, mode, wanted[3]).segment)
        self._applied = wanted
        return True

    def _select_grid(self) -> None:
        self.method_box.blockSignals(True)
        self.method_box.setCurrentIndex(0)
        self.method_box.blockSignals(False)

    def head_preview_text(self, result) -> str:
        """The status line after a head preview."""
        prompts = f", {result.points_decoded} prompts decoded" if self.head_mode == "apg" else ""
        return f"{result.count} objects with the {self.method_box.currentText()}{prompts}."

    # -------------------------------------------------------------- learning
    def learn_head(self) -> None:
        """Learn a head from the labels layer's objects, in the background (Cancel keeps
        the previous head)."""
        name = self.labels_box.currentText()
        if not name:
            self._head_error(
                "Choose a labels layer with a few correct objects to learn from: paint them, "
                "or correct a preview or a stack run."
            )
            return
        if not self._session_ready(self.learn_head):
            return
        layer = self.viewer.layers[name]
        self._learning = None
        job = self._learning_job(layer.data, self.image_box.currentText())
        self._start(job, self._head_learnt, self.learning_text(), kind="learn")
        if self.jobs.kind == "learn":
            self._claim_preview(layer)
            self._poll_timer.start()

    def _learning_job(self, labels, image: str):
        """``job(should_stop)``: read the labelled planes, then train (torch thread)."""
        from napari_sam.training.embeddings import EmbeddingStore
        from napari_sam.training.head_data import labelled_planes
        from napari_sam.training.head_training import train_head

        session, settings = self.session, self.head_training
        if self._head_store is None:
            self._head_store = EmbeddingStore()
        store = self._head_store

        def job(stop):
            images = labelled_planes(
                session.data,
                session.layout,
                session.normalization,
                labels,
                tile=session.tile,
                name=image,
            )
            return train_head(
                session.predictor.model,
                images,
                settings,
                store=store,
                progress=self._report_learning,
                should_stop=stop,
            )

        return job

    def _report_learning(self, stage: str, done: int, total: int) -> None:
        self._learning = (stage, done, total)  # from the torch thread; _poll shows it

    def learning_text(self) -> str:
        """The status line while learning, e.g. "Learning the head: encoding 3 of 12..."."""
        if self._learning is None:
            return "Learning the head: reading the labelled planes..."
        stage, done, total = self._learning
        step = "training step" if stage == "training" else stage
        return f"Learning the head: {step} {done} of {total}..."

    def _head_learnt(self, head) -> None:
        self.head, self.head_source = head, None
        self._show_head()
        self.apply_method()
        card = head.card
        then = "Press Preview" if self.head_mode else "Choose a head method, then press Preview"
        self.status.setText(
            f"Head learnt from {card.planes} planes, {card.objects} objects in "
            f"{card.seconds:.0f} s. {then} to segment with it."
        )

    def _claim_preview(self, layer) -> None:
        """Once learnt from, the preview layer holds the user's corrections: renamed, so the
        next preview goes to a new layer instead of over them."""
        if layer.name != PREVIEW:
            return
        layer.name = free_name(self.viewer.layers, KEPT)
        self.reset_choices()
        self.labels_box.setCurrentText(layer.name)

    # ----------------------------------------------------------- load, save
    def load_head(self, path: str | Path) -> bool:
        """Use the head saved at ``path`` (NAME, NAME.pt or NAME.json).

        False, with the reason shown and nothing changed, when it is missing, damaged or
        trained for another model.
        """
        from napari_sam.engine.instances.head import head_paths, load_head

        if self.jobs.worker is not None:
            self._head_error("Segment everything is running; cancel it before loading a head.")
            return False
        try:
            head = load_head(path)
            model_id = self._model_id()
            if model_id is not None:
                head.check_encoder(model_id)
        except NapariSamError as error:
            self._head_error(str(error))
            return False
        self.head, self.head_source = head, head_paths(path)[0].name
        self._show_head()
        if self.apply_method():
            then = "Press Preview" if self.head_mode else "Choose a head method, then press Preview"
            self.status.setText(f"Loaded the head {self.head_source}. {then} to segment with it.")
        return True

    def save_head(self, path: str | Path) -> Path | None:
        """Write the head as NAME.pt and its card NAME.json; returns the .pt path (None,
        with the reason shown, if there is no head or the folder is not writable)."""
        if self.head is None:
            self._head_error("No instance head to save: learn or load one first.")
            return None
        try:
            written = self.head.save(path)
        except OSError as error:
            self._head_error(f"Could not save the head to {path}: {error}")
            return None
        self.head_source = written.name
        self._show_head()
        self.status.setText(f"Saved the head to {written} (its card: {written.stem}.json).")
        return written

    def load_head_dialog(self) -> None:
        """Ask for a head file, then :meth:`load_head` it."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Load an instance head", "", "Instance head (*.pt *.json)"
        )
        if path:
            self.load_head(path)

    def save_head_dialog(self) -> None:
        """Ask where, then :meth:`save_head`."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the instance head", "instance_head.pt", "Instance head (*.pt)"
        )
        if path:
            self.save_head(path)

    # -------------------------------------------------------------- helpers
    def _model_id(self) -> str | None:
        """The id of the widget's model; None while unknown (a checkpoint file not loaded
        yet: the head is checked when the session opens, by apply_method)."""
        if self.session is not None:
            return self.session.predictor.model.model_id
        model = self.model_name
        if hasattr(model, "model_id"):  # a loaded SamModel
            return model.model_id
        from napari_sam.engine.model.registry import get_model_spec

        try:
            spec = get_model_spec(model)
        except NapariSamError:
            return None
        return spec.model_id if spec.sha256 else None

    def _show_head(self) -> None:
        self.head_label.setText(describe_head(self.head, self.head_source))
        self.head_label.setToolTip(_card_details(self.head))
        self.save_button.setEnabled(self.head is not None)

    def _head_error(self, message: str) -> None:
        self.status.setText(message)
        show_error(f"napari-sam: {message}")


def describe_head(head, source: str | None = None) -> str:
    """One line on a head, e.g. "head: learnt from 3 planes, 212 objects, 41 s"."""
    if head is None:
        return "no head"
    card = head.card
    planes = f"{card.planes} plane{'s' if card.planes != 1 else ''}"
    origin = f"{source}, " if source else ""
    return f"head: {origin}learnt from {planes}, {card.objects} objects, {card.seconds:.0f} s"


def _card_details(head) -> str:
    if head is None:
        return "No instance head: learn one (Learn head) or load one (Load head...)."
    card = head.card
    quality = ", ".join(
        f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in card.quality.items()
    )
    return f"Trained on: {card.trained_on}\nFrom: {card.mode}\nFor the model: {card.encoder}" + (
        f"\nQuality: {quality}" if quality else ""
    )
