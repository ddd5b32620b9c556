"""The zarr v3 store of a batch segment-everything run: per-slice labels, flags, 3D labels.

Layout of ``NAME.zarr`` for a stack of Z planes of (Y, X) pixels (a 2D image is Z = 1):

``sections``  (Z, Y, X) int32, chunks (1, <=2048, <=2048): each slice's 2D labels 1..n_z as
              segment-everything painted them (ids repeat between slices)
``objects``   (Z,) int32, chunks (1,): n_z, the number of 2D objects in slice z
``complete``  (Z,) uint8, chunks (1,): 1 once the slice's sections and count are written
``labels``    (Z, Y, X) int32, chunks like ``sections``: the result, 3D objects 1..n after
              linking (or every section numbered apart without linking), rewritten by
              each run's final pass

One task owns one slice, so it alone writes that slice's chunks: no two writers ever share
a chunk. The flag goes last, so a slice counts as done only when its labels are on disk; a
run killed at any moment resumes by segmenting exactly the slices without a flag (a chunk
half-written by a killed task is rewritten whole). A slice's ids are made unique over the
stack by the pair (z, id), with ``objects`` as the per-slice id range, and linking turns
them into 3D ids. The group attribute ``napari_sam`` is the :class:`StoreSignature`:
everything the sections depend on (input, data fingerprint, model, normalisation,
segment-everything settings, tiles); reopening with another signature raises
:class:`~napari_sam.errors.CacheMismatchError`. Linking settings are not in it: changing
them relinks the stored sections without segmenting again. The attribute ``run`` records
the last run (linking settings, counts, timings).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_sam.errors import CacheMismatchError

FORMAT = "napari-sam segment-everything"
VERSION = 1
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
    package_version: str

    def to_dict(self) -> dict:
        """JSON-ready values with the format and version of the store."""
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, payload: dict) -> StoreSignature:
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists)."""
        values = {k: v for k, v in payload.items() if k not in ("format", "version")}
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
    """The arrays of one run's output; see the module docstring for the layout."""

    def __init__(self, group) -> None:
        self.group = group

    @classmethod
    def open(
        cls,
        path: str | Path,
        signature: StoreSignature,
        plane_shape: tuple[int, int],
        slices: int,
        overwrite: bool = False,
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
            Replace a store made for other data or settings (or a folder that is no store).

        Raises
        ------
        CacheMismatchError
            ``path`` exists, holds something else, and ``overwrite`` is False.
        """
        import zarr

        path = Path(path)
        if path.exists():
            existing = read_signature(path)
            if existing == signature:
                return cls(zarr.open_group(path, mode="r+"))
            if not overwrite:
                raise CacheMismatchError(_mismatch(path, signature, existing))
            shutil.rmtree(path)
        store = cls(zarr.open_group(path, mode="w"))
        store._create_arrays((int(plane_shape[0]), int(plane_shape[1])), int(slices))
        store.group.attrs["napari_sam"] = signature.to_dict()  # last: a half-made store has none
        return store

    def _create_arrays(self, plane_shape: tuple[int, int], slices: int) -> None:
        chunks = (1,) + tuple(min(s, MAX_CHUNK) for s in plane_shape)
        for name in ("sections", "labels"):
            self.group.create_array(
                name, shape=(slices,) + plane_shape, chunks=chunks, dtype="int32", fill_value=0
            )
        self.group.create_array(
            "objects", shape=(slices,), chunks=(1,), dtype="int32", fill_value=0
        )
        self.group.create_array(
            "complete", shape=(slices,), chunks=(1,), dtype="uint8", fill_value=0
        )

    @property
    def sections(self):
        """The (Z, Y, X) int32 zarr array of per-slice 2D labels."""
        return self.group["sections"]

    @property
    def labels(self):
        """The (Z, Y, X) int32 zarr array of the final 3D labels."""
        return self.group["labels"]

    def completed(self) -> np.ndarray:
        """(Z,) bool: slices whose sections are written."""
        return np.asarray(self.group["complete"][...]).astype(bool)

    def write_slice(self, z: int, labels: np.ndarray) -> None:
        """Write one slice's (Y, X) 2D labels, then its object count, then its flag."""
        self.group["sections"][z] = labels.astype(np.int32, copy=False)
        self.group["objects"][z] = int(labels.max(initial=0))
        self.group["complete"][z] = 1

    def clear_labels(self) -> None:
        """Reset the 3D labels to background (before a run writes its z-range)."""
        old = self.group["labels"]
        self.group.create_array(
            "labels",
            shape=old.shape,
            chunks=old.chunks,
            dtype="int32",
            fill_value=0,
            overwrite=True,
        )

    def object_counts(self) -> np.ndarray:
        """(Z,) int64: 2D objects per slice (0 where not complete)."""
        return np.asarray(self.group["objects"][...]).astype(np.int64)

    def record_run(self, record: dict) -> None:
        """Store the last run's record (JSON values) in the ``run`` attribute."""
        self.group.attrs["run"] = record


def read_signature(path: str | Path) -> StoreSignature | None:
    """The signature of the store at ``path``, or None if it is not one of ours."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
        payload = meta.get("attributes", {}).get("napari_sam")
    except (OSError, ValueError):
        return None
    if not payload or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        return None
    return StoreSignature.from_dict(payload)


def _mismatch(path: Path, signature: StoreSignature, existing: StoreSignature | None) -> str:
    if existing is None:
        return (
            f"{path} exists but is not a napari-sam segment-everything store: choose another "
            "--out or pass --overwrite (overwrite=True) to replace it."
        )
    return (
        f"{path} holds a segment-everything run for other data or settings:\n  - "
        + "\n  - ".join(signature.differences(existing))
        + "\nUse another --out, the same settings to resume it, or --overwrite to start afresh."
    )
