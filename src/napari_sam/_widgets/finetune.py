"""The "SAM fine-tuning" dock widget: train on the committed objects, then use the new model.

The data-engine loop in napari: segment (automatically or by clicks), correct, commit to
a labels layer, fine-tune here, and continue annotating with the fine-tuned model. The
widget reads the chosen image and labels layers, runs
:func:`~napari_sam.training.annotations.fine_tune_annotations` on a
:class:`~napari_sam.engine.model.threads.TorchThread`, model loading included (the GUI stays
responsive; the status says "loading model ..." until the first step, then a timer shows
progress), and plots the validation mean IoU of the committed objects and of the domains
to keep (the development nuclei, see :mod:`~napari_sam.training.retention`) as it goes.
When it ends, it shows both numbers, released against saved weights, and offers **Use in
annotators**, which switches every open SAM annotator to the new weights.

With **train: instance head** it learns an instance head from the same committed objects
instead (:mod:`~napari_sam._widgets.finetune_head`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam._widgets.curves import CurvesPlot
from napari_sam._widgets.finetune_head import HeadLearning
from napari_sam.errors import NapariSamError, OperationCancelled

POLL_MS = 250  # how often the progress bar reads the training's latest report
HEAD = "instance head"  # the "train" choice that learns an instance head, not SAM


class FineTuneWidget(HeadLearning, QWidget):
    """Dock widget that fine-tunes SAM on an image layer and its labels layer."""

    def __init__(self, napari_viewer, model: str = "vit_t") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model
        self.worker = None
        self.result = None  # TrainingResult of the last finished run
        self.head_path: Path | None = None  # the head saved by the last head run
        self._latest = None  # TrainingProgress, written by the torch thread
        self._stop = False
        self._torch = None
        self._build_ui()
        self.reset_choices()
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._show_progress)

    def _build_ui(self) -> None:
        from napari_sam.engine.everything.settings import EverythingSettings
        from napari_sam.training.config import PAPER_PROMPTS, TrainingConfig
        from napari_sam.training.head_settings import HeadTrainingSettings

        # The fields start at TrainingConfig's defaults: the recipe of docs/training.md's
        # experiment (about 6 s a step on 2 cores).
        defaults = TrainingConfig()
        self.image_box, self.labels_box = QComboBox(), QComboBox()
        self.model_edit = QLineEdit(self.model_name)
        self.parts_box = QComboBox()
        # all three train on cached embeddings
        self.parts_box.addItems(["decoder", "decoder+prompt", HEAD])
        self.parts_box.setCurrentText(defaults.trainable)
        self.parts_box.setToolTip(
            "decoder, decoder+prompt: fine-tune SAM for the annotator. instance head: learn a "
            "head for segment-everything's APG and AIS methods (SAM stays as it is)."
        )
        self.steps_box, self.objects_box = QSpinBox(), QSpinBox()
        self.steps_box.setRange(1, 100_000)
        self.steps_box.setValue(defaults.steps)
        self._other_steps = HeadTrainingSettings().steps  # of the choice not shown
        self.objects_box.setRange(1, 64)
        self.objects_box.setValue(defaults.objects_per_step)
        self.iterations_box = QSpinBox()
        self.iterations_box.setRange(1, PAPER_PROMPTS.iterations)
        self.iterations_box.setValue(defaults.prompts.iterations)
        self.iterations_box.setToolTip(
            "Prompting rounds per step: first prompt, corrective clicks, and one round without a "
            f"new click (the SAM paper uses {PAPER_PROMPTS.iterations}; each round costs about "
            "one more decoder pass)."
        )
        self.minutes_box = QSpinBox()
        self.minutes_box.setRange(0, 100_000)
        self.minutes_box.setSpecialValueText("none")
        self.minutes_box.setValue(round(defaults.max_minutes or 0))
        self.minutes_box.setToolTip(
            "Stop after this many minutes, keeping the best weights (none: run all steps). With "
            "a limit, how far training gets depends on the machine's speed."
        )
        self.freeze_iou_box = QCheckBox("keep the released IoU head")
        self.freeze_iou_box.setChecked(defaults.freeze_iou_head)
        self.freeze_iou_box.setToolTip(
            "Train the masks but not the IoU prediction (the score that picks which of a click's "
            "three masks is shown). Unticked (the default, as in the SAM paper), it learns which "
            "mask your objects are, and its scores are shifted back so that segment-everything's "
            f"threshold ({EverythingSettings().pred_iou_thresh}) passes as many masks as before. "
            "Tick it if you segment everything in the domains you keep: the trained head cost "
            "segment-everything on kept nuclei 0.05 AP in docs/training.md."
        )
        self.keep_box = QCheckBox("keep the development nuclei")
        self.keep_box.setChecked(True)
        self.keep_box.setToolTip(
            "Do not forget what the released model does well: a share of the steps trains on the "
            "development nuclei (fetched once; half at first, then less while the nuclei keep "
            "their validation score, more when they slip), their score is plotted beside "
            "yours, and the saved weights are a mix of the trained and the released ones, "
            f"chosen so that the nuclei lose at most {defaults.retention.tolerance} there "
            "and segment-everything on them at most "
            f"{defaults.retention.everything_tolerance} AP@0.5 (docs/training.md)."
        )
        self.output_edit = QLineEdit(str(Path.home() / "napari-sam-finetuned"))
        self.run_button, self.cancel_button = QPushButton("Fine-tune"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.use_button = QPushButton("Use in annotators")
        self.use_button.setEnabled(False)
        self.use_button.setToolTip("Switch every open SAM annotator to the fine-tuned weights.")
        self.curves = CurvesPlot()
        self.progress_bar, self.status = QProgressBar(), QLabel("Commit objects, then fine-tune.")
        self.status.setWordWrap(True)
        form = QFormLayout()
        for label, box in (
            ("image", self.image_box),
            ("objects", self.labels_box),
            ("start from", self.model_edit),
            ("train", self.parts_box),
            ("steps", self.steps_box),
            ("objects per step", self.objects_box),
            ("prompt rounds", self.iterations_box),
            ("time limit (min)", self.minutes_box),
            ("IoU head", self.freeze_iou_box),
            ("don't forget", self.keep_box),
            ("save under", self.output_edit),
        ):
            form.addRow(label, box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.curves)
        layout.addWidget(self.use_button)
        layout.addStretch()
        self.run_button.clicked.connect(self.run)
        self.use_button.clicked.connect(self.use_result)
        self.cancel_button.clicked.connect(self.cancel)
        self._sam_only = (self.objects_box, self.iterations_box, self.minutes_box)
        self._sam_only += (self.freeze_iou_box, self.keep_box)
        self._previous_parts = self.parts_box.currentText()
        self.parts_box.currentTextChanged.connect(self._parts_changed)

    def _parts_changed(self, parts: str) -> None:
        """Switching between SAM and the head swaps the step count and greys out the
        fields that only fine-tuning SAM uses."""
        head = parts == HEAD
        if head != (self._previous_parts == HEAD):
            steps = self.steps_box.value()
            self.steps_box.setValue(self._other_steps)
            self._other_steps = steps
        self._previous_parts = parts
        for box in self._sam_only:
            box.setEnabled(not head)
        self.run_button.setText("Learn head" if head else "Fine-tune")

    def reset_choices(self, *_: object) -> None:
        """Refresh the layer lists."""
        for box, kind in ((self.image_box, Image), (self.labels_box, Labels)):
            current = box.currentText()
            box.clear()
            box.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, kind)])
            if current:
                box.setCurrentText(current)

    def run(self) -> None:
        """Start fine-tuning on the chosen layers in the background."""
        from napari_sam.training.annotations import annotated_images
        from napari_sam.training.config import TrainingConfig

        image, labels = self.image_box.currentText(), self.labels_box.currentText()
        if not image or not labels:
            show_error("napari-sam: choose an image layer and the labels layer with your objects.")
            return
        try:
            images = annotated_images(
                self.viewer.layers[image].data, self.viewer.layers[labels].data, name=image
            )
        except NapariSamError as error:
            show_error(f"napari-sam: {error}")
            return
        output = Path(self.output_edit.text()).expanduser() / time.strftime("%Y%m%d-%H%M%S")
        if self.parts_box.currentText() == HEAD:
            self._start_head(images, image, output)
            return
        defaults = TrainingConfig()
        steps, rounds = self.steps_box.value(), self.iterations_box.value()
        config = replace(
            defaults,
            trainable=self.parts_box.currentText(),
            steps=steps,
            objects_per_step=self.objects_box.value(),
            freeze_iou_head=self.freeze_iou_box.isChecked(),
            max_minutes=self.minutes_box.value() or None,
            # past the first, one round without a new click (as the tooltip says)
            prompts=replace(
                defaults.prompts, iterations=rounds, quiet_iterations=min(1, rounds - 1)
            ),
            # a short run still warms up, validates and checkpoints within its steps
            warmup_steps=min(defaults.warmup_steps, steps),
            validate_every=min(defaults.validate_every, max(1, steps // 5)),
            checkpoint_every=min(defaults.checkpoint_every, max(1, steps // 5)),
        )
        self._start_worker(images, config, output)

    def _start_worker(self, images, config, output: Path) -> None:
        from napari_sam.training.annotations import fine_tune_annotations

        model = self._model()
        self._run_on_torch(
            fine_tune_annotations,
            images,
            model,
            output,
            config,
            progress=self._remember,
            should_stop=lambda: self._stop,
            keep=self.keep_box.isChecked(),
        )
        self.curves.reset()
        self.progress_bar.setRange(0, config.steps)
        self.status.setText(
            f"loading model {Path(model).name} and preparing {len(images)} image(s) ... "
            f"(results go to {output})"
        )

    def _model(self) -> str:
        return self.model_edit.text().strip() or self.model_name

    def _run_on_torch(self, function, *args, **kwargs) -> None:
        """Run ``function`` on the torch thread; the napari worker waits for it."""
        if self._torch is None:
            from napari_sam.engine.model.threads import TorchThread

            self._torch = TorchThread()
        self._stop, self._latest = False, None

        def job():
            return self._torch.run(function, *args, **kwargs)

        self.worker = create_worker(
            job, _connect={"returned": self._finished, "errored": self._failed}, _start_thread=False
        )
        self.progress_bar.setValue(0)
        self.run_button.setEnabled(False)
        self.use_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.timer.start(POLL_MS)
        self.worker.start()

    def _remember(self, update) -> None:
        self._latest = update  # read by the GUI timer; one attribute write is atomic

    def _show_progress(self) -> None:
        update = self._latest
        if isinstance(update, tuple):  # learning a head: (stage, done, total)
            stage, done, total = update
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)
            what = "training step" if stage == "training" else f"{stage} image"
            self.status.setText(f"Learning the instance head: {what} {done} of {total}...")
        elif update is not None:
            self.progress_bar.setValue(update.step)
            if update.validation is not None and not any(
                p[0] == update.step for p in self.curves.points
            ):
                self.curves.add(update.step, update.validation, update.reference_validation)
            best = (
                ""
                if update.best_validation is None
                else f", validation IoU {update.best_validation:.3f}"
            )
            self.status.setText(
                f"step {update.step}/{update.total_steps}: loss {update.loss:.3f}{best}"
            )

    def cancel(self) -> None:
        """Stop after the current step (a checkpoint is saved)."""
        self._stop = True

    def _done(self) -> None:
        self.timer.stop()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _finished(self, result) -> None:
        from napari_sam.training.retention import outcome_text

        self._done()
        self._show_progress()
        if isinstance(result, Path):  # a head
            self._head_finished(result)
            return
        self.result = result
        note = ""
        if result.calibration is not None and result.calibration.scale != 1.0:
            note += (
                f"; logits x{result.calibration.scale:.2f} to keep "
                "segment-everything's stability filter"
            )
        self.status.setText(
            f"Saved {result.weights} ({result.steps} steps, {result.stopped}){note}.\n"
            + outcome_text(result)
        )
        self._draw_result(result)
        self.use_button.setEnabled(True)
        show_info(f"napari-sam: fine-tuned model saved to {result.weights}")

    def use_result(self) -> int:
        """Switch the open annotators to the last run's weights; returns how many."""
        if self.result is None:
            return 0
        switched = self.switch_annotators(self.result.weights)
        self.status.setText(
            self.status.text() + f"\n{switched} annotator(s) now use {self.result.weights.name}."
        )
        return switched

    def _draw_result(self, result) -> None:
        """The whole validation history, the released model at step 0, the saved weights."""
        from napari_sam.training.retention import saved_scores

        base = result.base_scores or {}
        self.curves.points = [(0, base.get("validation"), base.get("reference"))] if base else []
        for record in result.history:
            if record.get("validation") is not None:
                self.curves.points.append(
                    (record["step"], record["validation"], record.get("reference_validation"))
                )
        if not any(p[1] is not None or p[2] is not None for p in self.curves.points):
            return
        saved = saved_scores(result)
        self.curves.draw(None if saved is None else (result.best_step, *saved))

    def _failed(self, error: Exception) -> None:
        self._done()
        if isinstance(error, OperationCancelled):
            self.status.setText(f"Cancelled. {error}")
        elif isinstance(error, NapariSamError):
            show_error(f"napari-sam: {error}")
            self.status.setText(str(error))
        else:
            raise error

    def closeEvent(self, event) -> None:  # Qt names it
        """Stop a running training (it saves a checkpoint) and disconnect from the viewer."""
        self._stop = True
        self.timer.stop()
        if self._torch is not None:  # ends after the running call
            self._torch.shutdown(wait=False)
            self._torch = None
        self.viewer.layers.events.inserted.disconnect(self.reset_choices)
        self.viewer.layers.events.removed.disconnect(self.reset_choices)
        super().closeEvent(event)

    def switch_annotators(self, weights: Path) -> int:
        """Point every docked SAM annotator at ``weights``; returns how many were switched."""
        from napari_sam._widgets.annotator import AnnotatorWidget

        annotators = [
            w for w in self.viewer.window.dock_widgets.values() if isinstance(w, AnnotatorWidget)
        ]
        for annotator in annotators:
            annotator.use_model(str(weights))
        return len(annotators)
