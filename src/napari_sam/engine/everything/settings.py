"""The settings of segment-everything, apart from the code that runs it.

Kept free of torch so that the command line and the widgets can read the defaults (and
check a user's values) before any model code loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from napari_sam.errors import InvalidInputError

# Settings of earlier releases that no longer exist; dropped when read back.
# skip_margin: the embedding-similarity background rule, replaced by stop_after_empty.
RETIRED = frozenset({"skip_margin"})


@dataclass(frozen=True)
class EverythingSettings:
    """Settings of segment-everything; defaults chosen on the DSB2018 nuclei
    (docs/everything.md).
    """

    points_per_side: int = 32  # grid points along each side of the plane, tile or crop
    points_per_batch: int = 32  # prompts per decoder call; coverage is updated between calls
    pred_iou_thresh: float = 0.88  # keep masks whose predicted IoU is at least this
    stability_score_thresh: float = 0.95  # ... and whose stability score is at least this
    stability_offset: float = 1.0  # logit offset of the stability score
    box_nms_thresh: float = 0.7  # drop a mask whose box overlaps a better one's by more
    min_area: int = 0  # drop masks smaller than this many pixels
    max_area_fraction: float = 0.95  # drop masks covering more of their window than this
    drop_background: bool = True  # drop large masks touching three window edges (background)
    background_fraction: float = 0.2  # "large" for drop_background, as a fraction of the window
    min_region_area: int = 0  # remove islands and fill holes smaller than this (pixels)
    skip_covered: bool = True  # do not prompt grid points inside confident masks
    skip_distance: float = 2.0  # ... nor within this many pixels of one (needs skip_covered)
    stop_after_empty: int | None = 64  # after the coarse warm-up, decode the points this
    # image's own classifier ranks most likely to find an object first, and stop once this
    # many in a row found none (None: decode every point that coverage does not skip)
    crop_layers: int = 0  # zoomed crop layers (each re-encodes 4^k crops)
    crop_overlap_ratio: float = 512 / 1500  # overlap of neighbouring crops
    crop_points_downscale: int = 1  # grid of crop layer k is points_per_side / this^k
    keep_iou_floor: float = 0.5  # initialise keeps candidates above these floors only, so
    keep_stability_floor: float = 0.5  # ... generate cannot go below them

    def __post_init__(self) -> None:
        checks = {
            "points_per_side": self.points_per_side >= 1,
            "points_per_batch": self.points_per_batch >= 1,
            "pred_iou_thresh": 0 <= self.pred_iou_thresh <= 1.5,
            "stability_score_thresh": 0 <= self.stability_score_thresh <= 1,
            "stability_offset": self.stability_offset >= 0,
            "box_nms_thresh": 0 < self.box_nms_thresh <= 1,
            "min_area": self.min_area >= 0,
            "max_area_fraction": 0 < self.max_area_fraction <= 1,
            "background_fraction": 0 < self.background_fraction <= 1,
            "min_region_area": self.min_region_area >= 0,
            "skip_distance": self.skip_distance >= 0,
            "stop_after_empty": self.stop_after_empty is None or self.stop_after_empty >= 1,
            "crop_layers": self.crop_layers >= 0,
            "crop_overlap_ratio": 0 <= self.crop_overlap_ratio < 1,
            "crop_points_downscale": self.crop_points_downscale >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidInputError(
                f"Invalid segment-everything settings: {values} (see EverythingSettings)."
            )

    def every_point(self) -> EverythingSettings:
        """These settings with no grid point skipped (maximum recall, 5-8x the decoding)."""
        return replace(self, skip_covered=False, stop_after_empty=None, skip_distance=0.0)

    def to_dict(self) -> dict:
        """Plain values, e.g. for zarr attributes or a JSON record."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EverythingSettings:
        """The inverse of :meth:`to_dict`; unknown keys raise InvalidInputError."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k not in RETIRED}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(
                f"Unknown segment-everything settings {unknown}; known: {sorted(known)}."
            )
        return cls(**values)
