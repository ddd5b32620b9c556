"""One slice of a batch segment-everything run: the task a process or a dask worker runs.

A task is small and picklable (:class:`SliceJob`): where to read (a :class:`StackSource`
that each worker opens lazily itself, so no pixels travel through the scheduler), which
slice, the stack's one normalisation (computed once by the driver), the settings, and
where to write. It reads its plane, segments it, and writes that slice's chunks and flag
into the :class:`~napari_sam.io.everything_store.EverythingStore`. The model is passed in
by the caller, who loads it once per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.everything.segmenter import segment_plane
from napari_sam.engine.model.loading import SamModel, load_model
from napari_sam.engine.model.precision import AUTO
from napari_sam.engine.prediction.planes import PlaneLayout, plane_layout, read_plane
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.errors import InvalidInputError

log = logging.getLogger(__name__)

# The per-plane segmenter: segment(predictor, plane, normalization, settings, tile=, halo=)
# -> an object with .labels (rows, cols) int32. Pickled by reference to its module, so a
# worker process imports it; tests pass stand-ins.
Segmenter = Callable[..., Any]
ModelSource = str | Callable[[], SamModel]  # registry name or checkpoint path, or a factory


@dataclass(frozen=True)
class StackSource:
    """An image or (z, y, x) stack on disk, as :func:`~napari_sam.io.volumes.open_volume`
    opens it.
    """

    path: str  # TIFF, zarr or OME-Zarr folder, or .npy
    key: str | int | None = None  # series (TIFF) or array path (zarr)
    level: int = 0  # pyramid level, 0 = full resolution
    axes: str | None = None  # axis names, e.g. "zyx" (default: from the file)
    channel: int | None = None  # channel to segment in multichannel data

    def open(self) -> OpenStack:
        """Open the data lazily as planes (reads only a few bytes of metadata).

        Raises
        ------
        InvalidInputError
            The input cannot be opened (see :func:`~napari_sam.io.volumes.open_volume`),
            has a time axis as well as z (segment one time point at a time), or
            ``channel`` is given for data without a channel axis.
        """
        from napari_sam.io.volumes import open_volume

        volume = open_volume(self.path, key=self.key, level=self.level, axes=self.axes)
        if len(volume.stack_axes) > 1:
            raise InvalidInputError(
                f"{self.path} has axes {volume.axes!r}: segment-everything links slices along one "
                "stack axis. Select one time point first (e.g. write it to its own file), "
                "or, if an axis was misread, pass axes= naming each axis (e.g. axes='czyx')."
            )
        if self.channel is not None and not volume.channel_axis:
            axis = volume.stack_axes[:1]  # the axis that may really hold channels
            relabel = volume.axes.replace(axis, "c", 1) if axis else ""
            raise InvalidInputError(
                f"channel={self.channel} was given but {self.path} has no channel axis (axes "
                f"{volume.axes!r}): leave out channel="
                + (
                    f", or pass axes= naming the channel axis (e.g. axes={relabel!r})."
                    if axis
                    else "."
                )
            )
        view = volume.planes_view()
        planes = view if volume.stack_axes else _SinglePlane(view)
        return OpenStack(
            planes, plane_layout(planes.shape, channel_axis=volume.channel_axis), volume.axes
        )


@dataclass(frozen=True)
class OpenStack:
    """An opened :class:`StackSource`."""

    planes: Any  # array-like, (Z, rows, cols[, channels]); a 2D image has Z = 1
    layout: PlaneLayout  # its planes: stack_shape (Z,), plane_shape (rows, cols)
    axes: str  # axis names of the input as opened, e.g. "zyx"


@dataclass(frozen=True)
class SliceJob:
    """Everything one slice's task needs (a few hundred bytes when pickled)."""

    source: StackSource
    out: str  # path of the EverythingStore
    z: int  # slice index
    normalization: Normalization  # one mapping for the whole stack
    settings: Any  # EverythingSettings
    tile: int | None  # tile interior side, None for whole planes
    halo: int  # tile overlap in pixels
    segmenter: Segmenter = segment_plane  # a module-level function (see Segmenter)


@dataclass(frozen=True)
class SliceResult:
    """What one task did."""

    z: int
    objects: int  # 2D objects found
    seconds: float  # wall time of the task


def segment_slice(job: SliceJob, predictor, stack: OpenStack | None = None) -> SliceResult:
    """Segment one slice and store it (labels, count, then the completion flag).

    Parameters
    ----------
    job : SliceJob
    predictor : Predictor
        Loaded once per process by the caller.
    stack : OpenStack, optional
        The opened source; opened from ``job.source`` when omitted.

    Returns
    -------
    SliceResult
    """
    import zarr

    from napari_sam.io.everything_store import EverythingStore

    start = time.perf_counter()
    stack = stack or job.source.open()
    plane = read_plane(stack.planes, stack.layout, (job.z,))
    labels = np.asarray(
        job.segmenter(
            predictor, plane, job.normalization, job.settings, tile=job.tile, halo=job.halo
        ).labels
    )
    EverythingStore(zarr.open_group(job.out, mode="r+")).write_slice(job.z, labels)
    seconds = time.perf_counter() - start
    log.info("slice %d: %d objects in %.1f s", job.z, int(labels.max(initial=0)), seconds)
    return SliceResult(job.z, int(labels.max(initial=0)), round(seconds, 3))


@dataclass(frozen=True)
class ModelChoice:
    """A model with the options a user named: a checkpoint's architecture, a device, the
    encoder's precision.

    A picklable model factory, so workers load it themselves; :func:`model_identity`
    reads its id without building the network, :func:`load_predictor` gives each
    worker's predictor the precision (``"auto"`` is resolved on the worker's own CPU).
    """

    model: str  # registry name or checkpoint file
    architecture: str | None = None  # registry name of a checkpoint file's architecture
    device: str | None = None  # torch device; None: the CPU (see docs/devices.md)
    precision: str = AUTO  # the encoder's: auto, fp32 or bf16 (docs/precision.md)

    def __call__(self) -> SamModel:
        return load_model(self.model, self.device, architecture=self.architecture)


def load_predictor(model: ModelSource):
    """A :class:`~napari_sam.engine.prediction.predictor.Predictor` for a model name, file or
    factory (with the precision of a :class:`ModelChoice`; ``"auto"`` for the others).
    """
    from napari_sam.engine.prediction.predictor import Predictor

    precision = model.precision if isinstance(model, ModelChoice) else AUTO
    return Predictor(model() if callable(model) else model, precision=precision)


def model_identity(model: ModelSource) -> str:
    """The model id a run records, without loading registry weights.

    A factory is called (cheap for the random test models it is meant for).
    """
    from napari_sam.engine.model.downloads import file_sha256
    from napari_sam.engine.model.registry import get_model_spec

    if isinstance(model, ModelChoice):
        spec = get_model_spec(model.model, model.architecture)
    elif callable(model):
        return model().model_id
    else:
        spec = get_model_spec(model)
    if spec.sha256 or spec.path is None:
        return spec.model_id
    return f"{spec.name}@{file_sha256(Path(spec.path))[:12]}"


class _SinglePlane:
    """A (rows, cols[, channels]) image seen as a stack of one plane."""

    def __init__(self, data) -> None:
        self.data = data
        self.shape = (1,) + tuple(int(s) for s in data.shape)
        self.dtype, self.ndim = np.dtype(data.dtype), len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if key[0] != 0:
            raise IndexError(f"a single image has one plane; got index {key[0]}")
        return np.asarray(self.data[key[1:]] if len(key) > 1 else self.data)
