"""From an instance head's maps to seeds, watershed instances and one prompt per object.

A *seed* is a connected region where the head is sure it sits at an object's core: the
foreground is likely, the centre distance is small and the boundary distance large. Two
touching nuclei have two cores even where their foreground merges, so seeds separate them.
*Instances* grow the seeds over the foreground by a watershed on the boundary distance
(Beucher and Meyer 1993), the way micro-sam's AIS mode cuts instances from its decoder.
The *prompt* of a seed is its pixel deepest inside the object, where SAM's point prompt is
least ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.segmentation import watershed

from napari_sam.engine.instances.head import InstanceHead
from napari_sam.engine.prediction.results import Embedding
from napari_sam.errors import InvalidInputError


@dataclass(frozen=True)
class SeedSettings:
    """Thresholds on the head's maps (all in [0, 1])."""

    foreground: float = 0.5  # foreground probability an instance pixel needs
    centre: float = 0.5  # a seed pixel's centre distance is below this ...
    boundary: float = 0.5  # ... and its boundary distance above this
    min_seed_area: int = 4  # smaller seeds are noise (window pixels)
    min_area: int = 10  # smaller watershed instances are dropped (window pixels)

    def __post_init__(self) -> None:
        bad = [
            name
            for name in ("foreground", "centre", "boundary")
            if not 0 <= getattr(self, name) <= 1
        ] + [name for name in ("min_seed_area", "min_area") if getattr(self, name) < 0]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidInputError(f"Invalid seed settings: {values} (see SeedSettings).")


@dataclass(frozen=True, eq=False)
class HeadMaps:
    """The head's output for one window, at the window's pixels."""

    foreground: np.ndarray  # (rows, cols) float32 probability
    centre: np.ndarray  # (rows, cols) float32, 0 at an object's centre, 1 at its rim
    boundary: np.ndarray  # (rows, cols) float32, 1 at an object's centre, 0 at its rim


def predict_maps(
    network: InstanceHead, embedding: Embedding, frame: int, shape: tuple[int, int] | None = None
) -> HeadMaps:
    """Run the head on an embedding and bring its maps to window pixels.

    Parameters
    ----------
    network : InstanceHead
    embedding : Embedding
    frame : int
        The encoder's input side (1024).
    shape : (rows, cols), optional
        Window shape if it differs from ``embedding.original_size`` (an upscaled crop).
    """
    device = next(network.parameters()).device
    with torch.inference_mode():
        out = network(embedding.features.to(device=device, dtype=torch.float32))[0]
        low = out.shape[-1]
        rows, cols = (int(np.ceil(s * low / frame)) for s in embedding.input_size)
        valid = out[:, :rows, :cols]
        # Up to the resized image in the encoder frame, then to the window (as for masks).
        size = shape or tuple(int(s) for s in embedding.original_size)
        upsampled = F.interpolate(valid[None], size=size, mode="bilinear", align_corners=False)
        maps = torch.sigmoid(upsampled[0]).cpu().numpy()
    return HeadMaps(maps[0], maps[1], maps[2])


def find_seeds(maps: HeadMaps, settings: SeedSettings) -> np.ndarray:
    """Label the object cores.

    Returns
    -------
    numpy.ndarray, shape (rows, cols) int32
        0 outside seeds, 1..S one id per seed.
    """
    core = (
        (maps.foreground >= settings.foreground)
        & (maps.centre <= settings.centre)
        & (maps.boundary >= settings.boundary)
    )
    seeds, count = ndimage.label(core, structure=np.ones((3, 3), bool))
    if count and settings.min_seed_area > 1:
        areas = np.bincount(seeds.ravel(), minlength=count + 1)
        small = areas < settings.min_seed_area
        small[0] = False
        seeds[small[seeds]] = 0
        seeds = renumber(seeds)
    return seeds.astype(np.int32)


def grow_instances(maps: HeadMaps, seeds: np.ndarray, settings: SeedSettings) -> np.ndarray:
    """Seeded watershed of the inverted boundary distance inside the foreground.

    Returns
    -------
    numpy.ndarray, shape (rows, cols) int32
        0 background, 1..n instances (seeds without foreground around them are dropped).
    """
    if not seeds.any():
        return np.zeros(seeds.shape, np.int32)
    mask = (maps.foreground >= settings.foreground) | (seeds > 0)
    labels = watershed(-maps.boundary, markers=seeds, mask=mask).astype(np.int32)
    if settings.min_area > 0:
        areas = np.bincount(labels.ravel())
        small = areas < settings.min_area
        small[0] = False
        labels[small[labels]] = 0
    return renumber(labels)


def seed_points(maps: HeadMaps, seeds: np.ndarray) -> np.ndarray:
    """The deepest pixel of each seed (largest boundary distance).

    Returns
    -------
    numpy.ndarray, shape (S, 2) float64
        (row, col) window pixels, in seed-id order.
    """
    count = int(seeds.max(initial=0))
    if count == 0:
        return np.zeros((0, 2))
    ids = np.arange(1, count + 1)
    deepest = ndimage.maximum_position(maps.boundary, seeds, ids)
    return np.array(deepest, dtype=np.float64).reshape(-1, 2)


def renumber(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in order of the ids present; (rows, cols) int32."""
    present = np.unique(labels)
    present = present[present > 0]
    table = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    table[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return table[labels]
