"""Per-slice 2D instance labels linked into 3D objects.

Segment-everything runs on one 2D plane at a time, so a 3D object arrives as a chain of
2D sections with unrelated ids. Sections in neighbouring slices are matched one to one by
maximal summed IoU (the Hungarian method, Kuhn 1955, through
:meth:`~napari_sam.engine.metrics.InstanceOverlap.matches`); pairs below an IoU threshold
stay apart. A section with no partner in the slice before may join an object seen two
slices before that found no partner in between (gap closing over one missed section, as
in the frame-to-frame linking of particle tracking, Jaqaman et al., Nature Methods 5,
695-702, 2008). Objects spanning fewer than ``min_extent`` slices are removed, and the
rest are numbered 1..n in order of first appearance (slice, then 2D id).

Memory is flat in the number of slices: :func:`track_sections` reads the slices once,
holding at most three, and keeps only a table per slice (2D id -> track, a few bytes per
section); :func:`write_tracks` reads each slice again and writes it relabelled, one slice
at a time, into numpy or a zarr array. So a zarr stack of any depth links with the memory
of three slices plus the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from napari_sam.engine.metrics import InstanceOverlap, instance_overlap
from napari_sam.errors import InvalidInputError, OperationCancelled

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LinkingSettings:
    """How 2D sections become 3D objects (defaults chosen on cells3d, docs/everything.md)."""

    iou_threshold: float = 0.3  # least IoU between one object's sections in neighbouring slices
    gap_closing: bool = True  # link over one slice where an object's section was missed
    min_extent: int = 2  # slices an object must span, first to last, to be kept

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise InvalidInputError(f"iou_threshold must be in (0, 1]; got {self.iou_threshold}.")
        if int(self.min_extent) != self.min_extent or self.min_extent < 1:
            raise InvalidInputError(
                f"min_extent must be a whole number of slices >= 1; got {self.min_extent}."
            )

    def to_dict(self) -> dict:
        """Plain values, for zarr attributes."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LinkingSettings:
        """Inverse of :meth:`to_dict`."""
        return cls(**values)


@dataclass(frozen=True)
class SectionTracks:
    """Which 3D track each 2D section belongs to (the first pass of linking).

    Attributes
    ----------
    ids : tuple of ndarray, one (S_z,) int64 per slice
        The nonzero 2D ids of slice z, sorted.
    tracks : tuple of ndarray, one (S_z,) int64 per slice
        The track of each of those sections; tracks are numbered 0.. in order of first
        appearance (slice, then 2D id), and hold at most one section per slice.
    first, last : ndarray, (T,) int64
        First and last slice of each track.
    links, gap_links : int
        Section pairs linked between neighbouring slices, and over one empty slice.
    """

    ids: tuple[np.ndarray, ...]
    tracks: tuple[np.ndarray, ...]
    first: np.ndarray
    last: np.ndarray
    links: int
    gap_links: int


@dataclass(frozen=True)
class LinkedLabels:
    """3D labels and what linking made of the sections.

    Attributes
    ----------
    labels : ndarray or zarr.Array, (z, rows, cols) int32
        0 = background, objects 1..``objects``; the ``out`` array when one was given.
    objects : int
        3D objects kept.
    removed : int
        Tracks dropped for spanning fewer than ``min_extent`` slices.
    sections : int
        2D objects in the input.
    links, gap_links : int
        As in :class:`SectionTracks`.
    """

    labels: object
    objects: int
    removed: int
    sections: int
    links: int
    gap_links: int


def link_slices(
    slices,
    settings: LinkingSettings = LinkingSettings(),
    out=None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LinkedLabels:
    """Link per-slice 2D labels into 3D objects.

    An object cannot span more slices than the stack has, so ``settings.min_extent`` is
    capped at the number of slices: one slice, or a stack shorter than ``min_extent``,
    keeps every object.

    Parameters
    ----------
    slices : array-like, (z, rows, cols) int
        2D instance labels per slice (0 = background; ids need only be unique within a
        slice). numpy, zarr or dask: read one slice at a time.
    settings : LinkingSettings
    out : array-like, (z, rows, cols), optional
        Where to write the int32 result (e.g. a zarr array); a new numpy array if omitted.
    progress : callable, optional
        ``progress(done, total)`` after each slice of each of the two passes (total 2 z).
    should_stop : callable, optional
        Polled before each slice; returning True raises OperationCancelled.

    Returns
    -------
    LinkedLabels

    Raises
    ------
    InvalidInputError
        ``slices`` is not a 3D integer array, holds negative ids, or ``out`` has another shape.
    OperationCancelled
        ``should_stop`` returned True.
    """
    out = _check_arrays(slices, out)
    tracks = track_sections(
        slices, settings, _shifted(progress, 0, 2 * slices.shape[0]), should_stop
    )
    return write_tracks(
        slices,
        tracks,
        min(settings.min_extent, slices.shape[0]),  # a short stack keeps its objects
        out,
        _shifted(progress, slices.shape[0], 2 * slices.shape[0]),
        should_stop,
    )


def label_sections(slices, out=None, progress: Progress | None = None) -> LinkedLabels:
    """Give every 2D section its own id, numbered over the stack without linking.

    Parameters and result as :func:`link_slices`; ``links`` is 0.
    """
    out = _check_arrays(slices, out)
    ids, tracks, count = [], [], 0
    for z in range(slices.shape[0]):
        section_ids = _section_ids(np.asarray(slices[z]), z)
        ids.append(section_ids)
        tracks.append(np.arange(count, count + len(section_ids), dtype=np.int64))
        count += len(section_ids)
    first = np.concatenate(
        [np.full(len(i), z, np.int64) for z, i in enumerate(ids)] or [np.zeros(0, np.int64)]
    )
    plan = SectionTracks(tuple(ids), tuple(tracks), first, first.copy(), 0, 0)
    return write_tracks(slices, plan, 1, out, progress)


def track_sections(
    slices,
    settings: LinkingSettings = LinkingSettings(),
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SectionTracks:
    """First pass: assign every 2D section to a track, holding at most three slices.

    Parameters
    ----------
    slices : array-like, (z, rows, cols) int
    settings : LinkingSettings
    progress, should_stop : callable, optional
        As in :func:`link_slices` (``progress(done, z)`` over this pass only).

    Returns
    -------
    SectionTracks
    """
    ids: list[np.ndarray] = []  # per slice: the 2D ids of its sections
    tracks: list[np.ndarray] = []  # per slice: the track of each section
    first: list[int] = []  # per track: its first and last slice
    last: list[int] = []
    window: list[
        tuple[np.ndarray, np.ndarray]
    ] = []  # last two (labels, continued) of slices z-2, z-1
    links = gap_links = 0
    for z in range(slices.shape[0]):
        _check_stop(should_stop)
        labels = np.asarray(slices[z])
        section_ids = _section_ids(labels, z)
        section_tracks = np.full(len(section_ids), -1, np.int64)
        if window:
            previous, previous_continued = window[-1]
            links += _join(
                instance_overlap(previous, labels),
                tracks[z - 1],
                None,
                section_tracks,
                previous_continued,
                settings.iou_threshold,
            )
        if settings.gap_closing and len(window) == 2:
            before, before_continued = window[0]  # continued: found a partner in slice z - 1
            gap_links += _join(
                instance_overlap(before, labels),
                tracks[z - 2],
                ~before_continued,
                section_tracks,
                before_continued,
                settings.iou_threshold,
            )
        new = section_tracks < 0
        section_tracks[new] = np.arange(len(first), len(first) + int(new.sum()))
        first.extend([z] * int(new.sum()))
        last.extend([z] * int(new.sum()))
        for track in section_tracks:
            last[track] = z
        ids.append(section_ids)
        tracks.append(section_tracks)
        window = (window + [(labels, np.zeros(len(section_ids), bool))])[-2:]
        if progress is not None:
            progress(z + 1, slices.shape[0])
    return SectionTracks(
        tuple(ids),
        tuple(tracks),
        np.asarray(first, np.int64),
        np.asarray(last, np.int64),
        links,
        gap_links,
    )


def write_tracks(
    slices,
    plan: SectionTracks,
    min_extent: int = 1,
    out=None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LinkedLabels:
    """Second pass: write each slice with its sections relabelled as numbered 3D objects.

    Tracks spanning fewer than ``min_extent`` slices become background; the others are
    numbered 1..n in track order (first appearance).

    Parameters
    ----------
    slices : array-like, (z, rows, cols) int
        The same slices :func:`track_sections` read.
    plan : SectionTracks
    min_extent : int
    out : array-like, (z, rows, cols), optional
    progress, should_stop : callable, optional

    Returns
    -------
    LinkedLabels
    """
    out = _check_arrays(slices, out)
    kept = (plan.last - plan.first + 1) >= min_extent
    final = np.zeros(len(kept), np.int32)
    final[kept] = np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    for z in range(slices.shape[0]):
        _check_stop(should_stop)
        out[z] = _relabel(np.asarray(slices[z]), plan.ids[z], final[plan.tracks[z]])
        if progress is not None:
            progress(z + 1, slices.shape[0])
    return LinkedLabels(
        labels=out,
        objects=int(kept.sum()),
        removed=int((~kept).sum()),
        sections=sum(len(i) for i in plan.ids),
        links=plan.links,
        gap_links=plan.gap_links,
    )


def _join(
    overlap: InstanceOverlap,
    earlier_tracks: np.ndarray,
    earlier_open: np.ndarray | None,
    tracks: np.ndarray,
    earlier_continued: np.ndarray,
    threshold: float,
) -> int:
    """Give unassigned sections the track of their optimal earlier partner; count links.

    ``overlap`` is between the earlier slice (rows) and this one (columns), whose nonzero
    ids are exactly the sections of each. Only earlier sections flagged in ``earlier_open``
    (all when None) are partners; each one that finds a partner is flagged in
    ``earlier_continued``.
    """
    open_rows = np.ones(len(earlier_tracks), bool) if earlier_open is None else earlier_open
    open_cols = tracks < 0
    candidates = InstanceOverlap(
        overlap.predicted_ids[open_rows],
        overlap.true_ids[open_cols],
        overlap.iou[np.ix_(open_rows, open_cols)],
    )
    matches = candidates.matches(threshold)
    for earlier, current, _ in matches:
        row = np.searchsorted(overlap.predicted_ids, earlier)
        tracks[np.searchsorted(overlap.true_ids, current)] = earlier_tracks[row]
        earlier_continued[row] = True
    return len(matches)


def _section_ids(labels: np.ndarray, z: int) -> np.ndarray:
    if labels.ndim != 2:
        raise InvalidInputError(f"slice {z} has shape {labels.shape}; expected (rows, cols).")
    ids = np.unique(labels)
    if len(ids) and ids[0] < 0:
        raise InvalidInputError(
            f"slice {z} holds the negative label {int(ids[0])}; labels must be >= 0."
        )
    return ids[ids != 0].astype(np.int64)


def _relabel(labels: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(rows, cols) labels with each of ``ids`` replaced by its value, as int32."""
    result = np.zeros(labels.shape, np.int32)
    foreground = labels != 0
    result[foreground] = values[np.searchsorted(ids, labels[foreground])]
    return result


def _check_arrays(slices, out):
    shape = tuple(int(s) for s in getattr(slices, "shape", ()))
    if len(shape) != 3 or not np.issubdtype(np.dtype(slices.dtype), np.integer):
        raise InvalidInputError(
            f"Slices to link must be a (z, rows, cols) integer label array; got shape {shape} "
            f"of {getattr(slices, 'dtype', type(slices).__name__)}."
        )
    if out is None:
        return np.zeros(shape, np.int32)
    if tuple(out.shape) != shape:
        raise InvalidInputError(f"out has shape {tuple(out.shape)}; the slices have {shape}.")
    return out


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise OperationCancelled("Linking slices was cancelled.")


def _shifted(progress: Progress | None, offset: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _count: progress(offset + done, total)
