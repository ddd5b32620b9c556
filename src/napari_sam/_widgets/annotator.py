"""The "SAM annotator" dock widget: points and boxes in, live masks out, commit to labels.

The widget only moves data between napari layers and
:class:`~napari_sam.engine.annotation.session.AnnotationSession`: it loads the model (and
downloads it on first use) and encodes the visible plane in the background (one
:class:`~napari_sam._widgets._jobs.JobSlot`, with a cancel button), previews masks on the GUI
thread whenever a prompt changes (tens of milliseconds), and commits through the labels
layer's own undo history, into one "SAM objects" layer unless another is chosen. A commit
of an object covering more than half of the plane asks first. Propagate carries objects
through a stack (:mod:`~napari_sam._widgets._annotator_propagation`). Key bindings live on
the viewer and are removed on close.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from napari_sam._widgets._annotator_commits import CommitActions
from napari_sam._widgets._annotator_form import NEW_LAYER, AnnotatorForm
from napari_sam._widgets._annotator_propagation import PropagationActions
from napari_sam._widgets._jobs import Download, JobSlot, open_predictor, predictor_fits, report
from napari_sam.engine.annotation.objects import boxes_on_plane, on_plane
from napari_sam.errors import InvalidInputError, NapariSamError, OperationCancelled

OBJECTS = "SAM objects"  # the labels layer the annotator makes, once per image
CANCELS = {"load": "Cancel loading", "encode": "Cancel encoding", "propagate": "Cancel propagation"}


class AnnotatorWidget(PropagationActions, CommitActions, AnnotatorForm):
    """Dock widget for interactive SAM segmentation of an image layer."""

    def __init__(self, napari_viewer, model: str = "vit_t") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model_name = model
        self.session = None
        self.preview_result = None
        self.points_layer = self.boxes_layer = self.preview_layer = self.objects_layer = None
        self.image_layer = None
        self.jobs = JobSlot(self._show_busy, self._job_failed)
        self._download = Download()  # of the model being loaded
        self._load_timer = QTimer(self, interval=250)
        self._load_timer.timeout.connect(self._show_loading)
        self.positive = True
        self.record = None  # AnnotationRecord of the committed objects
        self._build_ui()
        self._init_propagation()
        self._show_busy(None)
        self._bind_keys()
        self.reset_choices()
        self.viewer.layers.events.inserted.connect(self.reset_choices)
        self.viewer.layers.events.removed.connect(self.reset_choices)
        self.viewer.dims.events.current_step.connect(self._on_step)

    @property
    def worker(self):
        """The napari worker of the running job (loading or encoding), or None."""
        return self.jobs.worker

    # ---------------------------------------------------------------- session
    def start(self) -> None:
        """Open a session on the chosen image in the background: load the model, then encode.

        The model loads (and downloads on first use) off the GUI thread; the status line
        says "loading model ..." and Cancel stops it. The session (tiled for large planes)
        and the prompt layers appear once it is loaded.
        """
        name = self.image_box.currentText()
        if not name:
            show_error("napari-sam: add an image layer first (File > Open, or a sample).")
            return
        layer = self.viewer.layers[name]
        channel = None if self.channel_box.value() < 0 else self.channel_box.value()
        options = dict(
            channel_axis=bool(layer.rgb) or channel is not None, channel=channel, **self.tiling()
        )
        cache = self.cache_edit.text().strip()
        self._download = Download()
        self.jobs.start(
            lambda stop: self._open_session(layer.data, cache, options),
            lambda session: self._session_opened(session, layer),
            kind="load",
        )
        self._show_loading()

    def _open_session(self, data, cache: str, options: dict):
        """Load the model and open the session (on the torch thread)."""
        from napari_sam.engine.annotation.tiled_session import open_session

        precision = self.precision_box.currentText()
        if cache:
            from napari_sam.batch.embedding import cache_precision, open_cached_session

            model = self._shared_model(cache_precision(cache, precision))
            return open_cached_session(data, cache, model, **options)
        return open_session(self._shared_model(precision), data, **options)

    def _session_opened(self, session, layer: Image) -> None:
        self.session = session
        self.image_layer = layer
        try:
            self._make_layers(layer)
        except InvalidInputError as error:
            self.session = None
            self.status.setText(f"Error: {error}")
            report(error)
            return
        self._reset_propagation()
        tile = getattr(session, "tile", None)
        tiles = f", tiles of {tile} + halo {session.halo}" if tile else ""
        self.status.setText(
            f"{session.model_id} on {layer.name!r}{tiles}: add points or boxes; "
            f"objects go into {self.objects_layer.name!r}."
        )
        self._ensure_embedding()

    def _shared_model(self, precision: str):
        """The current session's predictor if it holds this model in ``precision``, else a
        new one (torch thread)."""
        if self.session is not None and predictor_fits(
            self.session.predictor, self.model_name, precision
        ):
            return self.session.predictor
        return open_predictor(self.model_name, self._download, precision)

    def _show_loading(self) -> None:
        if self.jobs.kind == "load":
            self.status.setText(self._download.describe(self.model_name))

    def _show_busy(self, kind: str | None) -> None:
        """Buttons for the running job: none, "load", "encode", "prefetch" or "propagate"."""
        loading = kind == "load"
        self.start_button.setEnabled(not loading)
        self.cancel_button.setEnabled(kind in CANCELS)
        self.cancel_button.setText(CANCELS.get(kind or "", "Cancel encoding"))
        ready = self.session is not None and kind not in ("load", "propagate")
        for control in self.session_controls():
            control.setEnabled(ready)
        self._show_propagation_busy(kind)
        if loading:
            self._load_timer.start()
        else:
            self._load_timer.stop()

    def _make_layers(self, image: Image) -> None:
        spatial = self.session.layout.shape[
            : len(self.session.layout.shape) - int(self.session.layout.channel_axis)
        ]
        geometry = dict(
            scale=image.scale[: len(spatial)], translate=image.translate[: len(spatial)]
        )
        objects = self._chosen_objects(spatial)
        for layer in (self.points_layer, self.boxes_layer, self.preview_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.preview_layer = self.viewer.add_labels(
            np.zeros(spatial, np.uint16), name="SAM preview", opacity=0.5, **geometry
        )
        self.objects_layer = objects or self.viewer.add_labels(
            np.zeros(spatial, np.int32), name=OBJECTS, **geometry
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
        self.labels_box.setCurrentText(self.objects_layer.name)  # the form shows where

    def _chosen_objects(self, spatial: tuple[int, ...]):
        """The labels layer chosen under "objects into"; None: make a new one.

        After the first start the form shows our "SAM objects" layer, so starting again
        reuses it; one made for an image of another shape is replaced by a new one.

        Raises
        ------
        InvalidInputError
            The chosen labels layer does not have the image's shape.
        """
        target = self.labels_box.currentText()
        if not target or target == NEW_LAYER:
            return None
        layer = self.viewer.layers[target]
        if layer.data.shape == spatial:
            return layer
        if layer is self.objects_layer:  # ours, made for another image
            return None
        raise InvalidInputError(
            f"The labels layer {target!r} has shape {layer.data.shape}, the image "
            f"{spatial}: choose a labels layer of the image's shape or {NEW_LAYER}."
        )

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
        if self.jobs.kind in ("load", "propagate"):
            return  # the loaded session encodes its plane; a propagation encodes as it goes
        if self.session is None or self.session.has_embedding(key):
            if then_preview:
                self.update_preview()
            self._prefetch(key)
            return
        session = self.session
        self.jobs.start(
            lambda stop: session.embed(key, should_stop=stop),
            lambda _: self._encoded(key),
            kind="encode",
            progress={"desc": "SAM: encoding the image plane"},
        )
        self.status.setText(f"Encoding plane {key or ''} in the background...")

    def _encoded(self, key) -> None:
        self.status.setText(f"Plane {key or ''} ready: {self.session.model_id}.")
        if key == self.plane_key():
            self.update_preview()
        self._prefetch(key)

    def _prefetch(self, key) -> None:
        """Encode the neighbouring planes quietly, so stepping through z is instant."""
        if self.session is None or self.jobs.worker is not None:
            return
        missing = [k for k in self.session.neighbours(key) if not self.session.has_embedding(k)]
        if missing:
            session, plane = self.session, missing[0]
            self.jobs.start(
                lambda stop: session.embed(plane, should_stop=stop),
                lambda _: self._prefetched(key),
                kind="prefetch",
            )

    def _prefetched(self, key) -> None:
        if self.plane_key() != key:
            self._ensure_embedding()
        else:
            self._prefetch(key)

    def _job_failed(self, error: Exception) -> None:
        """An error of the running job (the JobSlot drops those of replaced jobs)."""
        if isinstance(error, OperationCancelled):
            self.status.setText(f"Cancelled: {error}")
            return
        if isinstance(error, NapariSamError):
            self.status.setText(f"Error: {error}")
        report(error)

    def cancel(self) -> None:
        """Stop the model loading (or its download), the encoding or the propagation."""
        if self.jobs.kind == "load":
            self._download.cancel()
            self.status.setText("Loading cancelled; press Start to try again.")
        self.jobs.cancel()

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
        """Decode the prompts of the visible plane and show the masks (GUI thread, ~40 ms).

        Not while a propagation runs: it holds the predictor on the torch thread.
        """
        if self.session is None or self.points_layer is None or self.jobs.kind == "propagate":
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
        self._forget_question()
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

    def clear_prompts(self, key: tuple[int, ...] | None = None) -> None:
        """Remove the points and boxes of the visible plane (or plane ``key``) and its preview."""
        if self.session is None:
            return
        key = self.plane_key() if key is None else key
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
        if key != self.plane_key():  # propagated from a plane no longer shown
            self.preview_layer.data[key] = 0
            self.preview_layer.refresh()
            return
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
