"""The annotator's commits: previewed objects into the objects layer, one undo step each.

A commit never paints over other objects unless asked
(:func:`~napari_sam.engine.annotation.objects.plan_commit`), records its prompts for replay
(:mod:`~napari_sam.engine.annotation.records`), and asks first when an object covers more
than half of the plane: :class:`CommitActions` holds it back and says so, and a second
commit of the same preview writes it. No dialog, so keys and scripts never block.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog

from napari_sam.engine.annotation.objects import plan_commit
from napari_sam.errors import NapariSamError

# A commit whose largest object covers more than this share of the plane asks first: a
# cell or nucleus is a small part of a field of view, while SAM's mask of the background
# (a click that missed, or points on two different things in "one object" mode) covers
# most of it. Large real objects (a tissue section, an organoid) commit on a second press.
LARGE_OBJECT = 0.5
COMMIT, COMMIT_ANYWAY = "Commit [Shift-C]", "Commit anyway [Shift-C]"


class CommitActions:
    """The commit, record and replay actions of :class:`AnnotatorWidget` (a mixin)."""

    _asked = None  # the large preview whose commit asked for a second press

    def commit(self, force: bool = False) -> None:
        """Write the previewed objects into the objects layer (one undo step).

        An object covering more than half of the plane (:data:`LARGE_OBJECT`) is written
        only on a second commit of the same preview: the first says what would happen.

        Parameters
        ----------
        force : bool
            Write even a large object at once (scripts and the console).
        """
        if self.jobs.kind == "propagate":  # the preview may be what is being propagated
            show_info("napari-sam: a propagation is running; wait for it (or cancel it).")
            return
        if not self.preview_result or not self.preview_result.objects:
            show_info("napari-sam: nothing to commit; add a positive point or a box first.")
            return
        key = self.preview_result.key
        layer = self.objects_layer
        plane = np.asarray(layer.data[key])
        refined = self._refined_mask(key)
        ids = None if refined is None else [int(layer.selected_label)]
        masks = self.preview_result.masks()[:1] if ids else self.preview_result.masks()
        if not force and self._asks_first(masks):
            return
        plan = plan_commit(
            plane, masks, self.id_box.value(), self.overwrite_box.isChecked(), ids=ids
        )
        with layer.block_history():
            if refined is not None:  # pixels the corrected object no longer covers
                rows, cols = np.nonzero(refined & ~self.preview_result.masks()[0])
                layer.data_setitem(tuple(np.full(len(rows), k) for k in key) + (rows, cols), 0)
            for label in set(plan.ids) - {0}:
                chosen = plan.values == label
                index = tuple(np.full(int(chosen.sum()), k) for k in key) + (
                    plan.rows[chosen],
                    plan.cols[chosen],
                )
                layer.data_setitem(index, label)
        self._remember(plan)
        if ids is None:
            self.id_box.setValue(max(plan.ids + (self.id_box.value() - 1,)) + 1)
        note = (
            f"; {plan.blocked_pixels} pixels of other objects kept" if plan.blocked_pixels else ""
        )
        self.clear_prompts()
        self.status.setText(
            f"Committed object(s) {', '.join(map(str, plan.ids))}{note}. "
            "Undo: select the layer, Ctrl-Z."
        )

    def _asks_first(self, masks: np.ndarray) -> bool:
        """Whether to hold back this commit of ``masks`` (N, H, W) and ask for a second one."""
        share = float(masks.reshape(len(masks), -1).mean(axis=1).max())
        if share <= LARGE_OBJECT or self._asked is self.preview_result:
            return False
        self._asked = self.preview_result
        self.commit_button.setText(COMMIT_ANYWAY)
        message = (
            f"This object covers {share:.0%} of the plane: probably the background. Nothing "
            "was written: commit again [Shift-C] to write it, or add a background point "
            "[Shift-N]."
        )
        self.status.setText(message)
        show_warning(f"napari-sam: {message}")
        return True

    def _remember(self, plan) -> None:
        from napari_sam.engine.annotation.records import AnnotationRecord, object_record

        if self.record is None or self.record.model_id != self.session.model_id:
            self.record = AnnotationRecord(
                self.session.model_id, self.session.normalization, self.session.layout.shape
            )
        for item, label in zip(self.preview_result.objects, plan.ids):
            if label:
                self.record = self.record.with_object(
                    object_record(item, self.preview_result.key, label)
                )
        self.objects_layer.metadata["napari_sam"] = self.record.to_json()

    def save_record(self, path: str | None = None) -> None:
        """Write the prompts and settings of the committed objects as JSON."""
        if self.record is None:
            show_info("napari-sam: nothing committed yet.")
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save the annotation record", "sam_record.json", "JSON (*.json)"
            )
        if path:
            self.record.save(path)
            self.status.setText(f"Record saved to {path}.")

    def load_record(self, path: str | None = None) -> None:
        """Replay a saved record on the current image into a new labels layer."""
        from napari_sam.engine.annotation.records import AnnotationRecord, replay

        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Replay an annotation record", "", "JSON (*.json)"
            )
        if not path or self.session is None:
            return
        try:
            record = AnnotationRecord.load(path)
            labels = replay(self.session, record)
        except NapariSamError as error:
            show_error(f"napari-sam: {error}")
            return
        geometry = dict(scale=self.preview_layer.scale, translate=self.preview_layer.translate)
        self.viewer.add_labels(labels, name="SAM objects (replayed)", **geometry)

    def _forget_question(self) -> None:
        """A new preview: a large object asks again."""
        if self._asked is not None and self._asked is not self.preview_result:
            self._asked = None
            self.commit_button.setText(COMMIT)
