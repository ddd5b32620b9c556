"""Images as stacks of 2D planes: which axes are spatial, which select a plane.

napari shows one 2D plane of an n-D layer at a time; SAM segments 2D planes. A
:class:`PlaneLayout` names the last two spatial axes (plus a trailing colour axis for RGB
data) and treats every leading axis (z, t, ...) as a plane index, so a plane key is a
tuple like ``(z,)`` or ``(t, z)``. Planes are read one at a time, so numpy, memory-mapped
and dask arrays all work without loading the volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_sam.engine.prediction.preprocess import (
    LARGE_PLANE_PIXELS,
    Normalization,
    compute_normalization,
    constant_value,
    format_pixel,
    sample_plane,
    select_channels,
)
from napari_sam.errors import InvalidInputError

PlaneKey = tuple[int, ...]
SAMPLE_PLANES = 8  # planes read to compute a stack's intensity normalisation
PLANE_SAMPLE_PIXELS = 250_000  # pixels kept of each of those planes, about
PLANE_SAMPLE_WINDOWS = 16  # windows read from each of them when the planes are large


@dataclass(frozen=True)
class PlaneLayout:
    """How an array splits into 2D planes."""

    shape: tuple[int, ...]  # full array shape
    channel_axis: bool  # True when the last axis holds channels (RGB or multichannel)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        """Shape of the leading (plane-selecting) axes; () for a single image."""
        return self.shape[: self.stack_ndim]

    @property
    def stack_ndim(self) -> int:
        """Number of leading axes."""
        return len(self.shape) - 2 - int(self.channel_axis)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, cols) of one plane."""
        end = len(self.shape) - int(self.channel_axis)
        return self.shape[end - 2], self.shape[end - 1]

    def check_key(self, key: PlaneKey) -> PlaneKey:
        """Validate a plane key; raises InvalidInputError with the valid ranges."""
        key = tuple(int(k) for k in key)
        if len(key) != self.stack_ndim or any(
            not 0 <= k < n for k, n in zip(key, self.stack_shape)
        ):
            raise InvalidInputError(
                f"Plane {key} does not exist in data of shape {self.shape}: expected "
                f"{self.stack_ndim} indices below {self.stack_shape}."
            )
        return key


def plane_layout(shape: tuple[int, ...], channel_axis: bool = False) -> PlaneLayout:
    """Describe an array as planes.

    Parameters
    ----------
    shape : tuple of int
        Array shape, spatial axes last: (rows, cols), (z, rows, cols), (t, z, rows, cols),
        or any of these with a trailing channel axis.
    channel_axis : bool
        The last axis holds channels (napari's ``rgb=True`` image layers, or
        multichannel data with a channel choice).

    Raises
    ------
    InvalidInputError
        Fewer than two spatial axes, or an empty axis.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) - int(channel_axis) < 2:
        raise InvalidInputError(
            f"Data of shape {shape} has no 2D plane to segment: expected (..., rows, cols)"
            + (", channels)" if channel_axis else ")")
            + "."
        )
    if 0 in shape:
        raise InvalidInputError(f"The data is empty (shape {shape}).")
    return PlaneLayout(shape, channel_axis)


def read_plane(data, layout: PlaneLayout, key: PlaneKey) -> np.ndarray:
    """Read one plane as a numpy array (computes only that plane of a dask array)."""
    key = layout.check_key(key)
    plane = data[key] if key else data
    return np.asarray(plane)


class PlaneView:
    """One plane of an array that reads only the window it is indexed with.

    ``view[rows, cols]`` is ``data[key + (rows, cols)]`` as numpy, so a tile of a zarr
    or dask plane costs that tile's chunks, not the plane.
    """

    def __init__(self, data, layout: PlaneLayout, key: PlaneKey) -> None:
        self.data, self.key = data, layout.check_key(key)
        self.shape = tuple(layout.plane_shape) + (
            (layout.shape[-1],) if layout.channel_axis else ()
        )
        self.dtype = np.dtype(data.dtype)

    def __getitem__(self, window: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(self.data[self.key + tuple(window)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[slice(None), slice(None)], dtype=dtype)


def stack_normalization(
    data,
    layout: PlaneLayout,
    channel: int | None = None,
    channel_weights: tuple[float, ...] | None = None,
    planes: int = SAMPLE_PLANES,
) -> Normalization:
    """One intensity mapping for the whole stack, from a few evenly spaced planes.

    Reads at most ``planes`` planes, never the whole volume, so every slice of a stack is
    normalised alike (no jumps in contrast between slices, no seams between tiles). Of a
    plane larger than :data:`~napari_sam.engine.prediction.preprocess.LARGE_PLANE_PIXELS`
    only :data:`PLANE_SAMPLE_WINDOWS` windows are read. When every sampled plane is
    constant, the other planes are read one at a time until one differs.

    Raises
    ------
    InvalidInputError
        Bad values or channel choice (see
        :func:`~napari_sam.engine.prediction.preprocess.compute_normalization`), or a
        constant stack: every plane (or, for large planes, every sampled window) holds
        the same value, for every dtype.
    """
    count = int(np.prod(layout.stack_shape)) if layout.stack_ndim else 1
    picks = np.unique(np.linspace(0, count - 1, min(planes, count)).round().astype(int))
    sample = np.concatenate([_plane_sample(data, layout, int(i)) for i in picks], axis=0)
    value = constant_value(select_channels(sample, channel, channel_weights))
    for flat in range(count if value is not None else 0):  # look for a plane that differs
        if flat in picks:
            continue
        grown = np.concatenate([sample, _plane_sample(data, layout, flat)], axis=0)
        if constant_value(select_channels(grown, channel, channel_weights)) is None:
            sample, value = grown, None
            break
    if value is not None:
        raise InvalidInputError(_constant_stack_message(layout, value))
    return compute_normalization(sample, channel=channel, channel_weights=channel_weights)


def _plane_sample(data, layout: PlaneLayout, flat: int) -> np.ndarray:
    """About PLANE_SAMPLE_PIXELS pixels of plane number ``flat``: strided, or windows."""
    key = (
        tuple(int(i) for i in np.unravel_index(flat, layout.stack_shape))
        if layout.stack_ndim
        else ()
    )
    rows, cols = layout.plane_shape
    if rows * cols > LARGE_PLANE_PIXELS:
        view = PlaneView(data, layout, key)
        return sample_plane(view, PLANE_SAMPLE_PIXELS, PLANE_SAMPLE_WINDOWS)
    plane = read_plane(data, layout, key)
    step = max(1, int(np.sqrt(rows * cols / PLANE_SAMPLE_PIXELS)))
    return plane[::step, ::step]


def _constant_stack_message(layout: PlaneLayout, value: tuple[float, ...]) -> str:
    rows, cols = layout.plane_shape
    where = " in the windows sampled from it" if rows * cols > LARGE_PLANE_PIXELS else ""
    what = "Every plane of the data" if layout.stack_ndim else "The image"
    return (
        f"{what} (shape {layout.shape}) is constant{where} (every pixel is "
        f"{format_pixel(value)}): there is nothing to segment. Check that the right file, "
        "series, level or channel was opened."
    )
