"""Propagate objects from the slices where they were prompted through a stack (z or t).

Each object has one or more *anchors*: slices where its mask is given (a user's prompt,
decoded, or a correction). From its outermost anchors an object is carried slice by
slice away from them, each new slice prompted from the mask of the one before
(:mod:`~napari_sam.engine.annotation.projection`), until a stop rule fires: the mask
vanishes, its IoU with the previous slice's mask falls below ``min_iou``, SAM's predicted
IoU falls below ``min_score``, the mask grows by more than ``max_growth`` (it has run
into the out-of-focus light above or below the object), or the user's limit is reached.
Between two anchors the object is carried from both ends and joined in the middle, and
only a vanished mask stops it there (the user said it spans them).

Work is batched by slice, not by object: two sweeps (upward, then downward) visit each
slice at most once per direction and decode every object that needs that slice in one
decoder call, so a stack whose embeddings are cached propagates at decoder speed.
The stop rule's defaults are chosen on labelled volumes, see
``benchmarks/eval_propagation.py`` and docs/propagation.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_sam.engine.annotation.projection import SlicePrompt, check_projection, project
from napari_sam.errors import InvalidInputError, OperationCancelled

Progress = Callable[[int, int], None]
# Reasons an object ends on one side: its mask vanished, changed too much from the slice
# before, SAM doubted it, it grew into the blur, or it reached the limit or the stack's end.
ENDS = ("vanished", "changed", "unsure", "grew", "limit")


@dataclass(frozen=True)
class PropagationSettings:
    """How objects are carried from slice to slice and when they stop."""

    # The defaults were chosen on two labelled stacks at once, the 20 nuclei of the cells3d
    # volume (z: mean 3D IoU over a box and a click per nucleus) and 16 tracked nuclei of a
    # time-lapse (t: share of each track followed), as the rule whose worse set is best
    # (benchmarks/eval_propagation.py, docs/propagation.md). The growth rule does most of
    # the work: without it a nucleus runs on into the out-of-focus light above and below
    # it (mean 3D IoU 0.17); at 1.2 it also cut cells short in time.
    projection: str = "box_point"  # prompts per new slice (see projection.PROJECTIONS)
    box_margin: float = 0.05  # the carried box grows by this share of its size per side
    min_iou: float = 0.3  # stop where the IoU with the previous slice's mask is lower
    min_score: float = 0.85  # stop where SAM's predicted IoU is lower (0: rule off)
    max_growth: float = 1.3  # stop where the area grows by more than this factor
    min_area: int = 10  # pixels; a smaller mask has vanished

    def __post_init__(self) -> None:
        check_projection(self.projection)
        if not 0.0 <= self.min_iou <= 1.0 or not 0.0 <= self.min_score <= 1.0:
            raise InvalidInputError(
                f"min_iou and min_score must lie in [0, 1]; got {self.min_iou}, {self.min_score}."
            )
        if self.max_growth <= 1.0 or self.box_margin < 0 or self.min_area < 1:
            raise InvalidInputError(
                "max_growth must be above 1, box_margin at least 0 and min_area at least 1; "
                f"got {self.max_growth}, {self.box_margin}, {self.min_area}."
            )


@dataclass(frozen=True, eq=False)
class Footprint:
    """An object's mask on one slice, kept as its bounding-box crop."""

    row: int
    col: int
    crop: np.ndarray  # (h, w) bool

    @classmethod
    def of(cls, mask: np.ndarray) -> Footprint:
        """Crop a (rows, cols) bool mask to its bounding box (empty: a 0x0 crop)."""
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            return cls(0, 0, np.zeros((0, 0), bool))
        row0, col0 = int(rows.min()), int(cols.min())
        return cls(row0, col0, mask[row0 : rows.max() + 1, col0 : cols.max() + 1].copy())

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(np.count_nonzero(self.crop))

    def paste(self, shape: tuple[int, int]) -> np.ndarray:
        """The full (rows, cols) bool mask."""
        out = np.zeros(shape, bool)
        h, w = self.crop.shape
        out[self.row : self.row + h, self.col : self.col + w] = self.crop
        return out


@dataclass(frozen=True)
class StepQuality:
    """What the stop rule saw on one propagated slice."""

    score: float  # SAM's predicted IoU
    area: int  # pixels
    iou_previous: float  # IoU with the mask of the slice it came from
    source: int  # the anchor slice whose propagation made it


@dataclass(frozen=True, eq=False)
class PropagatedObject:
    """One object through the stack: its mask per slice and why it ended on each side."""

    anchors: tuple[int, ...]  # slices whose mask was given, sorted
    slices: Mapping[int, Footprint]  # slice index -> mask, anchors included
    steps: Mapping[int, StepQuality]  # slice index -> quality, propagated slices only
    ends: tuple[str, str]  # why it ended below and above (see ENDS)

    @property
    def extent(self) -> tuple[int, int]:
        """(first, last) slice holding the object."""
        return min(self.slices), max(self.slices)

    def volume(self, length: int, shape: tuple[int, int]) -> np.ndarray:
        """(length, rows, cols) bool: the object in every slice."""
        out = np.zeros((length, *shape), bool)
        for index, footprint in self.slices.items():
            out[index] = footprint.paste(shape)
        return out


@dataclass
class _Walker:
    """One object being carried in one direction."""

    item: int  # object index
    step: int  # +1 up, -1 down
    next: int  # slice to decode next
    last: int  # last slice it may reach
    source: int  # the anchor it started from
    mask: np.ndarray  # (rows, cols) bool on the slice before
    logits: np.ndarray | None  # (256, 256) of that mask
    guarded: bool  # full stop rules (outside the anchors) or only "vanished"
    end: str = "limit"


@dataclass
class _Result:
    anchors: tuple[int, ...]
    slices: dict[int, Footprint] = field(default_factory=dict)
    steps: dict[int, StepQuality] = field(default_factory=dict)
    ends: list[str] = field(default_factory=lambda: ["limit", "limit"])


Decoder = Callable[[int, list[SlicePrompt]], list[tuple[np.ndarray, float, np.ndarray]]]


def plan_walkers(
    anchors: Mapping[int, tuple[np.ndarray, np.ndarray | None]],
    item: int,
    limits: tuple[int, int],
) -> list[_Walker]:
    """Walkers for one object: outward from its outer anchors, and toward each other between.

    ``anchors`` maps slice -> (mask (rows, cols) bool, logits (256, 256) or None);
    ``limits`` is the inclusive (first, last) slice the object may occupy.
    """
    order = sorted(anchors)
    low, high = limits
    walkers = [
        _Walker(item, -1, order[0] - 1, low, order[0], *anchors[order[0]], guarded=True),
        _Walker(item, +1, order[-1] + 1, high, order[-1], *anchors[order[-1]], guarded=True),
    ]
    for below, above in itertools.pairwise(order):
        middle = (below + above) // 2
        walkers.append(_Walker(item, +1, below + 1, middle, below, *anchors[below], guarded=False))
        walkers.append(
            _Walker(item, -1, above - 1, middle + 1, above, *anchors[above], guarded=False)
        )
    return [w for w in walkers if (w.last - w.next) * w.step >= 0]


def run_walkers(
    walkers: list[_Walker],
    decode: Decoder,
    settings: PropagationSettings,
    results: list[_Result],
    should_stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> None:
    """Carry every walker to its end: an upward sweep, then a downward one.

    ``decode(slice, prompts)`` returns one (mask (rows, cols) bool, score, logits (256,
    256)) per prompt, decoded together on that slice. Results land in ``results``.
    """
    total = sum(abs(w.last - w.next) + 1 for w in walkers)
    done = 0
    for step in (+1, -1):
        pending = [w for w in walkers if w.step == step]
        while pending:
            here = min(w.next * step for w in pending) * step
            batch = [w for w in pending if w.next == here]
            if should_stop is not None and should_stop():
                raise OperationCancelled("Propagation was cancelled.")
            prompts = [
                project(w.mask, w.logits, settings.projection, settings.box_margin) for w in batch
            ]
            for walker, decoded in zip(batch, decode(here, prompts)):
                _advance(walker, *decoded, settings, results[walker.item])
            finished = [w for w in batch if w.end != "limit" or w.next * step > w.last * step]
            done += sum(abs(w.last - here) for w in finished) + len(batch)
            for walker in finished:
                if walker.guarded:
                    results[walker.item].ends[(step + 1) // 2] = walker.end
            pending = [w for w in pending if w not in finished]
            if progress is not None:
                progress(min(done, total), total)


def _advance(
    walker: _Walker,
    mask: np.ndarray,
    score: float,
    logits: np.ndarray,
    settings: PropagationSettings,
    result: _Result,
) -> None:
    """Take one decoded slice into ``result``, or end the walker by the stop rules."""
    area = int(np.count_nonzero(mask))
    union = np.count_nonzero(mask | walker.mask)
    iou = float(np.count_nonzero(mask & walker.mask) / union) if union else 0.0
    end = stop_reason(area, iou, score, int(np.count_nonzero(walker.mask)), settings)
    if end == "vanished" or (walker.guarded and end is not None):
        walker.end = end
        return
    result.slices[walker.next] = Footprint.of(mask)
    result.steps[walker.next] = StepQuality(score, area, iou, walker.source)
    walker.mask, walker.logits = mask, logits
    walker.next += walker.step


def stop_reason(
    area: int, iou: float, score: float, previous_area: int, settings: PropagationSettings
) -> str | None:
    """Which stop rule a decoded slice breaks (see :data:`ENDS`), or None to go on."""
    if area < settings.min_area:
        return "vanished"
    if iou < settings.min_iou:
        return "changed"
    if settings.min_score > 0 and score < settings.min_score:  # 0 turns the rule off
        return "unsure"
    if area > settings.max_growth * previous_area:
        return "grew"
    return None


def propagate(
    decode: Decoder,
    anchors: Sequence[Mapping[int, tuple[np.ndarray, np.ndarray | None]]],
    length: int,
    settings: PropagationSettings | None = None,
    limits: Sequence[tuple[int, int]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> list[PropagatedObject]:
    """Carry objects from their anchor slices through a stack of ``length`` slices.

    Parameters
    ----------
    decode : callable
        ``decode(slice, prompts)`` -> one (mask (rows, cols) bool, score float, logits
        (256, 256) float32) per :class:`SlicePrompt`, decoded together on that slice.
    anchors : sequence of mappings
        Per object: slice index -> (mask (rows, cols) bool, logits (256, 256) or None).
    length : int
        Slices along the propagation axis.
    settings : PropagationSettings, optional
    limits : sequence of (first, last), optional
        Per object, the inclusive slice range it may reach; default the whole stack.
    should_stop : callable, optional
        Polled before each slice; returning True raises OperationCancelled.
    progress : callable, optional
        ``progress(done, total)`` in decoded slices per object.

    Returns
    -------
    list of PropagatedObject, in the order of ``anchors``.

    Raises
    ------
    InvalidInputError
        An object without anchors, an empty anchor mask, or an anchor outside its limits.
    OperationCancelled
        ``should_stop`` returned True.
    """
    settings = settings or PropagationSettings()
    limits = list(limits) if limits is not None else [(0, length - 1)] * len(anchors)
    results, walkers = [], []
    for item, (given, (low, high)) in enumerate(zip(anchors, limits)):
        _check_anchors(item, given, low, high, length)
        result = _Result(tuple(sorted(given)))
        result.slices.update({index: Footprint.of(m) for index, (m, _) in given.items()})
        results.append(result)
        walkers += plan_walkers(given, item, (low, high))
    run_walkers(walkers, decode, settings, results, should_stop, progress)
    return [_finish(r) for r in results]


def _check_anchors(item: int, given: Mapping, low: int, high: int, length: int) -> None:
    if not given:
        raise InvalidInputError(f"Object {item} has no anchor slice: give at least one mask.")
    if not 0 <= low <= high < length:
        raise InvalidInputError(
            f"Object {item}: limits ({low}, {high}) must satisfy 0 <= first <= last < {length}."
        )
    for index, (mask, _) in given.items():
        if not low <= index <= high:
            raise InvalidInputError(
                f"Object {item}: anchor slice {index} lies outside its limits ({low}, {high})."
            )
        if not np.any(mask):
            raise InvalidInputError(
                f"Object {item}: its mask on slice {index} is empty; prompt the object first."
            )


def _finish(result: _Result) -> PropagatedObject:
    return PropagatedObject(
        result.anchors, dict(result.slices), dict(result.steps), (result.ends[0], result.ends[1])
    )


def correct(
    decode: Decoder,
    previous: PropagatedObject,
    index: int,
    mask: np.ndarray,
    logits: np.ndarray | None,
    length: int,
    settings: PropagationSettings | None = None,
    limits: tuple[int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> PropagatedObject:
    """Re-propagate an object from a corrected slice, keeping the slices the user saw.

    The corrected slice becomes an anchor. Only the slices on its far side from the
    anchor that had produced it change: outward to the stop rule, or up to the middle
    towards the next anchor on that side. Slices between it and that anchor are kept.
    A correction on an anchor slice replaces that anchor and propagates the object
    again from all its anchors.

    Parameters
    ----------
    decode : callable
        As for :func:`propagate`.
    previous : PropagatedObject
    index : int
        The corrected slice.
    mask : numpy.ndarray, shape (rows, cols) bool
        The object's new mask there.
    logits : numpy.ndarray, shape (256, 256), optional
    length : int
    settings : PropagationSettings, optional
    limits : (first, last), optional
    should_stop, progress : callable, optional
        As for :func:`propagate`.

    Returns
    -------
    PropagatedObject
    """
    settings = settings or PropagationSettings()
    low, high = limits if limits is not None else (0, length - 1)
    _check_anchors(0, {index: (mask, logits)}, low, high, length)
    if index in previous.anchors:
        anchors: dict[int, tuple[np.ndarray, np.ndarray | None]] = {
            a: (previous.slices[a].paste(mask.shape), None) for a in previous.anchors
        }
        anchors[index] = (mask, logits)
        (again,) = propagate(
            decode, [anchors], length, settings, [(low, high)], should_stop, progress
        )
        return again
    step = _away_from_source(previous, index)
    beyond = [a for a in previous.anchors if (a - index) * step > 0]
    if beyond:
        nearest = min(beyond, key=lambda a: abs(a - index))
        last = (index + nearest) // 2 if step > 0 else (index + nearest) // 2 + 1
        guarded = False
    else:
        last, guarded = (high if step > 0 else low), True
    slices = {
        k: v
        for k, v in previous.slices.items()
        if (k - index) * step < 0 or (k - last) * step > 0 or k in previous.anchors
    }
    slices[index] = Footprint.of(mask)
    steps = {k: v for k, v in previous.steps.items() if k in slices and k != index}
    result = _Result(tuple(sorted({*previous.anchors, index})), slices, steps, list(previous.ends))
    walkers = [_Walker(0, step, index + step, last, index, mask, logits, guarded)]
    walkers = [w for w in walkers if (w.last - w.next) * w.step >= 0]
    if not walkers and guarded:
        result.ends[(step + 1) // 2] = "limit"
    run_walkers(walkers, decode, settings, [result], should_stop, progress)
    return _finish(result)


def _away_from_source(previous: PropagatedObject, index: int) -> int:
    """+1 or -1: the direction leading away from the anchor that produced slice ``index``."""
    if index in previous.steps:
        return 1 if index > previous.steps[index].source else -1
    anchors = previous.anchors
    if index in anchors or not anchors:
        return 1
    nearest = min(anchors, key=lambda a: abs(a - index))
    return 1 if index > nearest else -1
