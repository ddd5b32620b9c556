"""The zarr v3 store of a batch segment-everything run: per-slice labels, flags, 3D labels.

Layout of ``NAME.zarr`` for a stack of Z planes of (Y, X) pixels (a 2D image is Z = 1):

``sections``  (Z, Y, X) int32, chunks (1, <=2048, <=2048): each slice's 2D labels 1..n_z as
              segment-everything painted them (ids repeat between slices)
``checksum``  (Z,) uint32, chunks (1,): crc32 of slice z's int32 bytes in C order
``objects``   (Z,) int32, chunks (1,): n_z, the number of 2D objects in slice z
``complete``  (Z,) uint8, chunks (1,): 1 once the slice's sections, checksum and count are
              written
``labels``    (Z, Y, X) int32, chunks like ``sections``: the result, 3D objects 1..n after
              linking (or every section numbered apart without linking), rewritten by
              each run's final pass

One task owns one slice, so it alone writes that slice's chunks: no two writers ever share
a chunk. A task writes the sections, then the checksum and count, then the flag, so a
slice counts as done only when its labels are on disk. On resume the driver checks every
flagged slice of its z-range (:meth:`EverythingStore.verify`, streaming one band of chunks
at a time): its chunks must decode, their crc32 match ``checksum`` and their largest id
equal ``objects``; a slice that fails (a chunk deleted, truncated or altered, a flag or
count chunk that does not decode) is segmented again and counted as repaired. A slice's
ids are made unique over the stack by the pair (z, id), with ``objects`` as the per-slice
id range, and linking turns them into 3D ids.

The group attribute ``napari_sam`` is the :class:`StoreSignature` with the format version
(2): everything the sections depend on (input, data fingerprint, model, normalisation,
segment-everything settings, tiles), never the package version, so a new release resumes
the stores of the last. Reopening with another signature raises
:class:`~napari_sam.errors.CacheMismatchError`; ``overwrite`` replaces only a folder that
holds nothing but our store (see :mod:`napari_sam.io.stores`). Linking settings are not
in it: changing them relinks the stored sections without segmenting again. Version 1
stores (no ``checksum``; a signature with ``package_version``) are migrated when opened:
each finished slice whose largest id equals its count gets its checksum, the others are
segmented again, and ``migrated_from`` records the old version. The attribute ``run``
records the last run (linking settings, counts, timings, package version), and
``written_by`` the release that created the store; neither is compared. A writing run
holds the store's :class:`~napari_sam.io.store_lock.StoreLock`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_sam.errors import CacheMismatchError
from napari_sam.io.store_lock import StoreLock
from napari_sam.io.stores import (
    DECODE_ERRORS,
    EVERYTHING_STORE,
    access_error,
    check_store_path,
    claim_store,
    damaged_error,
    read_or_raise,
    read_units,
    replace_store,
)

log = logging.getLogger(__name__)

KIND = EVERYTHING_STORE
FORMAT = KIND.format
VERSION = 2  # 1: no checksums, package version in the signature
MAX_CHUNK = 2048  # pixels per side of a label chunk: a slice of 20k x 20k is 100 chunks


@dataclass(frozen=True)
class StoreSignature:
    """Everything the per-slice sections depend on; two runs may share a store iff equal."""

    source: str  # input path, resolved
    key: str | None  # series or array path inside the input
    level: int  # resolution level
    axes: str  # axes of the input as opened
    channel: int | None  # channel segmented
    data_shape: tuple[int, ...]  # shape of the input
    fingerprint: str  # sha256 of sampled planes (io.embedding_cache.data_fingerprint)
    model_id: str  # registry name @ weights sha256 prefix
    normalization: tuple  # (low, high, channel, channel_weights)
    settings: dict  # EverythingSettings.to_dict()
    tile: int | None  # tile interior side, None for whole planes
    halo: int  # tile overlap in pixels

    def to_dict(self) -> dict:
        """JSON-ready values with the format and version of the store."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, payload: dict) -> StoreSignature:
        """Inverse of :meth:`to_dict`; version 1's ``package_version`` is dropped."""
        skip = ("format", "version", "package_version")
        values = {k: v for k, v in payload.items() if k not in skip}
        values["data_shape"] = tuple(values["data_shape"])
        norm = list(values["normalization"])
        norm[3] = None if norm[3] is None else tuple(norm[3])
        values["normalization"] = tuple(norm)
        return cls(**values)

    def differences(self, other: StoreSignature) -> list[str]:
        """One line per field that differs, as 'field: store has X, expected Y'."""
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{k}: store has {theirs[k]!r}, expected {mine[k]!r}"
            for k in mine
            if mine[k] != theirs[k]
        ]


class EverythingStore:
    """The arrays of one run's output; see the module docstring for the layout.

    Workers wrap an opened group (``EverythingStore(zarr.open_group(out, mode="r+"))``)
    to write their slices; the driver uses :meth:`open`, which also takes the lock.
    """

    def __init__(self, group, path: str | Path | None = None) -> None:
        self.group = group
        self.path = Path(path if path is not None else getattr(group.store, "root", "."))
        self._lock: StoreLock | None = None  # released by close() when open() took it
        self._migrated_damaged: tuple[int, ...] = ()

    @classmethod
    def open(
        cls,
        path: str | Path,
        signature: StoreSignature,
        plane_shape: tuple[int, int],
        slices: int,
        overwrite: bool = False,
        lock: StoreLock | None = None,
    ) -> EverythingStore:
        """Open the store at ``path`` for a run with ``signature``, creating it if needed.

        Parameters
        ----------
        path : str or pathlib.Path
            A ``.zarr`` folder.
        signature : StoreSignature
        plane_shape : (int, int)
            (Y, X) of one slice.
        slices : int
            Z, the number of slices of the stack.
        overwrite : bool
            Replace a store of ours made for other data or settings, damaged, or of a
            newer format; never a folder holding anything else.
        lock : StoreLock, optional
            The store's lock, already held by the caller for the whole run; without it
            the store takes its own, held until :meth:`close`.

        Raises
        ------
        CacheMismatchError
            ``path`` holds a run for other data or settings (without ``overwrite``), is
            damaged, or holds files that are not ours (also with ``overwrite``).
        InvalidInputError
            ``path`` is a file.
        StoreInUseError
            Another run holds the store's lock.
        """
        path = check_store_path(path, KIND)
        own_lock = StoreLock(path, KIND.noun).acquire() if lock is None else None
        try:
            shape = (int(plane_shape[0]), int(plane_shape[1]))
            store = cls._claim(path, signature, shape, slices, overwrite)
        except BaseException:
            if own_lock is not None:
                own_lock.release()
            raise
        store._lock = own_lock
        return store

    @classmethod
    def _claim(cls, path: Path, signature, plane_shape, slices, overwrite) -> EverythingStore:
        import zarr

        payload = claim_store(path, KIND, overwrite)
        if payload is not None:
            existing = _signature_of(payload, path)
            if existing != signature:
                if not overwrite:
                    raise CacheMismatchError(_mismatch(path, signature, existing))
                replace_store(path, KIND)
                payload = None
        if payload is None:
            return cls._create(path, signature, plane_shape, int(slices))
        store = cls(zarr.open_group(path, mode="r+"), path)
        if payload["version"] == 1:
            store._migrate(payload, signature)
        return store

    @classmethod
    def _create(cls, path: Path, signature, plane_shape, slices: int) -> EverythingStore:
        import zarr

        from napari_sam import __version__

        store = cls(zarr.open_group(path, mode="a"), path)
        chunks = (1,) + tuple(min(s, MAX_CHUNK) for s in plane_shape)
        for name in ("sections", "labels"):
            store.group.create_array(
                name, shape=(slices,) + plane_shape, chunks=chunks, dtype="int32", fill_value=0
            )
        for name, kind in (("checksum", "uint32"), ("objects", "int32"), ("complete", "uint8")):
            store.group.create_array(name, shape=(slices,), chunks=(1,), dtype=kind, fill_value=0)
        store.group.attrs["written_by"] = f"napari-sam {__version__}"  # information only
        store.group.attrs["napari_sam"] = signature.to_dict()  # last: a half-made store has none
        return store

    @property
    def sections(self):
        """The (Z, Y, X) int32 zarr array of per-slice 2D labels."""
        return self.group["sections"]

    @property
    def labels(self):
        """The (Z, Y, X) int32 zarr array of the final 3D labels."""
        return self.group["labels"]

    def completed(self) -> np.ndarray:
        """(Z,) bool: slices flagged as written (a flag chunk that fails to decode: False)."""
        flags, _ = read_units(self.group["complete"], self.path, KIND, "the slice flags")
        return flags.astype(bool)

    def write_slice(self, z: int, labels: np.ndarray) -> None:
        """Write one slice's (Y, X) 2D labels, then its checksum and count, then its flag."""
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        try:
            self.group["sections"][z] = labels
            self.group["checksum"][z] = zlib.crc32(labels.data)
            self.group["objects"][z] = int(labels.max(initial=0))
            self.group["complete"][z] = 1
        except OSError as error:
            raise access_error(self.path, KIND, f"write slice {z}", error) from error

    def verify(self, first: int, stop: int) -> list[int]:
        """Check the flagged slices ``first..stop-1``; unflag and return the damaged ones.

        A slice is damaged when its flag, count or checksum chunk fails to decode, a
        sections chunk fails to decode, or the crc32 or largest id of its sections
        disagrees with ``checksum`` or ``objects`` (slices a migration found inconsistent
        are included). Reads one band of chunks (<= 2048 rows) at a time.
        """
        flags, bad_flags = read_units(self.group["complete"], self.path, KIND, "the slice flags")
        sums, bad_sums = read_units(self.group["checksum"], self.path, KIND, "the checksums")
        counts, bad_counts = read_units(self.group["objects"], self.path, KIND, "the counts")
        sections, damaged = self.group["sections"], []
        for z in range(first, stop):
            if bad_flags[z] or z in self._migrated_damaged:
                damaged.append(z)
            elif flags[z] and (
                bad_sums[z]
                or bad_counts[z]
                or self._digest(z, sections) != (int(sums[z]), int(counts[z]))
            ):
                damaged.append(z)
        for z in damaged:
            self._unflag(z)
        return damaged

    def _digest(self, z: int, sections=None) -> tuple[int, int] | None:
        """(crc32, largest id) of slice z read band by band; None if a chunk fails to decode."""
        sections = self.group["sections"] if sections is None else sections
        rows, band = sections.shape[1], sections.chunks[1]
        crc, top = 0, 0
        for start in range(0, rows, band):
            try:
                block = read_or_raise(
                    sections, (z, slice(start, start + band)), self.path, KIND, f"slice {z}"
                )
            except DECODE_ERRORS:
                return None
            block = np.ascontiguousarray(block, dtype=np.int32)
            crc, top = zlib.crc32(block.data, crc), max(top, int(block.max(initial=0)))
        return crc, top

    def _unflag(self, z: int) -> None:
        try:
            self.group["complete"][z] = 0
        except OSError as error:
            raise access_error(self.path, KIND, f"write the flag of slice {z}", error) from error

    def _migrate(self, payload: dict, signature: StoreSignature) -> None:
        """Version 1 -> 2: checksums for the slices consistent with their counts."""
        group, slices = self.group, self.sections.shape[0]
        group.create_array(
            "checksum", shape=(slices,), chunks=(1,), dtype="uint32", fill_value=0, overwrite=True
        )
        flags, unreadable = read_units(group["complete"], self.path, KIND, "the slice flags")
        counts, bad_counts = read_units(group["objects"], self.path, KIND, "the slice counts")
        damaged = [int(z) for z in np.flatnonzero(unreadable)]
        for done in np.flatnonzero(flags):
            digest = self._digest(int(done))
            if digest is None or bad_counts[done] or digest[1] != int(counts[done]):
                damaged.append(int(done))
            else:
                group["checksum"][done] = digest[0]
        for z in damaged:
            self._unflag(z)
        group.attrs["migrated_from"] = {
            "version": 1,
            "package_version": payload.get("package_version"),
        }
        group.attrs["napari_sam"] = signature.to_dict()  # last: a killed migration reruns
        self._migrated_damaged = tuple(sorted(damaged))
        if damaged:
            log.warning(
                "%s: slices %s of this version 1 store disagree with their object counts; "
                "they will be segmented again",
                self.path,
                self._migrated_damaged,
            )

    def clear_labels(self) -> None:
        """Reset the 3D labels to background (before a run writes its z-range)."""
        sections = self.group["sections"]
        self.group.create_array(
            "labels",
            shape=sections.shape,
            chunks=sections.chunks,
            dtype="int32",
            fill_value=0,
            overwrite=True,
        )

    def object_counts(self) -> np.ndarray:
        """(Z,) int64: 2D objects per slice (0 where not complete or unreadable)."""
        counts, _ = read_units(self.group["objects"], self.path, KIND, "the slice counts")
        return counts.astype(np.int64)

    def record_run(self, record: dict) -> None:
        """Store the last run's record (JSON values) in the ``run`` attribute."""
        self.group.attrs["run"] = record

    def close(self) -> None:
        """Release the lock taken by :meth:`open` (none when the caller passed one)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> EverythingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _signature_of(payload: dict, path: Path) -> StoreSignature:
    try:
        return StoreSignature.from_dict(payload)
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise damaged_error(path, KIND, f"its signature is incomplete: {error!r}") from error


def _mismatch(path: Path, signature: StoreSignature, existing: StoreSignature) -> str:
    return (
        f"{path} holds a segment-everything run for other data or settings:\n  - "
        + "\n  - ".join(signature.differences(existing))
        + "\nUse another output path, the same settings to resume it, or overwrite=True to start "
        "afresh."
    )
