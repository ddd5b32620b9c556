"""A persistent, verified store of image embeddings: one zarr v3 group per volume.

The encoder is the expensive step (about a second per 1024x1024 input on a CPU), so each
plane, or each tile of a large plane, is encoded once and kept on disk. Layout of
``NAME.zarr`` (``*stack`` are the plane-selecting axes, e.g. (z,) or (t, z); ``grid`` is
(tile rows, tile cols) of :func:`~napari_sam.engine.tiling.grid.tile_grid`, present only when
the signature has a tile size):

``features``  (*stack, [*grid,] 256, 64, 64), float32 or float16, one chunk per plane or tile
``input_size``  (*stack, [*grid,] 2) int32, the resized (rows, cols) inside the encoder frame
``checksum``  (*stack, [*grid]) uint32, crc32 of each plane's or tile's feature bytes
``complete``  (*stack, [*grid]) uint8, 1 once the features and checksum are written

The group's ``napari_sam`` attribute is the :class:`CacheSignature`: data shape and dtype,
a content fingerprint from a few sampled planes (never the whole volume), the model and
its weights, the intensity normalisation, tile, halo and upscale factor, feature dtype and
package version. A tile's window (and so its embedding's original size) follows from the
plane shape, tile and halo. Opening a cache with another signature raises
:class:`~napari_sam.errors.CacheMismatchError` (or starts afresh when asked). Chunks are
written atomically by zarr's local store; a plane or tile counts only once its
``complete`` flag is set after its data and checksum, and one whose checksum no longer
matches (a damaged or deleted chunk) is treated as missing, so an interrupted or
corrupted run resumes by recomputing exactly what is missing. See docs/large_data.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.prediction.planes import PlaneLayout, read_plane
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.engine.prediction.results import Embedding
from napari_sam.engine.tiling.grid import check_upscale, tile_grid
from napari_sam.errors import CacheMismatchError, InvalidInputError

FORMAT = "napari-sam embedding cache"
VERSION = 1
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
    package_version: str
    upscale: float = 1.0  # encoder pixels per plane pixel, at least (caches before tiles: 1)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, payload: dict) -> CacheSignature:
        fields = {k: v for k, v in payload.items() if k not in ("format", "version")}
        fields.setdefault("upscale", 1.0)  # caches written before tiles were stored
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
    """sha256 of the shape, dtype and a strided sample of a few planes' pixels."""
    digest = hashlib.sha256(json.dumps([list(layout.shape), str(np.dtype(data.dtype))]).encode())
    count = int(np.prod(layout.stack_shape)) if layout.stack_ndim else 1
    for flat in np.unique(np.linspace(0, count - 1, min(planes, count)).round().astype(int)):
        key = (
            tuple(int(i) for i in np.unravel_index(flat, layout.stack_shape))
            if layout.stack_ndim
            else ()
        )
        plane = read_plane(data, layout, key)
        digest.update(np.ascontiguousarray(plane[::7, ::7]).tobytes())
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
) -> CacheSignature:
    """The signature a cache for this data and these settings must carry.

    ``tile`` None (whole planes) or the interior side in pixels, with ``halo`` and
    ``upscale`` as resolved by :func:`~napari_sam.engine.tiling.grid.resolve_tiling`.
    """
    from napari_sam import __version__

    if tile is not None:
        tile_grid(layout.plane_shape, tile, halo)  # validates tile and halo
    if feature_dtype not in ("float32", "float16"):
        raise InvalidInputError(
            f"feature_dtype must be 'float32' or 'float16'; got {feature_dtype!r}."
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
        package_version=__version__,
        upscale=check_upscale(upscale),
    )


class EmbeddingCache:
    """Plane (or tile) embeddings on disk.

    Untiled, it is an :class:`~napari_sam.engine.annotation.embedding_store.EmbeddingBackend` keyed
    by plane; tiled, ``load``/``save`` take the tile's (row, col) grid index too and
    :meth:`tiles` gives one plane's tiles as a backend for
    :class:`~napari_sam.engine.tiling.prompting.TiledPlane`.
    """

    def __init__(self, group, signature: CacheSignature, layout: PlaneLayout) -> None:
        self.group = group
        self.signature = signature
        self.layout = layout
        self.normalization = Normalization(*signature.normalization)
        self.grid = None  # list of Tile when tiled
        if signature.tile is not None:
            self.grid = tile_grid(layout.plane_shape, signature.tile, signature.halo)
        self.grid_shape = (
            () if self.grid is None else tuple(int(i) + 1 for i in self.grid[-1].index)
        )

    @classmethod
    def open(
        cls,
        path: str | Path,
        signature: CacheSignature,
        layout: PlaneLayout,
        overwrite: bool = False,
    ) -> EmbeddingCache:
        """Open (or create) the cache at ``path`` for data with ``signature``.

        Raises
        ------
        CacheMismatchError
            ``path`` holds a cache for other data or settings and ``overwrite`` is False;
            the message lists each difference.
        """
        import zarr

        path = Path(path)
        if path.exists():
            existing = _read_signature(path)
            if existing is None and not overwrite:
                raise CacheMismatchError(
                    f"{path} exists but is not a napari-sam embedding cache: choose another path "
                    "or pass overwrite=True (--overwrite) to replace it."
                )
            if existing is not None and existing != signature:
                if not overwrite:
                    raise CacheMismatchError(
                        f"The embedding cache {path} was made for other data or settings:\n  - "
                        + "\n  - ".join(signature.differences(existing))
                        + "\nUse another cache path, the cache's own settings (e.g. --tile/--halo/"
                        "--upscale), or overwrite=True (--overwrite) to start afresh."
                    )
                shutil.rmtree(path)
            elif existing is not None:
                return cls(zarr.open_group(path, mode="r+"), signature, layout)
            else:
                shutil.rmtree(path)
        cache = cls(zarr.open_group(path, mode="w"), signature, layout)
        cache._create_arrays()
        cache.group.attrs["napari_sam"] = (
            signature.to_dict()
        )  # last: a half-made cache has no signature
        return cache

    def _create_arrays(self) -> None:
        units = self.layout.stack_shape + self.grid_shape  # one chunk per plane or tile
        ones = (1,) * len(units)
        dtype = self.signature.feature_dtype
        self.group.create_array(
            "features",
            shape=units + (256, 64, 64),
            chunks=ones + (256, 64, 64),
            dtype=dtype,
            fill_value=0,
        )
        self.group.create_array(
            "input_size", shape=units + (2,), chunks=ones + (2,), dtype="int32", fill_value=0
        )
        for name, kind in (("checksum", "uint32"), ("complete", "uint8")):
            self.group.create_array(
                name, shape=units or (1,), chunks=ones or (1,), dtype=kind, fill_value=0
            )

    @property
    def tiled(self) -> bool:
        """True when features are stored per tile."""
        return self.grid is not None

    def _index(self, key: tuple[int, ...], tile: tuple[int, int] | None) -> tuple[int, ...]:
        """Index of one plane or tile in the checksum and completion arrays."""
        if self.tiled != (tile is not None):
            raise InvalidInputError(
                f"This cache stores {'tiles' if self.tiled else 'whole planes'}: "
                + (
                    "give the tile's (row, col) grid index."
                    if self.tiled
                    else "give no tile index."
                )
            )
        if tile is not None and not all(0 <= t < n for t, n in zip(tile, self.grid_shape)):
            raise InvalidInputError(
                f"Tile {tuple(tile)} is outside the cache's {self.grid_shape} grid."
            )
        index = tuple(key) + (tuple(int(t) for t in tile) if tile is not None else ())
        return index if index else (0,)

    def is_complete(self, key: tuple[int, ...], tile: tuple[int, int] | None = None) -> bool:
        """True when the plane's (or tile's) features are written (checksum not verified here)."""
        return bool(self.group["complete"][self._index(key, tile)])

    def completed(self) -> list[tuple[int, ...]]:
        """Keys of planes (tiled: plane key + tile row, col) marked complete."""
        flags = np.asarray(self.group["complete"][...])
        if not self.layout.stack_ndim and not self.tiled:
            return [()] if flags[0] else []
        return [tuple(int(i) for i in k) for k in np.argwhere(flags)]

    def load(self, key: tuple[int, ...], tile: tuple[int, int] | None = None) -> Embedding | None:
        """The stored embedding of a plane or tile, or None if missing, incomplete or damaged."""
        import torch

        index = self._index(key, tile)
        where = index if (key or tile is not None) else ()
        if not self.group["complete"][index]:
            return None
        try:
            features = np.asarray(self.group["features"][where])
        except Exception:  # a damaged chunk fails to decode
            return None
        if zlib.crc32(np.ascontiguousarray(features).tobytes()) != int(
            self.group["checksum"][index]
        ):
            return None
        rows, cols = (int(v) for v in self.group["input_size"][where])
        return Embedding(
            features=torch.from_numpy(features.astype(np.float32))[None],
            input_size=(rows, cols),
            original_size=self._original_size(tile),
            model_id=self.signature.model_id,
            normalization=self.normalization,
        )

    def save(
        self, key: tuple[int, ...], embedding: Embedding, tile: tuple[int, int] | None = None
    ) -> None:
        """Write features, then their checksum, then the completion flag."""
        if embedding.model_id != self.signature.model_id:
            raise CacheMismatchError(
                f"Embedding by {embedding.model_id} cannot go into a cache for "
                f"{self.signature.model_id}."
            )
        index = self._index(key, tile)
        if tuple(embedding.original_size) != self._original_size(tile):
            raise InvalidInputError(
                f"An embedding of a {tuple(embedding.original_size)} image cannot be stored for "
                f"{'tile ' + str(tuple(tile)) if tile is not None else 'a plane'} "
                f"of {self._original_size(tile)} pixels."
            )
        where = index if (key or tile is not None) else ()
        features = embedding.features[0].cpu().numpy().astype(self.signature.feature_dtype)
        self.group["features"][where] = features
        self.group["input_size"][where] = np.asarray(embedding.input_size, np.int32)
        self.group["checksum"][index] = zlib.crc32(np.ascontiguousarray(features).tobytes())
        self.group["complete"][index] = 1

    def tiles(self, key: tuple[int, ...]) -> PlaneTiles:
        """The tiles of one plane as a backend keyed by (tile row, tile col)."""
        if not self.tiled:
            raise InvalidInputError(
                "This cache stores whole planes, not tiles: open it with a tile size."
            )
        return PlaneTiles(self, self.layout.check_key(key))

    def _original_size(self, tile: tuple[int, int] | None) -> tuple[int, int]:
        if tile is None or self.grid is None:
            return self.layout.plane_shape
        rows, cols = self.grid[tile[0] * self.grid_shape[1] + tile[1]].window
        return rows.stop - rows.start, cols.stop - cols.start


class PlaneTiles:
    """The tiles of one plane of an :class:`EmbeddingCache`, keyed by grid (row, col)."""

    def __init__(self, cache: EmbeddingCache, key: tuple[int, ...]) -> None:
        self.cache, self.key = cache, key

    def load(self, index: tuple[int, int]) -> Embedding | None:
        """The tile's stored embedding, or None if missing, incomplete or damaged."""
        return self.cache.load(self.key, tile=index)

    def save(self, index: tuple[int, int], embedding: Embedding) -> None:
        """Store the tile's embedding durably (data, checksum, then the flag)."""
        self.cache.save(self.key, embedding, tile=index)

    def completed(self) -> set[tuple[int, int]]:
        """Grid indices of the tiles marked complete (one read of this plane's flags)."""
        flags = np.asarray(
            self.cache.group["complete"][self.key]
            if self.key
            else self.cache.group["complete"][...]
        )
        return {(int(r), int(c)) for r, c in np.argwhere(flags)}


def _read_signature(path: Path) -> CacheSignature | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
        payload = meta.get("attributes", {}).get("napari_sam")
    except (OSError, ValueError):
        return None
    if not payload or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        return None
    return CacheSignature.from_dict(payload)
