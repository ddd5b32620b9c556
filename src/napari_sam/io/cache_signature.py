"""What an embedding depends on: the signature of an embedding cache (format version 2).

Two caches are interchangeable iff their :class:`CacheSignature` is equal: the data's
shape and dtype, a content fingerprint from a few sampled planes (never the whole
volume, :func:`data_fingerprint`), the model and its weights, the intensity
normalisation, tile, halo, upscale factor, feature dtype and the encoder's precision
(caches written before precision was recorded read as fp32, which they are). The package
version is not
part of it (format version 1 held it; :meth:`CacheSignature.from_dict` drops it), so a
new release reuses the caches of the last. See :mod:`napari_sam.io.embedding_cache`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from napari_sam.engine.model.precision import BF16, FP32
from napari_sam.engine.prediction.planes import PlaneLayout, PlaneView, read_plane
from napari_sam.engine.prediction.preprocess import LARGE_PLANE_PIXELS, Normalization, sample_plane
from napari_sam.engine.tiling.grid import check_upscale, tile_grid
from napari_sam.errors import InvalidInputError
from napari_sam.io.stores import EMBEDDING_CACHE

FORMAT = EMBEDDING_CACHE.format
VERSION = 2  # 1: the signature also held the package version
FINGERPRINT_PLANES = 3  # first, middle and last plane


@dataclass(frozen=True)
class CacheSignature:
    """Everything an embedding depends on; two caches are interchangeable iff equal."""

    data_shape: tuple[int, ...]
    data_dtype: str
    channel_axis: bool
    fingerprint: str  # sha256 over sampled planes, see data_fingerprint
    model_id: str  # registry name @ weights sha256 prefix
    normalization: tuple  # (low, high, channel, channel_weights)
    tile: int | None  # tile side in pixels, None for whole planes
    halo: int  # overlap between tiles in pixels
    feature_dtype: str  # "float32" or "float16"
    upscale: float = 1.0  # encoder pixels per plane pixel, at least (caches before tiles: 1)
    precision: str = "fp32"  # the encoder's arithmetic, "fp32" or "bf16" (caches before: fp32)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, payload: dict) -> CacheSignature:
        """Inverse of :meth:`to_dict`; version 1's ``package_version`` is dropped."""
        skip = ("format", "version", "package_version")
        fields = {k: v for k, v in payload.items() if k not in skip}
        fields.setdefault("upscale", 1.0)  # caches written before tiles were stored
        fields.setdefault("precision", "fp32")  # caches written before bf16 was offered
        fields["data_shape"] = tuple(fields["data_shape"])
        norm = list(fields["normalization"])
        norm[3] = None if norm[3] is None else tuple(norm[3])
        fields["normalization"] = tuple(norm)
        return cls(**fields)

    def differences(self, other: CacheSignature) -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{k}: cache has {theirs[k]!r}, expected {mine[k]!r}"
            for k in mine
            if mine[k] != theirs[k]
        ]


def data_fingerprint(data, layout: PlaneLayout, planes: int = FINGERPRINT_PLANES) -> str:
    """sha256 of the shape, dtype and a sample of a few planes' pixels.

    The sample of a plane is every 7th pixel of every 7th row; a plane larger than
    :data:`~napari_sam.engine.prediction.preprocess.LARGE_PLANE_PIXELS` is sampled in
    windows (:func:`~napari_sam.engine.prediction.preprocess.sample_plane`) instead, so
    that a lazy 200000 x 200000 plane is never read whole.
    """
    digest = hashlib.sha256(json.dumps([list(layout.shape), str(np.dtype(data.dtype))]).encode())
    count = int(np.prod(layout.stack_shape)) if layout.stack_ndim else 1
    for flat in np.unique(np.linspace(0, count - 1, min(planes, count)).round().astype(int)):
        key = (
            tuple(int(i) for i in np.unravel_index(flat, layout.stack_shape))
            if layout.stack_ndim
            else ()
        )
        rows, cols = layout.plane_shape
        if rows * cols > LARGE_PLANE_PIXELS:  # never read whole: the same windows as the
            sample = sample_plane(PlaneView(data, layout, key))  # normalisation reads
        else:
            sample = read_plane(data, layout, key)[::7, ::7]
        digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.hexdigest()


def cache_signature(
    data,
    layout: PlaneLayout,
    model_id: str,
    normalization: Normalization,
    feature_dtype: str = "float32",
    tile: int | None = None,
    halo: int = 0,
    upscale: float = 1.0,
    precision: str = "fp32",
) -> CacheSignature:
    """The signature a cache for this data and these settings must carry.

    ``tile`` None (whole planes) or the interior side in pixels, with ``halo`` and
    ``upscale`` as resolved by :func:`~napari_sam.engine.tiling.grid.resolve_tiling`;
    ``precision`` the encoder's, resolved (``Predictor.precision``: fp32 or bf16).

    Raises
    ------
    InvalidInputError
        A bad tile or halo, ``feature_dtype`` other than float32 or float16, or
        ``precision`` other than fp32 or bf16.
    """
    if tile is not None:
        tile_grid(layout.plane_shape, tile, halo)  # validates tile and halo
    if feature_dtype not in ("float32", "float16"):
        raise InvalidInputError(
            f"feature_dtype must be 'float32' or 'float16'; got {feature_dtype!r}."
        )
    if precision not in (FP32, BF16):
        raise InvalidInputError(
            f"A cache records the precision the encoder ran in, 'fp32' or 'bf16'; got "
            f"{precision!r} (resolve 'auto' first, e.g. with Predictor(...).precision)."
        )
    n = normalization
    return CacheSignature(
        data_shape=tuple(layout.shape),
        data_dtype=str(np.dtype(data.dtype)),
        channel_axis=layout.channel_axis,
        fingerprint=data_fingerprint(data, layout),
        model_id=model_id,
        normalization=(n.low, n.high, n.channel, n.channel_weights),
        tile=None if tile is None else int(tile),
        halo=int(halo),
        feature_dtype=feature_dtype,
        upscale=check_upscale(upscale),
        precision=precision,
    )
