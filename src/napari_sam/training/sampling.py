"""From labelled images to what one training step needs: pixels, objects and targets.

:func:`prepare_image` applies the image's normalisation, the optional random crop and
flips, and SAM's resize of the longest side; :func:`sample_objects` draws the objects of
one step and builds their targets in the frame of SAM's low-resolution (256 x 256)
logits, where the loss is computed (one logit covers 4 x 4 encoder-input pixels), and
their exact boxes in the encoder's (x, y) frame for the prompt simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_sam.engine.prediction.preprocess import resize_longest_side
from napari_sam.engine.prediction.prompts import LOW_RES, to_encoder_xy
from napari_sam.errors import InvalidInputError
from napari_sam.training.datasets import LabelledImage

CROP_TRIES = 8  # random crops tried before accepting one without objects


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One (possibly cropped and flipped) image ready for the encoder."""

    source: LabelledImage  # where it came from
    pixels: torch.Tensor  # (1, 3, h, w) float32 0..255 RGB, longest side = input size
    labels: np.ndarray  # (rows, cols) int64, cropped and flipped like the pixels
    object_ids: np.ndarray  # (N,) ids with at least min_area pixels
    augmented: bool  # True when cropped or flipped (its embedding is not cacheable)

    @property
    def original_size(self) -> tuple[int, int]:
        """(rows, cols) of the image before resizing."""
        return self.labels.shape

    @property
    def input_size(self) -> tuple[int, int]:
        """(h, w) of the resized image inside the encoder frame."""
        return tuple(self.pixels.shape[-2:])

    @property
    def low_res_size(self) -> tuple[int, int]:
        """(rows, cols) of the low-resolution logits covered by the image."""
        h, w = self.input_size
        return max(1, round(h / 4)), max(1, round(w / 4))


@dataclass(frozen=True, eq=False)
class ObjectBatch:
    """The objects of one step."""

    ids: np.ndarray  # (B,) label ids
    targets: torch.Tensor  # (B, 1, 256, 256) float32 0/1 in the low-res logit frame
    boxes: torch.Tensor  # (B, 4) float32 exact boxes (x0, y0, x1, y1), encoder pixels
    valid: torch.Tensor  # (256, 256) bool, the low-res pixels inside the image

    def __len__(self) -> int:
        return len(self.ids)


def prepare_image(
    image: LabelledImage,
    input_size: int,
    rng: np.random.Generator,
    crop_size: int | None = None,
    flips: bool = False,
    min_area: int = 20,
) -> PreparedImage:
    """Normalise, optionally crop and flip, and resize one labelled image.

    Parameters
    ----------
    image : LabelledImage
    input_size : int
        The encoder's input side (1024 for SAM and MobileSAM).
    rng : numpy.random.Generator
    crop_size : int, optional
        Side of a random square crop (images smaller than it are kept whole).
    flips : bool
        Random horizontal and vertical flips.
    min_area : int
        Objects with fewer pixels (after cropping) are never sampled.
    """
    rgb, labels = image.normalization.apply(image.image), image.labels
    augmented = False
    if crop_size is not None and max(labels.shape) > crop_size:
        rgb, labels = _random_crop(rgb, labels, crop_size, rng)
        augmented = True
    if flips:
        for axis in (0, 1):
            if rng.random() < 0.5:
                rgb, labels = np.flip(rgb, axis), np.flip(labels, axis)
                augmented = True
    rgb, labels = np.ascontiguousarray(rgb), np.ascontiguousarray(labels)
    resized = resize_longest_side(rgb, input_size)
    pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float()
    ids, counts = np.unique(labels, return_counts=True)
    keep = (ids != 0) & (counts >= min_area)
    return PreparedImage(image, pixels, labels, ids[keep].astype(np.int64), augmented)


def _random_crop(rgb: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    rows, cols = labels.shape
    for _ in range(CROP_TRIES):
        r = int(rng.integers(0, max(rows - size, 0) + 1))
        c = int(rng.integers(0, max(cols - size, 0) + 1))
        window = (slice(r, r + size), slice(c, c + size))
        if labels[window].any():
            break
    return rgb[window], labels[window]


def sample_objects(
    prepared: PreparedImage, count: int, rng: np.random.Generator
) -> ObjectBatch | None:
    """Draw up to ``count`` objects (without replacement) and build their targets.

    Returns
    -------
    ObjectBatch or None
        None when the image has no usable object (all too small, or cropped away).
    """
    if count < 1:
        raise InvalidInputError(f"objects per step must be at least 1; got {count}.")
    ids = prepared.object_ids
    if len(ids) > count:
        ids = np.sort(rng.choice(ids, size=count, replace=False))
    targets = low_res_targets(prepared, ids)
    usable = targets.flatten(1).any(dim=1).numpy()  # tiny objects can vanish at 1/4 scale
    if not usable.any():
        return None
    ids, targets = ids[usable], targets[torch.from_numpy(usable)]
    rows, cols = prepared.low_res_size
    valid = torch.zeros((LOW_RES, LOW_RES), dtype=torch.bool)
    valid[:rows, :cols] = True
    return ObjectBatch(ids, targets, exact_boxes(prepared, ids), valid)


def low_res_targets(prepared: PreparedImage, ids: np.ndarray) -> torch.Tensor:
    """(B, 1, 256, 256) float32 0/1 masks of ``ids`` in the low-res logit frame."""
    masks = torch.from_numpy(prepared.labels[None] == ids[:, None, None])[:, None].float()
    rows, cols = prepared.low_res_size
    shrinking = rows < masks.shape[-2]
    scaled = F.interpolate(
        masks,
        size=(rows, cols),
        mode="area" if shrinking else "bilinear",
        **({} if shrinking else {"align_corners": False}),
    )
    targets = torch.zeros((len(ids), 1, LOW_RES, LOW_RES))
    targets[:, :, :rows, :cols] = (scaled >= 0.5).float()
    return targets


def exact_boxes(prepared: PreparedImage, ids: np.ndarray) -> torch.Tensor:
    """(B, 4) float32 tight boxes (x0, y0, x1, y1) of ``ids`` in encoder-input pixels."""
    slices = ndimage.find_objects(prepared.labels, max_label=int(ids.max()))
    corners = np.array(
        [
            [s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1]
            for s in (slices[i - 1] for i in ids)
        ],
        dtype=np.float64,
    )
    xy = to_encoder_xy(corners.reshape(-1, 2, 2), prepared.original_size, prepared.input_size)
    return torch.from_numpy(xy.reshape(-1, 4)).float()
