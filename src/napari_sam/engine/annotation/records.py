"""What was clicked, with what settings: a JSON record that reproduces a segmentation.

Every committed object keeps its plane, prompts, chosen candidate and predicted IoU; the
record adds the model identity, the intensity normalisation and the package version.
:func:`replay` runs the same prompts through a session and paints the same objects, so
a result can be checked or redone on another machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_sam.engine.annotation.objects import plan_commit
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.errors import InvalidInputError

FORMAT = "napari-sam annotation record"
VERSION = 1


@dataclass(frozen=True)
class ObjectRecord:
    """One committed object."""

    id: int  # label value written
    plane: tuple[int, ...]  # leading indices of its plane, () for 2D
    points: list[list[float]]  # (row, col) prompts
    point_labels: list[int]  # 1 object, 0 background
    box: list[float] | None  # (row0, col0, row1, col1)
    candidate: int  # which of SAM's candidates was committed
    predicted_iou: float  # SAM's estimate for it


def object_record(item, plane: tuple[int, ...], label: int) -> ObjectRecord:
    """The record of one committed :class:`~napari_sam.engine.annotation.session.ObjectPreview`."""
    return ObjectRecord(
        id=int(label),
        plane=tuple(int(k) for k in plane),
        points=np.asarray(item.prompt.points, float).tolist(),
        point_labels=np.asarray(item.prompt.labels, int).tolist(),
        box=None if item.prompt.box is None else np.asarray(item.prompt.box, float).tolist(),
        candidate=int(item.chosen),
        predicted_iou=round(float(item.score), 4),
    )


@dataclass(frozen=True)
class AnnotationRecord:
    """All objects of one annotation session, with the settings that made them."""

    model_id: str
    normalization: Normalization
    data_shape: tuple[int, ...]
    objects: tuple[ObjectRecord, ...] = field(default=())

    def with_object(self, item: ObjectRecord) -> AnnotationRecord:
        return AnnotationRecord(
            self.model_id, self.normalization, self.data_shape, (*self.objects, item)
        )

    def to_json(self) -> str:
        from napari_sam import __version__

        payload = {"format": FORMAT, "version": VERSION, "napari_sam": __version__, **asdict(self)}
        return json.dumps(payload, indent=1)

    @classmethod
    def from_json(cls, text: str) -> AnnotationRecord:
        """Parse a record; raises InvalidInputError for another format or version."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"Not a napari-sam record (invalid JSON: {error}).") from error
        if payload.get("format") != FORMAT or payload.get("version") != VERSION:
            raise InvalidInputError(
                f"Not a napari-sam record of version {VERSION}: format={payload.get('format')!r}, "
                f"version={payload.get('version')!r}."
            )
        norm = payload["normalization"]
        weights = norm.get("channel_weights")
        return cls(
            model_id=payload["model_id"],
            normalization=Normalization(
                norm["low"],
                norm["high"],
                norm.get("channel"),
                None if weights is None else tuple(weights),
            ),
            data_shape=tuple(payload["data_shape"]),
            objects=tuple(
                ObjectRecord(**{**o, "plane": tuple(o["plane"])}) for o in payload["objects"]
            ),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AnnotationRecord:
        return cls.from_json(Path(path).read_text())


def replay(session, record: AnnotationRecord) -> np.ndarray:
    """Paint every recorded object again with ``session``; returns labels of the data's shape.

    Raises
    ------
    InvalidInputError
        The session's data or normalisation differs from the record's.
    """
    layout = session.layout
    if tuple(layout.shape) != tuple(record.data_shape):
        raise InvalidInputError(
            f"The record is for data of shape {record.data_shape}, not {layout.shape}."
        )
    if session.normalization != record.normalization:
        raise InvalidInputError(
            "The session's intensity normalisation differs from the record's; "
            "create the session with normalization=record.normalization."
        )
    labels = np.zeros(layout.stack_shape + layout.plane_shape, np.int32)
    for item in record.objects:
        boxes = None if item.box is None else np.array([item.box])
        preview = session.preview(
            item.plane,
            np.array(item.points).reshape(-1, 2),
            np.array(item.point_labels, int),
            boxes,
        )
        chosen = preview.objects[0].prediction.masks[item.candidate]
        plane = labels[item.plane]
        plan = plan_commit(plane, chosen[None], item.id, ids=[item.id])
        plane[plan.rows, plan.cols] = plan.values
    return labels
