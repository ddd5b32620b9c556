"""The annotator's "Propagate": the objects of the visible plane carried through the stack.

One press takes, in this order: a correction (the refined mask of the selected label, when
that label was propagated earlier in this session: only the slices beyond the corrected one
change, :meth:`~napari_sam.engine.annotation.session.AnnotationSession.correct`), else the
previewed objects (new ids, as a commit gives them), else every committed object on the
visible plane (ids kept). The engine call runs on the torch thread while a timer shows its
progress; the result is written into the objects layer on the GUI thread as one undo step,
never over other objects unless asked
(:meth:`~napari_sam.engine.annotation.stack_objects.Propagation.changes`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from napari_sam.engine.annotation.propagation import Footprint, PropagatedObject
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
    objects: Any  # for session.propagate: a Preview or (N, rows, cols) bool masks
    ids: tuple[int, ...] | None  # one per object; None: new ids, chosen when writing
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

    def _reset_propagation(self) -> None:
        """A new session: offer its stack axes and forget earlier propagations."""
        self._propagated.clear()
        self.axis_box.clear()
        ndim = self.session.layout.stack_ndim
        labels = self.viewer.dims.axis_labels[self.viewer.dims.ndim - (ndim + 2) :]
        for label, size in zip(labels, self.session.layout.stack_shape):
            self.axis_box.addItem(f"{label} ({size} slices)")
        # z of (t, z, row, col): objects are usually followed through depth first
        self.axis_box.setCurrentIndex(ndim - 1)

    def _show_propagation_busy(self, kind: str | None) -> None:
        """Propagate is offered on stacks while no model loads and no propagation runs."""
        stack = self.session is not None and self.session.layout.stack_ndim > 0
        for control in (self.propagate_button, self.axis_box):
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
        if self.session is None or self.session.layout.stack_ndim == 0:
            show_info("napari-sam: propagation needs a stack (z or t); this image is 2D.")
            return
        if getattr(self.session, "tile", None):
            show_info(
                "napari-sam: propagation does not work on tiled planes yet: set tiles to 0 "
                "(never tile) and press Start again."
            )
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
        session, settings = self.session, self.propagation_settings
        self._progress = (0, 0)
        if request.earlier is not None:
            earlier, item = request.earlier
            mask, logits = request.objects
            index = request.key[earlier.axis]

            def job(stop):
                return session.correct(earlier, item, index, mask, logits, settings)

            what = f"correcting object {request.ids[0]} beyond slice {index} ..."
        else:

            def job(stop):
                return session.propagate(
                    request.key,
                    request.objects,
                    request.axis,
                    settings,
                    should_stop=stop,
                    progress=self._count_progress,
                )

            what = "propagating ..."
        self.jobs.start(
            job,
            lambda propagation: self._propagated_done(request, propagation),
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

    def _propagated_done(self, request: PropagationRequest, propagation: Propagation) -> None:
        """Write the result as one undo step, remember it for corrections, and say what it did."""
        if request.earlier is not None:
            earlier, item = request.earlier
            fixed = propagation.objects[item]
            single = replace(propagation, objects=(fixed,))
            changed = changed_slices(earlier.objects[item], fixed)
            blocked = self._write(single, request.ids, clear_outside=True, only=changed)
            self._propagated[request.ids[0]] = (propagation, item)
            text = f"Corrected {describe(request.ids[0], fixed)}"
        else:
            ids = request.ids or self._new_ids(propagation)
            blocked = self._write(propagation, ids)
            for item, label in enumerate(ids):
                self._propagated[label] = (propagation, item)
            if request.ids is None:
                self.id_box.setValue(max(ids[-1], self.id_box.value() - 1) + 1)
            parts = [describe(label, o) for label, o in zip(ids, propagation.objects)]
            more = len(parts) - LISTED
            text = (
                "Propagated "
                + ", ".join(parts[:LISTED])
                + (f" and {more} more" if more > 0 else "")
            )
        self.clear_prompts(request.key)
        note = f"; {blocked} pixels of other objects kept" if blocked else ""
        self.status.setText(f"{text}{note}. Undo: select the layer, Ctrl-Z.")
        self._ensure_embedding(then_preview=self.plane_key() != request.key)

    def _new_ids(self, propagation: Propagation) -> tuple[int, ...]:
        """Ids for new objects: from the id box on, above every id on the slices written.

        A new object must not reuse an id found on another slice of the line: writing it
        there would clear that object's pixels.
        """
        layer = self.objects_layer.data
        line = (np.max(layer[propagation.plane_key(i)]) for i in range(propagation.length))
        first = max(self.id_box.value(), int(max(line)) + 1)
        return tuple(range(first, first + len(propagation.objects)))

    def _write(
        self,
        propagation: Propagation,
        ids,
        clear_outside: bool = False,
        only: set[int] | None = None,
    ) -> int:
        """Write the objects into the objects layer as one undo step; blocked pixels.

        ``only``: the slice indices to write (default every slice the changes touch).
        """
        layer = self.objects_layer
        overwrite = self.overwrite_box.isChecked()
        blocked = 0
        with layer.block_history():
            for change in propagation.changes(layer.data, ids, overwrite, clear_outside):
                if only is not None and change.key[propagation.axis] not in only:
                    continue
                index = tuple(np.full(len(change.rows), k) for k in change.key)
                layer.data_setitem(index + (change.rows, change.cols), change.values, refresh=False)
                blocked += change.blocked_pixels
        layer.refresh()
        return blocked


def _on_line(propagation: Propagation, key: tuple[int, ...]) -> bool:
    """Whether plane ``key`` lies on the line of slices ``propagation`` followed."""
    return all(
        a == b for i, (a, b) in enumerate(zip(propagation.key, key)) if i != propagation.axis
    )


def changed_slices(before: PropagatedObject, after: PropagatedObject) -> set[int]:
    """Slice indices where an object's mask differs between two propagations."""
    return {
        index
        for index in before.slices.keys() | after.slices.keys()
        if not _same(before.slices.get(index), after.slices.get(index))
    }


def _same(a: Footprint | None, b: Footprint | None) -> bool:
    if a is b:
        return True
    if a is None or b is None:
        return False
    return a.row == b.row and a.col == b.col and np.array_equal(a.crop, b.crop)


def describe(label: int, item: PropagatedObject) -> str:
    """E.g. "3 (slices 12-41, ended: vanished / grew)"."""
    first, last = item.extent
    return f"{label} (slices {first}-{last}, ended: {item.ends[0]} / {item.ends[1]})"
