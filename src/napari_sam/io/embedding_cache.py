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

The group's ``napari_sam`` attribute is the
:class:`~napari_sam.io.cache_signature.CacheSignature` with the format version (2): data
shape and dtype, a content fingerprint from a few sampled planes (never the whole
volume), the model and its weights, the intensity normalisation, tile, halo, upscale
factor, feature dtype and the encoder's precision (fp32 or bf16; older caches read as
fp32), so planes encoded in one precision never join a cache of the other; never the
package version, so a new release reuses the caches of the last. Version 1 caches (the
same arrays, a signature that also held ``package_version``) are read as they are.
``written_by`` records the release that created the cache, for information. A tile's
window (and so its embedding's original size) follows from the plane shape, tile and
halo. Opening a cache with another signature raises
:class:`~napari_sam.errors.CacheMismatchError`; ``overwrite`` replaces only a folder
holding nothing but a cache (see :mod:`napari_sam.io.stores`), under the cache's
:class:`~napari_sam.io.store_lock.StoreLock`. Chunks are written atomically by zarr's
local store; a plane or tile counts only once its ``complete`` flag is set after its
data and checksum, and one whose chunks fail to decode or whose checksum no longer
matches (a damaged or deleted chunk) is treated as missing, so an interrupted or
corrupted run resumes by recomputing exactly what is missing. Disk errors (permissions,
a full disk) raise :class:`~napari_sam.errors.StoreAccessError` instead of passing for
damage. See docs/large_data.md.
"""

from __future__ import annotations

import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from napari_sam.engine.prediction.planes import PlaneLayout
from napari_sam.engine.prediction.preprocess import Normalization
from napari_sam.engine.prediction.results import Embedding
from napari_sam.engine.tiling.grid import tile_grid
from napari_sam.errors import CacheMismatchError, InvalidInputError
from napari_sam.io.cache_signature import (  # re-exported: callers import them from here
    FINGERPRINT_PLANES,
    FORMAT,
    VERSION,
    CacheSignature,
    cache_signature,
    data_fingerprint,
)
from napari_sam.io.store_lock import StoreLock
from napari_sam.io.stores import (
    DECODE_ERRORS,
    EMBEDDING_CACHE,
    StoreKind,
    access_error,
    check_store_path,
    claim_store,
    damaged_error,
    read_or_raise,
    read_units,
    replace_store,
)

KIND = EMBEDDING_CACHE
__all__ = [
    "FINGERPRINT_PLANES",
    "FORMAT",
    "VERSION",
    "CacheSignature",
    "EmbeddingCache",
    "PlaneTiles",
    "cache_signature",
    "data_fingerprint",
]


class EmbeddingCache:
    """Plane (or tile) embeddings on disk.

    Untiled, it is an :class:`~napari_sam.engine.annotation.embedding_store.EmbeddingBackend` keyed
    by plane; tiled, ``load``/``save`` take the tile's (row, col) grid index too and
    :meth:`tiles` gives one plane's tiles as a backend for
    :class:`~napari_sam.engine.tiling.prompting.TiledPlane`.
    """

    def __init__(
        self,
        group,
        signature: CacheSignature,
        layout: PlaneLayout,
        path: str | Path | None = None,
    ) -> None:
        self.group = group
        self.path = Path(path if path is not None else getattr(group.store, "root", "."))
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
        lock: StoreLock | None = None,
    ) -> EmbeddingCache:
        """Open (or create) the cache at ``path`` for data with ``signature``.

        An existing cache with this signature opens without its lock (a viewer may read
        it while ``napari-sam embed`` fills it); creating or replacing one takes the lock
        for as long as that lasts.

        Parameters
        ----------
        path : str or pathlib.Path
            A ``.zarr`` folder.
        signature : CacheSignature
        layout : PlaneLayout
        overwrite : bool
            Replace a cache made for other data or settings, or a damaged one; never a
            folder holding anything else.
        lock : StoreLock, optional
            The cache's lock, already held by the caller (e.g. for a whole ``embed`` run).

        Raises
        ------
        CacheMismatchError
            ``path`` holds a cache for other data or settings and ``overwrite`` is False
            (the message lists each difference), is damaged, or holds files that are not
            a cache's (also with ``overwrite``).
        InvalidInputError
            ``path`` is a file.
        StoreInUseError
            The cache must be created or replaced while another run holds its lock.
        """
        path = check_store_path(path, KIND)
        if lock is None and _matches(path, signature):
            return cls._reopen(path, signature, layout)
        with StoreLock(path, KIND.noun) if lock is None else nullcontext(lock):
            payload = claim_store(path, KIND, overwrite)
            if payload is not None and _signature_of(payload, path) != signature:
                if not overwrite:
                    raise CacheMismatchError(
                        _mismatch(path, signature, _signature_of(payload, path))
                    )
                replace_store(path, KIND)
                payload = None
            if payload is not None:
                return cls._reopen(path, signature, layout)
            return cls._create(path, signature, layout)

    @classmethod
    def _reopen(cls, path: Path, signature: CacheSignature, layout: PlaneLayout) -> EmbeddingCache:
        import zarr

        return cls(zarr.open_group(path, mode="r+"), signature, layout, path)

    @classmethod
    def _create(cls, path: Path, signature: CacheSignature, layout: PlaneLayout) -> EmbeddingCache:
        import zarr

        from napari_sam import __version__

        cache = cls(zarr.open_group(path, mode="a"), signature, layout, path)
        cache._create_arrays()
        cache.group.attrs["written_by"] = f"napari-sam {__version__}"  # information only
        cache.group.attrs["napari_sam"] = signature.to_dict()  # last: a half-made cache has none
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
        """True when the plane's (or tile's) features are written (checksum not verified here;
        a flag chunk that fails to decode reads as not written)."""
        return self._flag(self._index(key, tile))

    def completed(self) -> list[tuple[int, ...]]:
        """Keys of planes (tiled: plane key + tile row, col) marked complete."""
        flags, _ = read_units(self.group["complete"], self.path, KIND, "the completion flags")
        if not self.layout.stack_ndim and not self.tiled:
            return [()] if flags[0] else []
        return [tuple(int(i) for i in k) for k in np.argwhere(flags)]

    def load(self, key: tuple[int, ...], tile: tuple[int, int] | None = None) -> Embedding | None:
        """The stored embedding of a plane or tile, or None if missing, incomplete or damaged.

        Raises
        ------
        StoreAccessError
            The disk refused a read (permissions, a lost mount): never taken for damage.
        """
        import torch

        index = self._index(key, tile)
        where = index if (key or tile is not None) else ()
        if not self._flag(index):
            return None
        what = f"{'tile ' + str(tuple(tile)) + ' of ' if tile is not None else ''}plane {key}"
        try:  # a chunk that fails to decode is damage: the plane or tile is encoded again
            features = np.asarray(read_or_raise(self.group["features"], where, *self._at(what)))
            checksum = int(read_or_raise(self.group["checksum"], index, *self._at(what)))
            size = read_or_raise(self.group["input_size"], where, *self._at(what))
        except DECODE_ERRORS:
            return None
        if zlib.crc32(np.ascontiguousarray(features).tobytes()) != checksum:
            return None
        rows, cols = (int(v) for v in size)
        return Embedding(
            features=torch.from_numpy(features.astype(np.float32))[None],
            input_size=(rows, cols),
            original_size=self._original_size(tile),
            model_id=self.signature.model_id,
            normalization=self.normalization,
            precision=self.signature.precision,
        )

    def save(
        self, key: tuple[int, ...], embedding: Embedding, tile: tuple[int, int] | None = None
    ) -> None:
        """Write features, then their checksum, then the completion flag.

        Raises
        ------
        CacheMismatchError
            The embedding was computed by other weights, or in another precision.
        StoreAccessError
            The disk refused a write (permissions, a full disk).
        """
        if embedding.model_id != self.signature.model_id:
            raise CacheMismatchError(
                f"Embedding by {embedding.model_id} cannot go into a cache for "
                f"{self.signature.model_id}."
            )
        if embedding.precision != self.signature.precision:
            raise CacheMismatchError(
                f"An embedding computed in {embedding.precision} cannot go into a cache of "
                f"{self.signature.precision} embeddings: encode with "
                f"precision={self.signature.precision!r}, or use another cache."
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
        try:
            self.group["features"][where] = features
            self.group["input_size"][where] = np.asarray(embedding.input_size, np.int32)
            self.group["checksum"][index] = zlib.crc32(np.ascontiguousarray(features).tobytes())
            self.group["complete"][index] = 1
        except OSError as error:
            raise access_error(self.path, KIND, f"write plane {key}", error) from error

    def _flag(self, index: tuple[int, ...]) -> bool:
        """The completion flag at ``index``; False when its chunk fails to decode."""
        try:
            return bool(read_or_raise(self.group["complete"], index, *self._at("a flag")))
        except DECODE_ERRORS:
            return False

    def _at(self, what: str) -> tuple[Path, StoreKind, str]:
        """The trailing arguments of :func:`~napari_sam.io.stores.read_or_raise`."""
        return self.path, KIND, what

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
        """Grid indices of the tiles marked complete (one read of this plane's flags; a
        flag chunk that fails to decode reads as not complete)."""
        cache = self.cache
        try:
            flags = np.asarray(
                read_or_raise(
                    cache.group["complete"], self.key or ..., *cache._at("the tile flags")
                )
            )
        except DECODE_ERRORS:
            rows, cols = cache.grid_shape
            return {
                (r, c) for r in range(rows) for c in range(cols) if cache._flag(self.key + (r, c))
            }
        return {(int(r), int(c)) for r, c in np.argwhere(flags)}


def recorded_precision(path: str | Path) -> str | None:
    """The precision ("fp32" or "bf16") a cache at ``path`` records; None if no readable
    cache is there (nothing yet, a damaged cache, another kind of folder)."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        payload = claim_store(path, KIND, overwrite=False)
        return None if payload is None else _signature_of(payload, path).precision
    except CacheMismatchError:
        return None  # opening it says what is wrong


def _matches(path: Path, signature: CacheSignature) -> bool:
    """True when ``path`` is a readable cache with this signature (read without the lock)."""
    if not path.is_dir():
        return False
    try:
        payload = claim_store(path, KIND, overwrite=False)
    except CacheMismatchError:
        return False  # decided again under the lock, where the error is raised
    return payload is not None and _signature_of(payload, path) == signature


def _signature_of(payload: dict, path: Path) -> CacheSignature:
    try:
        return CacheSignature.from_dict(payload)
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise damaged_error(path, KIND, f"its signature is incomplete: {error!r}") from error


def _mismatch(path: Path, signature: CacheSignature, existing: CacheSignature) -> str:
    return (
        f"The embedding cache {path} was made for other data or settings:\n  - "
        + "\n  - ".join(signature.differences(existing))
        + "\nUse another cache path, the cache's own settings (e.g. --tile/--halo/"
        "--upscale/--precision), or overwrite=True to start afresh."
    )
