"""From any 2D microscopy image to the uint8 RGB input SAM was trained on.

A :class:`Normalization` is computed once from the data (robust percentiles, so a few
hot pixels do not wash out the image) and then applied unchanged to every tile and slice
of the same data: per-tile normalisation makes seams. A constant image (every channel
constant, whatever the dtype) is refused there: SAM would return a whole-image mask or
nothing. A plane larger than :data:`LARGE_PLANE_PIXELS` is never read whole to compute
the mapping: a grid of windows spread evenly over it is read instead (a stratified
sample, like the strided sample that smaller images use). Grey images are copied to three
channels; images with other channel counts need a chosen channel or a channel mix.
Resizing follows SAM's "longest side to the encoder size" rule with bilinear filtering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from napari_sam.errors import InvalidInputError

DEFAULT_PERCENTILES = (0.5, 99.5)
SAMPLE_PIXELS = 1 << 22  # percentiles of larger images come from a strided sample
LARGE_PLANE_PIXELS = 1 << 26  # 64 Mpx: larger planes are sampled in windows, not read whole
SAMPLE_WINDOWS = 64  # windows read from a large plane (8 x 8 on a square plane)


@dataclass(frozen=True)
class Normalization:
    """A fixed intensity mapping to 0..255 plus a channel choice.

    ``low`` maps to 0 and ``high`` to 255, linearly, clipped, rounded. Channels are the
    last axis: a 3-channel image is taken as RGB; any other channel count needs
    ``channel`` (one index) or ``channel_weights`` (a weighted sum, one weight each).
    """

    low: float  # intensity mapped to 0
    high: float  # intensity mapped to 255
    channel: int | None = None  # index into the last axis of a multichannel image
    channel_weights: tuple[float, ...] | None = None  # mix of all channels into grey

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise InvalidInputError(
                f"A Normalization needs finite low < high; got low={self.low}, high={self.high}."
            )

    def select_channels(self, image: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, C) -> (H, W) grey or (H, W, 3) RGB, values unchanged."""
        return select_channels(image, self.channel, self.channel_weights)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Map an image to SAM's input.

        Parameters
        ----------
        image : numpy.ndarray, shape (H, W) or (H, W, C), any real dtype

        Returns
        -------
        numpy.ndarray, shape (H, W, 3), uint8
        """
        data = self.select_channels(image)
        if data.dtype == np.uint8 and (self.low, self.high) == (0.0, 255.0):
            scaled = data
        else:
            span = self.high - self.low
            scaled = np.clip((data.astype(np.float64) - self.low) / span, 0.0, 1.0)
            scaled = np.rint(scaled * 255.0).astype(np.uint8)
        if scaled.ndim == 2:
            scaled = np.repeat(scaled[..., None], 3, axis=2)
        return np.ascontiguousarray(scaled)


def select_channels(
    image: np.ndarray,
    channel: int | None = None,
    channel_weights: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Reduce an image to grey (H, W) or RGB (H, W, 3), checking shape and values.

    Raises
    ------
    InvalidInputError
        Wrong number of dimensions, empty, non-numeric, NaN or infinite values, or a
        multichannel image without a channel choice.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InvalidInputError(
            f"Expected a 2D image (rows, cols) or (rows, cols, channels); got shape "
            f"{image.shape}. For stacks, pass one slice (e.g. volume[z])."
        )
    if image.size == 0 or min(image.shape[:2]) < 2:
        raise InvalidInputError(f"The image is empty or degenerate (shape {image.shape}).")
    if image.dtype != bool and not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise InvalidInputError(
            f"Expected real-valued pixels (integer, float or bool); got dtype {image.dtype}. "
            "For complex data pass np.abs(image) or image.real."
        )
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise InvalidInputError(
            "The image contains NaN or infinite values: replace them first, e.g. "
            "np.nan_to_num(image, nan=np.nanmin(image))."
        )
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channel_weights is not None:
        if len(channel_weights) != channels:
            raise InvalidInputError(
                f"channel_weights has {len(channel_weights)} weights for {channels} channels."
            )
        weights = np.asarray(channel_weights, dtype=np.float64)
        return image.astype(np.float64) @ weights
    if channel is not None:
        if not -channels <= channel < channels:
            raise InvalidInputError(
                f"channel {channel} does not exist: the image has {channels} channels "
                f"(0 to {channels - 1}, or negative from the last)."
            )
        return image[..., channel]
    if channels == 1:
        return image[..., 0]
    if channels == 3:
        return image
    raise InvalidInputError(
        f"The image has {channels} channels (last axis of shape {image.shape}); choose one "
        "with channel=INDEX. Only 3 channels are taken as RGB. Or mix them into grey with "
        "channel_weights=(w0, w1, ...), one weight per channel."
    )


def compute_normalization(
    image,
    percentiles: tuple[float, float] | None = None,
    channel: int | None = None,
    channel_weights: tuple[float, ...] | None = None,
) -> Normalization:
    """Compute the intensity mapping of an image (or a representative sample of a volume).

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, C)
        numpy, or a lazy array (dask, zarr, a plane view): a plane of more than
        :data:`LARGE_PLANE_PIXELS` pixels is read in :data:`SAMPLE_WINDOWS` windows of
        :data:`SAMPLE_PIXELS` pixels in all (see :func:`sample_plane`), never whole.
    percentiles : (float, float), optional
        Percentiles mapped to 0 and 255. Default: uint8 images are kept as they are
        (0 -> 0, 255 -> 255); other dtypes use (0.5, 99.5).
    channel, channel_weights
        Channel choice for images whose channel count is not 1 or 3.

    Returns
    -------
    Normalization

    Raises
    ------
    InvalidInputError
        Bad shape or values (see :func:`select_channels`), or a constant image: every
        pixel of the chosen channels the same, for every dtype (uint8 and bool included).
    """
    shape = tuple(np.shape(image))
    data = select_channels(sample_plane(image), channel, channel_weights)
    constant = constant_value(data)
    if constant is not None:
        raise InvalidInputError(_constant_message(constant, shape, data.shape))
    if percentiles is None and data.dtype == np.uint8:
        return Normalization(0.0, 255.0, channel, channel_weights)
    low_q, high_q = percentiles or DEFAULT_PERCENTILES
    if not 0 <= low_q < high_q <= 100:
        raise InvalidInputError(
            f"percentiles must satisfy 0 <= low < high <= 100; got {percentiles}."
        )
    flat = data.reshape(-1)
    if flat.size > SAMPLE_PIXELS:
        flat = flat[:: flat.size // SAMPLE_PIXELS]
    low, high = np.percentile(flat.astype(np.float64), [low_q, high_q])
    if not high > low:  # mostly one value: use the range, never constant (checked above)
        low, high = float(data.min()), float(data.max())
    return Normalization(float(low), float(high), channel, channel_weights)


def constant_value(data: np.ndarray) -> tuple[float, ...] | None:
    """The value of every pixel, one per channel, if ``data`` is constant; else None.

    Parameters
    ----------
    data : numpy.ndarray, shape (H, W) or (H, W, C), any real dtype or bool
        Constant means every channel constant over (H, W), even with different values.
    """
    first = data[0, 0]
    if (data[:8] != first).any():  # cheap: most images vary within their first rows
        return None
    low, high = data.min(axis=(0, 1)), data.max(axis=(0, 1))
    if np.any(low != high):
        return None
    return tuple(float(v) for v in np.atleast_1d(low))


def format_pixel(value: tuple[float, ...]) -> str:
    """A pixel value for a message: ``7`` for grey, ``(10, 20, 30)`` for channels."""
    shown = [f"{v:g}" for v in value]
    return shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")"


def _constant_message(
    value: tuple[float, ...], shape: tuple[int, ...], sampled: tuple[int, ...]
) -> str:
    shown = format_pixel(value)
    if not is_large_plane(shape):
        return (
            f"The image is constant (every pixel is {shown}): there is nothing to segment. "
            "If it is one part of larger data, compute the normalization from the whole "
            "data and pass it."
        )
    windows = len(window_grid((shape[0], shape[1]), SAMPLE_PIXELS, SAMPLE_WINDOWS))
    return (
        f"The image is constant in the {sampled[0] * sampled[1]:,} pixels sampled from "
        f"{windows} windows spread over its {shape[0]} x {shape[1]} pixels (every "
        f"sampled pixel is {shown}): there is nothing to segment there. If the data lies "
        "elsewhere, crop to it or pass Normalization(low, high) explicitly."
    )


def is_large_plane(shape: tuple[int, ...]) -> bool:
    """True when an image of ``shape`` (rows, cols[, channels]) is sampled in windows."""
    return len(shape) in (2, 3) and shape[0] * shape[1] > LARGE_PLANE_PIXELS


def sample_plane(image, pixels: int = SAMPLE_PIXELS, windows: int = SAMPLE_WINDOWS) -> np.ndarray:
    """An image as numpy, or for a large plane, windows of it stacked into one tall image.

    A plane of at most :data:`LARGE_PLANE_PIXELS` pixels is returned whole. A larger one
    is read only in about ``windows`` windows of ``pixels`` pixels in all, one window
    per cell of an even grid over the plane (centred in its cell), so a lazy array
    computes or decompresses only the chunks under them.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, C)
        Anything indexable by ``image[rows, cols]`` with a ``shape``.
    pixels : int
        Pixels read from a large plane, about.
    windows : int
        Number of windows, at most.

    Returns
    -------
    numpy.ndarray, shape (H, W[, C]) or (k * h, w[, C])
        The image, or its k windows of h x w pixels stacked along the rows.
    """
    shape = tuple(np.shape(image))
    if not is_large_plane(shape):
        return np.asarray(image)
    grid = window_grid((shape[0], shape[1]), pixels, windows)
    return np.concatenate([np.asarray(image[rows, cols]) for rows, cols in grid], axis=0)


def window_grid(shape: tuple[int, int], pixels: int, windows: int) -> list[tuple[slice, slice]]:
    """(rows, cols) slices of at most ``windows`` equal windows, ``pixels`` in all, spread
    evenly over a plane of ``shape``: one centred in each cell of a grid."""
    side = max(1, int(np.sqrt(pixels / windows)))
    height, width = min(side, shape[0]), min(side, shape[1])
    across = int(np.sqrt(windows))
    down = min(shape[0] // height, across)
    across = min(shape[1] // width, windows // down)
    down = min(shape[0] // height, windows // across)
    rows = _window_starts(shape[0], height, down)
    cols = _window_starts(shape[1], width, across)
    return [(slice(r, r + height), slice(c, c + width)) for r in rows for c in cols]


def _window_starts(length: int, size: int, count: int) -> list[int]:
    centres = (np.arange(count) + 0.5) * length / count
    return [int(min(max(0, round(c - size / 2)), length - size)) for c in centres]


def resized_shape(shape: tuple[int, int], longest: int) -> tuple[int, int]:
    """(rows, cols) after scaling the longest side to ``longest``, rounded."""
    scale = longest / max(shape)
    # At least one pixel: a 2 x 5000 strip would otherwise round to zero rows.
    return max(1, int(shape[0] * scale + 0.5)), max(1, int(shape[1] * scale + 0.5))


def resize_longest_side(rgb: np.ndarray, longest: int) -> np.ndarray:
    """Bilinear resize of (H, W, 3) uint8 so the longest side is ``longest`` pixels."""
    rows, cols = resized_shape(rgb.shape[:2], longest)
    if (rows, cols) == rgb.shape[:2]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((cols, rows), Image.Resampling.BILINEAR))
