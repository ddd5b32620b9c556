"""From any 2D microscopy image to the uint8 RGB input SAM was trained on.

A :class:`Normalization` is computed once from the data (robust percentiles, so a few
hot pixels do not wash out the image) and then applied unchanged to every tile and slice
of the same data: per-tile normalisation makes seams. Grey images are copied to three
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
            raise InvalidInputError(f"channel {channel} does not exist: the image has {channels}.")
        return image[..., channel]
    if channels == 1:
        return image[..., 0]
    if channels == 3:
        return image
    raise InvalidInputError(
        f"The image has {channels} channels (last axis of shape {image.shape}); choose one "
        "with channel=INDEX or mix them with channel_weights=(...). Only 3 channels are "
        "taken as RGB."
    )


def compute_normalization(
    image: np.ndarray,
    percentiles: tuple[float, float] | None = None,
    channel: int | None = None,
    channel_weights: tuple[float, ...] | None = None,
) -> Normalization:
    """Compute the intensity mapping of an image (or a representative sample of a volume).

    Parameters
    ----------
    image : numpy.ndarray, shape (H, W) or (H, W, C)
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
        Bad shape or values (see :func:`select_channels`), or a constant image.
    """
    data = select_channels(image, channel, channel_weights)
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
    if not high > low:
        low, high = float(flat.min()), float(flat.max())
    if not high > low:
        raise InvalidInputError(
            f"The image is constant (every pixel is {low:g}): there is nothing to segment."
        )
    return Normalization(float(low), float(high), channel, channel_weights)


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
