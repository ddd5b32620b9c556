"""The annotator's "Propagate": the objects of the visible plane carried through the stack.

One press takes, in this order: a correction (the refined mask of the selected label, when
that label was propagated earlier in this session: only the slices beyond the corrected one
change, :meth:`~napari_sam.engine.annotation.session.AnnotationSession.correct`), else the
previewed objects (new ids, as a commit gives them), else every committed object on the
visible plane (ids kept). The engine call runs on the torch thread while a timer shows its
progress, then plans the pixel writes (:mod:`~napari_sam._widgets._propagation_plan`); the
GUI thread writes them into the objects layer as one undo step, never over other objects
unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from napari_sam._widgets._propagation_plan import (
    PlannedWrite,
    describe,
    plan_correction,
    plan_objects,
)
from napari_sam.engine.annotation.previews import Preview
from napari_sam.engine.annotation.stack_objects import Propagation

PROGRESS_MS = 250  # how often the status line shows the propagation's progress
LISTED = 5  # objects named in the status line after a propagation; the rest are counted
NOTHING = (
    "napari-sam: nothing to propagate on this plane: draw a box or click on an object (or "
    "commit objects here), then press Propagate [Shift-P]."
)


@dataclass(frozen=True, eq=False)
class PropagationRequest:
    """What one press of Propagate carries, decided on the GUI thread."""

    key: tuple[int, ...]  # the plane the objects are given on
    axis: int  # the stack axis followed
    objects: Any  # a Preview or (N, rows, cols) bool masks; a correction: (mask, logits)
    ids: tuple[int, ...] | None  # one per object; None: new ids, chosen with the writes
    earlier: tuple[Propagation, int] | None = None  # a correction: propagation and object


class PropagationActions:
    """The Propagate action of :class:`AnnotatorWidget` (a mixin).

    ``propagation_settings`` (a
    :class:`~napari_sam.engine.annotation.propagation.PropagationSettings`, or None for
    the engine's defaults) may be set from the console.
    """

    propagation_settings = None

    def _init_propagation(self) -> None:
        self._propagated: dict[int, tuple[Propagation, int]] = {}  # id -> last propagation
        self._progress = (0, 0)  # (done, total) slice-objects, written by the torch thread
        self._progress_timer = QTimer(self, interval=PROGRESS_MS)
        self._progress_timer.timeout.connect(self._show_propagating)
        self.axis_box.currentIndexChanged.connect(self._reset_limits)

    def _reset_propagation(self) -> None:
        """A new session: offer its stack axes and forget earlier propagations."""
        self._propagated.clear()
        self.axis_box.clear()
        ndim = self.session.layout.stack_ndim
        labels = self.viewer.dims.axis_labels[self.viewer.dims.ndim - (ndim + 2) :]
        for index, (label, size) in enumerate(zip(labels, self.session.layout.stack_shape)):
            # napari names unnamed axes by number ("0", or "-3" counted from the end)
            name = f"axis {index}" if label.lstrip("-").isdigit() else label
            self.axis_box.addItem(f"{name} ({size} slices)")
        # z of (t, z, row, col): objects are usually followed through depth first
        self.axis_box.setCurrentIndex(ndim - 1)
        self._reset_limits()

    def _reset_limits(self, *_: object) -> None:
        """The slice limits span the whole axis chosen under "along"."""
        axis = self.axis_box.currentIndex()
        size = (
            self.session.layout.stack_shape[axis] if self.session is not None and axis >= 0 else 1
        )
        for box, value in ((self.first_box, 0), (self.last_box, size - 1)):
            box.setRange(0, max(size - 1, 0))
            box.setValue(value)

    def propagation_limits(self, count: int) -> list[tuple[int, int]]:
        """The slice limits of the form, once per object."""
        return [(self.first_box.value(), self.last_box.value())] * count

    def _show_propagation_busy(self, kind: str | None) -> None:
        """Propagate is offered on stacks while no model loads and no propagation runs."""
        stack = self.session is not None and self.session.layout.stack_ndim > 0
        for control in (self.propagate_button, self.axis_box, self.first_box, self.last_box):
            control.setEnabled(stack and kind not in ("load", "propagate"))
        if kind == "propagate":
            self._progress_timer.start()
        else:
            self._progress_timer.stop()

    def propagate(self) -> None:
        """Carry the objects of the visible plane through the stack, then write them.

        A correction of an object propagated earlier, else the previewed objects, else
        the committed objects of the plane (see the module docstring). Cancel stops it
        and nothing is written.
        """
        if self.jobs.kind == "propagate":
            return  # one at a time: starting another would cancel this one
        if self.session is None:
            show_info("napari-sam: press Start first.")
            return
        if self.session.layout.stack_ndim == 0:
            show_info("napari-sam: propagation needs a stack (z or t); this image is 2D.")
            return
        request = self._propagation_request(self.plane_key())
        if request is None:
            show_info(NOTHING)
            return
        self._start_propagation(request)

    def _propagation_request(self, key: tuple[int, ...]) -> PropagationRequest | None:
        """What to propagate from plane ``key``: a correction, the preview, or committed objects."""
        axis = max(self.axis_box.currentIndex(), 0)
        preview = self.preview_result
        if preview is not None and preview.objects and preview.key == key:
            if self._refined_mask(key) is None:
                return PropagationRequest(key, axis, preview, None)
            label = int(self.objects_layer.selected_label)
            earlier = self._propagated.get(label)
            if earlier is not None and _on_line(earlier[0], key):
                item = preview.objects[0]
                anchor = (item.mask, item.prediction.logits[item.chosen])
                return PropagationRequest(key, earlier[0].axis, anchor, (label,), earlier)
            return PropagationRequest(
                key, axis, replace(preview, objects=preview.objects[:1]), (label,)
            )
        plane = np.asarray(self.objects_layer.data[key])
        ids = np.unique(plane)
        ids = ids[ids != 0]
        if not len(ids):
            return None
        masks = plane[None] == ids[:, None, None]
        return PropagationRequest(key, axis, masks, tuple(int(i) for i in ids))

    def _start_propagation(self, request: PropagationRequest) -> None:
        """Propagate (or correct) and plan the writes on the torch thread."""
        session, settings = self.session, self.propagation_settings
        labels, overwrite = self.objects_layer.data, self.overwrite_box.isChecked()
        first_id = self.id_box.value()
        self._progress = (0, 0)
        if request.earlier is not None:
            earlier, item = request.earlier
            mask, logits = request.objects
            index, label = request.key[earlier.axis], request.ids[0]

            def job(stop):
                fixed = session.correct(
                    earlier, item, index, mask, logits, settings, stop, self._count_progress
                )
                return plan_correction(fixed, item, earlier, label, labels, overwrite)

            what = f"correcting object {label} beyond slice {index} ..."
        else:
            count = (
                len(request.objects.objects)
                if isinstance(request.objects, Preview)
                else len(request.objects)
            )
            limits = self.propagation_limits(count)

            def job(stop):
                propagation = session.propagate(
                    request.key,
                    request.objects,
                    request.axis,
                    settings,
                    limits,
                    should_stop=stop,
                    progress=self._count_progress,
                )
                return plan_objects(propagation, labels, request.ids, first_id, overwrite)

            what = "propagating ..."
        self.jobs.start(
            job,
            lambda planned: self._propagated_done(request, planned),
            kind="propagate",
            progress={"desc": "SAM: propagating"},
        )
        self.status.setText(what)

    def _count_progress(self, done: int, total: int) -> None:
        self._progress = (done, total)  # torch thread; the timer shows it

    def _show_propagating(self) -> None:
        done, total = self._progress
        if self.jobs.kind == "propagate" and total:
            self.status.setText(f"propagating: {done} / {total} slice-objects")

    def _propagated_done(self, request: PropagationRequest, planned: PlannedWrite) -> None:
        """Write the planned result as one undo step, remember it, and say what it did."""
        layer = self.objects_layer
        if not planned.holds(layer.data):  # edited while it ran: plan again, here
            planned = planned.again(layer.data)
        self._write(planned)
        written = planned.objects.objects
        if request.earlier is not None:
            self._propagated[planned.ids[0]] = (planned.propagation, request.earlier[1])
            text = f"Corrected {describe(planned.ids[0], written[0])}"
        else:
            for item, label in enumerate(planned.ids):
                self._propagated[label] = (planned.propagation, item)
            if request.ids is None:
                self.id_box.setValue(max(planned.ids[-1], self.id_box.value() - 1) + 1)
            parts = [describe(label, o) for label, o in zip(planned.ids, written)]
            more = f" and {len(parts) - LISTED} more" if len(parts) > LISTED else ""
            text = "Propagated " + ", ".join(parts[:LISTED]) + more
        self.clear_prompts(request.key)
        blocked = planned.blocked_pixels
        note = f"; {blocked} pixels of other objects kept" if blocked else ""
        self.status.setText(f"{text}{note}. Undo: select the layer, Ctrl-Z.")
        self._ensure_embedding(then_preview=self.plane_key() != request.key)

    def _write(self, planned: PlannedWrite) -> None:
        """Write the planned pixels into the objects layer as one undo step."""
        layer = self.objects_layer
        with layer.block_history():
            for change in planned.changes:
                index = tuple(np.full(len(change.rows), k) for k in change.key)
                layer.data_setitem(index + (change.rows, change.cols), change.values, refresh=False)
        layer.refresh()


def _on_line(propagation: Propagation, key: tuple[int, ...]) -> bool:
    """Whether plane ``key`` lies on the line of slices ``propagation`` followed."""
    return all(
        a == b for i, (a, b) in enumerate(zip(propagation.key, key)) if i != propagation.axis
    )
