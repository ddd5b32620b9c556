"""The "SAM annotator" dock widget: points and boxes in, live masks out, commit to labels.

The widget only moves data between napari layers and
:class:`~napari_sam.engine.annotation.session.AnnotationSession`: it encodes the visible plane
in a worker thread (with a progress bar and a cancel button), previews masks on the GUI
thread whenever a prompt changes (tens of milliseconds), and commits through the labels
layer's own undo history. Key bindings live on the viewer and are removed on close.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from napari_sam._widgets._annotator_form import NEW_LAYER, AnnotatorForm
from napari_sam.engine.annotation.objects import boxes_on_plane, on_plane, plan_commit
from napari_sam.errors import NapariSamError, OperationCancelled


class AnnotatorWidget(AnnotatorForm):
    """Dock widget for interactive SAM segmentation of an image layer."""

    def __init__(self, napari_viewer, model: str = "vit_t") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model
        self.session = None
        self.preview_result = None
        self.points_layer = self.boxes_layer = self.preview_layer = self.objects_layer = None
        self.image_layer = None
        self.worker = None
        self._torch = None  # TorchThread, created with the first encoding
        self.positive = True
        self.record = None  # AnnotationRecord of the committed objects
        self._build_ui()
        self._bind_keys()
        self.reset_choices()
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.viewer.dims.events.current_step.connect(self._on_step)

    # ---------------------------------------------------------------- session
    def start(self) -> None:
        """Create the session (tiled for large planes) and prompt layers for the chosen image."""
        from napari_sam.engine.annotation.tiled_session import open_session

        name = self.image_box.currentText()
        if not name:
            show_error("napari-sam: add an image layer first (File > Open, or a sample).")
            return
        layer = self.viewer.layers[name]
        channel = None if self.channel_box.value() < 0 else self.channel_box.value()
        channel_axis = bool(layer.rgb) or channel is not None
        cache = self.cache_edit.text().strip()
        try:
            if cache:
                from napari_sam.batch.embedding import open_cached_session

                self.session = open_cached_session(
                    layer.data,
                    cache,
                    self._shared_model(),
                    channel_axis=channel_axis,
                    channel=channel,
                    **self.tiling(),
                )
            else:
                self.session = open_session(
                    self._shared_model(),
                    layer.data,
                    channel_axis=channel_axis,
                    channel=channel,
                    **self.tiling(),
                )
        except NapariSamError as error:
            show_error(f"napari-sam: {error}")
            return
        self.image_layer = layer
        self._make_layers(layer)
        tiles = (
            f", tiles of {self.session.tile} + halo {self.session.halo}"
            if getattr(self.session, "tile", None)
            else ""
        )
        self.status.setText(f"{self.session.model_id} on {name!r}{tiles}: add points or boxes.")
        self._ensure_embedding()

    def _shared_model(self):
        from napari_sam.engine.prediction.predictor import Predictor

        if self.session is not None and self.session.predictor.model.spec.name == self.model_name:
            return self.session.predictor
        return Predictor(self.model_name)

    def _make_layers(self, image: Image) -> None:
        spatial = self.session.layout.shape[
            : len(self.session.layout.shape) - int(self.session.layout.channel_axis)
        ]
        geometry = dict(
            scale=image.scale[: len(spatial)], translate=image.translate[: len(spatial)]
        )
        for layer in (self.points_layer, self.boxes_layer, self.preview_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.preview_layer = self.viewer.add_labels(
            np.zeros(spatial, np.uint16), name="SAM preview", opacity=0.5, **geometry
        )
        target = self.labels_box.currentText()
        if target and target != NEW_LAYER:
            self.objects_layer = self.viewer.layers[target]
        else:
            self.objects_layer = self.viewer.add_labels(
                np.zeros(spatial, np.int32), name="SAM objects", **geometry
            )
        self.boxes_layer = self.viewer.add_shapes(
            ndim=len(spatial),
            name="SAM boxes",
            edge_color="yellow",
            face_color="transparent",
            edge_width=2,
            **geometry,
        )
        self.points_layer = self.viewer.add_points(
            np.zeros((0, len(spatial))),
            ndim=len(spatial),
            name="SAM points",
            size=8,
            features={"positive": np.zeros(0, bool)},
            face_color="positive",
            face_color_cycle={True: "lime", False: "red"},
            **geometry,
        )
        self.points_layer.feature_defaults["positive"] = self.positive
        self.points_layer.mode = "add"
        self.points_layer.events.data.connect(self._on_prompts)
        self.boxes_layer.events.data.connect(self._on_prompts)
        self.id_box.setValue(int(np.max(self.objects_layer.data, initial=0)) + 1)
        self.reset_choices()

    def plane_key(self) -> tuple[int, ...]:
        """The plane shown by the viewer, as leading indices of the image."""
        if self.session is None:
            return ()
        ndim = self.session.layout.stack_ndim
        step = self.viewer.dims.current_step
        offset = self.viewer.dims.ndim - (ndim + 2)
        return tuple(int(s) for s in step[offset : offset + ndim])

    # ---------------------------------------------------------------- encoding
    def _ensure_embedding(self, then_preview: bool = True) -> None:
        key = self.plane_key()
        if self.session is None or self.session.has_embedding(key):
            if then_preview:
                self.update_preview()
            self._prefetch(key)
            return
        if self.worker is not None:
            self.worker.quit()
        worker = self._embedding_worker(key, {"desc": "SAM: encoding the image plane"})
        worker.returned.connect(lambda _: self._encoded(key))
        worker.finished.connect(lambda: self.cancel_button.setEnabled(False))
        self.worker = worker
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Encoding plane {key or ''} in the background...")
        worker.start()

    def _embedding_worker(self, key, progress):
        """A worker that encodes one plane and polls its own abort flag."""
        session, holder = self.session, []
        if self._torch is None:
            from napari_sam.engine.model.threads import TorchThread

            self._torch = TorchThread()  # allocates from the main arena: see docs/threading.md

        def job():  # the napari worker only waits; the encoder runs on the torch thread
            return self._torch.run(
                session.embed, key, should_stop=lambda: holder[0].abort_requested
            )

        # Our handler replaces superqt's default, which would re-raise a cancellation.
        worker = create_worker(
            job, _progress=progress, _connect={"errored": self._worker_failed}, _start_thread=False
        )
        holder.append(worker)
        return worker

    def _encoded(self, key) -> None:
        self.worker = None
        self.status.setText(f"Plane {key or ''} ready: {self.session.model_id}.")
        if key == self.plane_key():
            self.update_preview()
        self._prefetch(key)

    def _prefetch(self, key) -> None:
        """Encode the neighbouring planes quietly, so stepping through z is instant."""
        if self.session is None or self.worker is not None:
            return
        missing = [k for k in self.session.neighbours(key) if not self.session.has_embedding(k)]
        if missing:
            worker = self._embedding_worker(missing[0], False)
            worker.returned.connect(lambda _: self._prefetched(key))
            self.worker = worker
            worker.start()

    def _prefetched(self, key) -> None:
        self.worker = None
        if self.plane_key() != key:
            self._ensure_embedding()
        else:
            self._prefetch(key)

    def _worker_failed(self, error: Exception) -> None:
        self.worker = None
        self.cancel_button.setEnabled(False)
        if isinstance(error, OperationCancelled):
            self.status.setText("Encoding cancelled.")
        elif isinstance(error, NapariSamError):
            show_error(f"napari-sam: {error}")
        else:
            raise error

    def cancel(self) -> None:
        """Stop a running encoding."""
        if self.worker is not None:
            self.worker.quit()

    def _on_step(self, event=None) -> None:
        if self.session is not None:
            self._ensure_embedding()

    # ---------------------------------------------------------------- prompts and preview
    def _on_prompts(self, event=None) -> None:
        action = str(getattr(event, "action", ""))
        if action.endswith(("ADDING", "REMOVING", "CHANGING")) or action in (
            "adding",
            "removing",
            "changing",
        ):
            return  # napari announces edits before making them; act on the result
        self.update_preview()

    def current_prompts(self):
        """(points (K, 2), labels (K,), boxes (B, 4)) on the visible plane, (row, col)."""
        key = self.plane_key()
        coords = np.asarray(self.points_layer.data)
        here = on_plane(coords, key)
        points = coords[here][:, -2:]
        labels = np.asarray(self.points_layer.features["positive"], bool)[here].astype(int)
        rectangles = [
            d
            for d, kind in zip(self.boxes_layer.data, self.boxes_layer.shape_type)
            if kind == "rectangle"
        ]
        return points, labels, boxes_on_plane(rectangles, key)

    def update_preview(self) -> None:
        """Decode the prompts of the visible plane and show the masks (GUI thread, ~40 ms)."""
        if self.session is None or self.points_layer is None:
            return
        key = self.plane_key()
        if not self.session.has_embedding(key):
            self._ensure_embedding()
            return
        points, labels, boxes = self.current_prompts()
        mode = "per_point" if self.mode_box.currentIndex() == 1 else "single"
        refined = self._refined_mask(key)
        try:
            self.preview_result = self.session.preview(
                key, points, labels, boxes, mode=mode, mask_input=refined
            )
        except NapariSamError as error:
            show_error(f"napari-sam: {error}")
            return
        self._show_preview()

    def _refined_mask(self, key):
        """The selected label of the objects layer on this plane, when refining."""
        if not self.refine_box.isChecked():
            return None
        mask = np.asarray(self.objects_layer.data[key]) == self.objects_layer.selected_label
        return mask if mask.any() else None

    def _show_preview(self) -> None:
        key = self.plane_key()
        plane = (
            self.preview_result.labels(self.session.layout.plane_shape)
            if self.preview_result
            else 0
        )
        data = self.preview_layer.data
        data[key] = plane
        self.preview_layer.refresh()
        objects = self.preview_result.objects if self.preview_result else ()
        if len(objects) == 1 and len(objects[0].prediction.scores) > 1:
            scores = ", ".join(f"{s:.2f}" for s in objects[0].prediction.scores)
            self.status.setText(f"candidate {objects[0].chosen + 1} of 3 (predicted IoU {scores})")
        elif objects:
            self.status.setText(
                f"{len(objects)} object(s), predicted IoU "
                + ", ".join(f"{o.score:.2f}" for o in objects)
            )
        else:
            self.status.setText("No object: add a positive point or a box.")

    def cycle_candidate(self) -> None:
        """Show SAM's next candidate for a single ambiguous click."""
        if self.preview_result is not None and self.preview_result.objects:
            self.preview_result = self.preview_result.cycle(0)
            self._show_preview()

    def toggle_polarity(self) -> None:
        """Switch new points between object (green) and background (red)."""
        self.positive = not self.positive
        if self.points_layer is not None:
            self.points_layer.feature_defaults["positive"] = self.positive
        self._show_polarity()

    def _show_polarity(self) -> None:
        kind = "object (green)" if self.positive else "background (red)"
        self.polarity_label.setText(f"new points mark: <b>{kind}</b> [Shift-N]")

    def next_id(self) -> None:
        self.id_box.setValue(self.id_box.value() + 1)

    def previous_id(self) -> None:
        self.id_box.setValue(max(1, self.id_box.value() - 1))

    # ---------------------------------------------------------------- commit
    def commit(self) -> None:
        """Write the previewed objects into the objects layer (one undo step)."""
        if not self.preview_result or not self.preview_result.objects:
            show_info("napari-sam: nothing to commit; add a positive point or a box first.")
            return
        key = self.preview_result.key
        layer = self.objects_layer
        plane = np.asarray(layer.data[key])
        refined = self._refined_mask(key)
        ids = None if refined is None else [int(layer.selected_label)]
        plan = plan_commit(
            plane,
            self.preview_result.masks()[:1] if ids else self.preview_result.masks(),
            self.id_box.value(),
            self.overwrite_box.isChecked(),
            ids=ids,
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

    def clear_prompts(self) -> None:
        """Remove the points and boxes of the visible plane and the preview."""
        if self.session is None:
            return
        key = self.plane_key()
        here = np.flatnonzero(on_plane(np.asarray(self.points_layer.data), key))
        with self.points_layer.events.data.blocker():
            self.points_layer.selected_data = set(here.tolist())
            self.points_layer.remove_selected()
        boxes = [
            i for i, d in enumerate(self.boxes_layer.data) if on_plane(np.asarray(d), key).all()
        ]
        with self.boxes_layer.events.data.blocker():
            self.boxes_layer.selected_data = set(boxes)
            self.boxes_layer.remove_selected()
        self.preview_result = None
        self._show_preview()

    def use_model(self, model: str) -> None:
        """Segment with another model from now on (a registry name or a checkpoint file).

        Called by the fine-tuning widget when training ends; a running session restarts on
        the same image and keeps writing into the same objects layer.
        """
        self.model_name = str(model)
        if self.session is not None:
            if self.objects_layer is not None and self.objects_layer in self.viewer.layers:
                self.labels_box.setCurrentText(self.objects_layer.name)
            self.start()
