"""The fine-tuning widget's instance-head choice: learn a head from the committed objects.

With **train: instance head** the fine-tuning widget learns an instance head instead of
fine-tuning SAM (:func:`~napari_sam.training.head_training.train_head_file`, about 0.3 s a
step), saves it as ``head.pt`` and ``head.json`` and loads it into every open
segment-everything widget, whose head methods (APG, AIS) then segment with it.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info


class HeadLearning:
    """Mixed into :class:`~napari_sam._widgets.finetune.FineTuneWidget` (uses its fields)."""

    def _start_head(self, images, image: str, output: Path) -> None:
        from napari_sam.training.head_settings import HeadTrainingSettings
        from napari_sam.training.head_training import train_head_file

        model = self._model()
        self._run_on_torch(
            train_head_file,
            images,
            model,
            output,
            HeadTrainingSettings(steps=self.steps_box.value()),
            trained_on=f"{image} (committed objects)",
            progress=self._remember_head,
            should_stop=lambda: self._stop,
        )
        self.progress_bar.setRange(0, 0)  # busy until the first report
        self.status.setText(
            f"loading model {Path(model).name} to learn an instance head from the objects of "
            f"{len(images)} plane(s) of {image} ... (saved under {output})"
        )

    def _remember_head(self, stage: str, done: int, total: int) -> None:
        self._latest = (stage, done, total)  # read by the GUI timer

    def _head_finished(self, path: Path) -> None:
        self.head_path = path
        switched = self.switch_everything(path)
        note = f"; {switched} segment-everything widget(s) now use it" if switched else ""
        self.status.setText(
            f"Saved the instance head {path} (card {path.stem}.json){note}. Choose head (APG) "
            "or head (AIS) in segment everything to segment with it."
        )
        show_info(f"napari-sam: instance head saved to {path}")

    def switch_everything(self, head: Path) -> int:
        """Load ``head`` into every docked segment-everything widget whose model it fits;
        returns how many took it (one that refuses says why in its own status)."""
        from napari_sam._widgets.everything import EverythingWidget

        widgets = [
            w for w in self.viewer.window.dock_widgets.values() if isinstance(w, EverythingWidget)
        ]
        return sum(bool(widget.load_head(head)) for widget in widgets)
