"""A persistent, verified store of image embeddings: one zarr v3 group per volume.

The encoder is the expensive step (about a second per 1024x1024 input on a CPU), so each
plane is encoded once and kept on disk. Layout of ``NAME.zarr``:

``features``  (*stack, 256, 64, 64), float32 or float16, one chunk per plane
``input_size``  (*stack, 2) int32, the resized (rows, cols) inside the encoder frame
``checksum``  (*stack,) uint32, crc32 of each plane's feature bytes
``complete``  (*stack,) uint8, 1 once a plane's features and checksum are written

The group's ``napari_sam`` attribute is the :class:`CacheSignature`: data shape and dtype,
a content fingerprint from a few sampled planes (never the whole volume), the model and
its weights, the intensity normalisation, tiling, feature dtype and package version.
Opening a cache with another signature raises :class:`~napari_sam.errors.CacheMismatchError`
(or starts afresh when asked). Chunks are written atomically by zarr's local store; a plane
counts only once its ``complete`` flag is set after its data, and a plane whose checksum
no longer matches (a damaged or deleted chunk) is treated as missing, so an interrupted or
corrupted run resumes by recomputing exactly what is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_sam.engine.planes import PlaneLayout, read_plane
from napari_sam.engine.preprocess import Normalization
from napari_sam.engine.results import Embedding
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

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, payload: dict) -> "CacheSignature":
        fields = {k: v for k, v in payload.items() if k not in ("format", "version")}
        fields["data_shape"] = tuple(fields["data_shape"])
        norm = list(fields["normalization"])
        norm[3] = None if norm[3] is None else tuple(norm[3])
        fields["normalization"] = tuple(norm)
        return cls(**fields)

    def differences(self, other: "CacheSignature") -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: cache has {theirs[k]!r}, expected {mine[k]!r}" for k in mine if mine[k] != theirs[k]]


def data_fingerprint(data, layout: PlaneLayout, planes: int = FINGERPRINT_PLANES) -> str:
    """sha256 of the shape, dtype and a strided sample of a few planes' pixels."""
    digest = hashlib.sha256(json.dumps([list(layout.shape), str(np.dtype(data.dtype))]).encode())
    count = int(np.prod(layout.stack_shape)) if layout.stack_ndim else 1
    for flat in np.unique(np.linspace(0, count - 1, min(planes, count)).round().astype(int)):
        key = tuple(int(i) for i in np.unravel_index(flat, layout.stack_shape)) if layout.stack_ndim else ()
        plane = read_plane(data, layout, key)
        digest.update(np.ascontiguousarray(plane[::7, ::7]).tobytes())
    return digest.hexdigest()


def cache_signature(
    data, layout: PlaneLayout, model_id: str, normalization: Normalization,
    feature_dtype: str = "float32", tile: int | None = None, halo: int = 0,
) -> CacheSignature:
    """The signature a cache for this data and these settings must carry."""
    from napari_sam import __version__

    if feature_dtype not in ("float32", "float16"):
        raise InvalidInputError(f"feature_dtype must be 'float32' or 'float16'; got {feature_dtype!r}.")
    n = normalization
    return CacheSignature(
        data_shape=tuple(layout.shape), data_dtype=str(np.dtype(data.dtype)),
        channel_axis=layout.channel_axis, fingerprint=data_fingerprint(data, layout),
        model_id=model_id, normalization=(n.low, n.high, n.channel, n.channel_weights),
        tile=tile, halo=halo, feature_dtype=feature_dtype, package_version=__version__,
    )


class EmbeddingCache:
    """Plane embeddings on disk; an :class:`~napari_sam.engine.embedding_store.EmbeddingBackend`."""

    def __init__(self, group, signature: CacheSignature, layout: PlaneLayout) -> None:
        self.group = group
        self.signature = signature
        self.layout = layout
        self.normalization = Normalization(*signature.normalization)

    @classmethod
    def open(
        cls, path: str | Path, signature: CacheSignature, layout: PlaneLayout, overwrite: bool = False,
    ) -> "EmbeddingCache":
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
                        + "\nUse another cache path, or overwrite=True (--overwrite) to start afresh."
                    )
                shutil.rmtree(path)
            elif existing is not None:
                return cls(zarr.open_group(path, mode="r+"), signature, layout)
            else:
                shutil.rmtree(path)
        group = zarr.open_group(path, mode="w")
        stack = layout.stack_shape
        ones = (1,) * len(stack)
        group.create_array("features", shape=stack + (256, 64, 64), chunks=ones + (256, 64, 64),
                           dtype=signature.feature_dtype, fill_value=0)
        group.create_array("input_size", shape=stack + (2,), chunks=ones + (2,), dtype="int32", fill_value=0)
        group.create_array("checksum", shape=stack or (1,), chunks=ones or (1,), dtype="uint32", fill_value=0)
        group.create_array("complete", shape=stack or (1,), chunks=ones or (1,), dtype="uint8", fill_value=0)
        group.attrs["napari_sam"] = signature.to_dict()  # last: a half-made cache has no signature
        return cls(group, signature, layout)

    def _index(self, key: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(key) if key else (0,)

    def is_complete(self, key: tuple[int, ...]) -> bool:
        """True when the plane's features are written (checksum not verified here)."""
        return bool(self.group["complete"][self._index(key)])

    def completed(self) -> list[tuple[int, ...]]:
        """Keys of planes marked complete."""
        flags = np.asarray(self.group["complete"][...])
        if not self.layout.stack_ndim:
            return [()] if flags[0] else []
        return [tuple(int(i) for i in k) for k in np.argwhere(flags)]

    def load(self, key: tuple[int, ...]) -> Embedding | None:
        """The stored embedding of a plane, or None if missing, incomplete or damaged."""
        import torch

        index = self._index(key)
        if not self.group["complete"][index]:
            return None
        try:
            features = np.asarray(self.group["features"][tuple(key)])
        except Exception:  # a damaged chunk fails to decode
            return None
        if zlib.crc32(np.ascontiguousarray(features).tobytes()) != int(self.group["checksum"][index]):
            return None
        size = tuple(int(v) for v in self.group["input_size"][tuple(key)])
        return Embedding(
            features=torch.from_numpy(features.astype(np.float32))[None],
            input_size=size, original_size=self.layout.plane_shape,
            model_id=self.signature.model_id, normalization=self.normalization,
        )

    def save(self, key: tuple[int, ...], embedding: Embedding) -> None:
        """Write a plane's features, then its checksum, then its completion flag."""
        if embedding.model_id != self.signature.model_id:
            raise CacheMismatchError(
                f"Embedding by {embedding.model_id} cannot go into a cache for {self.signature.model_id}."
            )
        index = self._index(key)
        features = embedding.features[0].cpu().numpy().astype(self.signature.feature_dtype)
        self.group["features"][tuple(key)] = features
        self.group["input_size"][tuple(key)] = np.asarray(embedding.input_size, np.int32)
        self.group["checksum"][index] = zlib.crc32(np.ascontiguousarray(features).tobytes())
        self.group["complete"][index] = 1


def _read_signature(path: Path) -> CacheSignature | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
        payload = meta.get("attributes", {}).get("napari_sam")
    except (OSError, ValueError):
        return None
    if not payload or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        return None
    return CacheSignature.from_dict(payload)
