"""Microscopy data opened lazily, with named axes and physical pixel sizes.

:func:`open_volume` turns a TIFF file, a zarr store, an OME-Zarr image (NGFF 0.4/0.5,
https://ngff.openmicroscopy.org) or an in-memory array (numpy, dask, zarr) into a
:class:`Volume`: data that reads only what is indexed (a plane costs that plane's
chunks), axis names (``"zyx"``, ``"tczyx"``, ...) and a pixel size per axis.
:meth:`Volume.planes_view` reorders axes lazily to the (leading..., y, x[, c]) order of
:mod:`napari_sam.engine.prediction.planes`.

Files are checked twice: when opened (an empty, cut-short or mistaken file raises
:class:`~napari_sam.errors.InvalidInputError` naming it), and when read, since a TIFF
whose page index is whole may still miss pages and a zarr store may hold a damaged chunk:
a read through :meth:`Volume.planes_view` that fails says which plane of which file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from napari_sam.errors import InvalidInputError
from napari_sam.io.transposed import TransposedArray

AXIS_LETTERS = ("t", "c", "z", "y", "x")
PLANE_ORDER = "tzyxc"  # planes_view order: plane-selecting axes, then y, x, channels
TIFF_LETTERS = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}
NGFF_TYPES = {"time": "t", "channel": "c"}
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
MICROMETRE = 5  # tifffile.RESUNIT.MICROMETER
OME_SIZES = {"x": "PhysicalSizeX", "y": "PhysicalSizeY", "z": "PhysicalSizeZ", "t": "TimeIncrement"}
EXAMPLE_AXES = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
# A guess never invents a channel axis (the view would move it), except RGB(A) last.
GUESSES = {2: "yx", 3: "zyx", 4: "tzyx"}
RGB_GUESSES = {3: "yxc", 4: "zyxc", 5: "tzyxc"}


@dataclass(frozen=True)
class Volume:
    """An n-D image with named axes whose data is read only where indexed.

    ``data`` is a zarr array, a dask array or a numpy array (possibly memory-mapped);
    ``axes`` names its axes in order with letters from ``"tczyx"`` (``y`` and ``x``
    always present); ``scale`` is the pixel size along each axis (micrometres for TIFF
    resolution tags and OME metadata, otherwise the file's unit; 1.0 when unknown);
    ``source`` says where the data came from.
    """

    data: Any
    axes: str
    scale: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", check_axes(self.axes, len(self.data.shape), self.source))
        object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))
        if len(self.scale) != len(self.axes):
            raise InvalidInputError(
                f"Scale {self.scale} has {len(self.scale)} values for axes {self.axes!r} "
                f"of {self.source}: give one pixel size per axis."
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """Size of each axis, in the order of ``axes``."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """Data type of the values."""
        return np.dtype(self.data.dtype)

    @property
    def channel_axis(self) -> bool:
        """True when there is a channel axis (last in :meth:`planes_view`)."""
        return "c" in self.axes

    @property
    def planes_axes(self) -> str:
        """Axes of :meth:`planes_view`: ``t``, ``z``, then ``y``, ``x``, then ``c``."""
        return "".join(a for a in PLANE_ORDER if a in self.axes)

    @property
    def stack_axes(self) -> str:
        """The plane-selecting axes: ``""``, ``"z"``, ``"t"`` or ``"tz"``."""
        return self.planes_axes[: self.planes_axes.index("y")]

    @property
    def planes_scale(self) -> tuple[float, ...]:
        """``scale`` in the order of :attr:`planes_axes` (a napari layer's scale)."""
        return tuple(self.scale[self.axes.index(a)] for a in self.planes_axes)

    def planes_view(self):
        """The data with axes reordered to (t, z, y, x, c), without reading it.

        Returns
        -------
        array-like
            Shape ``[t,] [z,] rows, cols [, channels]`` (axes :attr:`planes_axes`), so
            ``view[(t, z)]`` is one plane, as ``engine.planes.plane_layout(view.shape,
            channel_axis=volume.channel_axis)`` expects: the data itself or a view of it
            (numpy, dask), or a :class:`TransposedArray` (zarr, TIFF and other
            array-likes, even in their own order, so that a failed read names the file).
        """
        order = tuple(self.axes.index(a) for a in self.planes_axes)
        if isinstance(self.data, np.ndarray) or type(self.data).__module__.startswith("dask."):
            return self.data if order == tuple(range(len(order))) else self.data.transpose(order)
        return TransposedArray(self.data, order, self.source)


def open_volume(
    source, *, key: str | int | None = None, level: int = 0, axes: str | None = None
) -> Volume:
    """Open an image lazily as a :class:`Volume`.

    Parameters
    ----------
    source : str, pathlib.Path, numpy.ndarray, dask.array.Array, zarr.Array or zarr.Group
        A ``.tif``/``.tiff`` file (OME-TIFF and ImageJ included), a ``.npy`` file
        (memory-mapped), a zarr store folder (v2 or v3, OME-Zarr included), a ``.png``,
        ``.jpg`` or ``.bmp`` picture (read whole), or an array in memory (not copied).
    key : str or int, optional
        Which image of several: a TIFF's series index, or the path of an array or
        OME-Zarr image inside a zarr group (``"raw"``, ``"labels/cells"``).
    level : int
        Resolution level of a pyramid (OME-Zarr, pyramidal TIFF); 0 is full resolution.
    axes : str, optional
        Axis names in order, letters from ``"tczyx"`` (``"czyx"``); overrides the file's.
        Guessed without metadata: ``"yx"``, ``"zyx"``, ``"tzyx"``, or ``"yxc"``,
        ``"zyxc"``, ``"tzyxc"`` when the last axis has 3 or 4 values.

    Returns
    -------
    Volume
        Lazy data (nothing read yet) with its axes and scale.

    Raises
    ------
    InvalidInputError
        The path does not exist or has an unknown format; the file cannot be decoded
        (empty, cut short, a damaged TIFF page index or zarr metadata, not the format its
        suffix says); ``key`` or ``level`` does not exist (the message lists those that
        do); ``axes`` is invalid or does not match the data, or cannot be guessed.
        Damage found only when data is read raises it then (see :meth:`Volume.planes_view`).
    """
    if isinstance(source, (str, Path)):
        return _open_path(Path(source), key, level, axes)
    import zarr

    if isinstance(source, zarr.Group):
        return _open_group(source, key, level, axes, f"zarr group {source.store_path}")
    if not hasattr(source, "shape") or not hasattr(source, "dtype"):
        raise InvalidInputError(
            f"Cannot open a {type(source).__name__} as a volume: expected a file path, "
            "a zarr store folder, or an array (numpy, dask, zarr)."
        )
    return _open_array(source, key, level, axes, f"{type(source).__module__.split('.')[0]} array")


def _open_array(data, key, level, axes: str | None, source: str, scale=None) -> Volume:
    """A Volume of one array: axes given, from zarr dimension names, or guessed."""
    if key is not None or level != 0:
        names = [n for n, extra in (("key", key is not None), ("level", level != 0)) if extra]
        given = " and ".join(f"{n}={key if n == 'key' else level!r}" for n in names)
        raise InvalidInputError(
            f"{given} {'were' if len(names) > 1 else 'was'} given, but {source} holds a "
            f"single image at one resolution: leave out {' and '.join(n + '=' for n in names)}."
        )
    names = getattr(getattr(data, "metadata", None), "dimension_names", None) or ["?"]
    if not axes and all(str(n).lower() in AXIS_LETTERS for n in names):
        axes = "".join(names)  # zarr v3 dimension names that are axis letters
    shape = tuple(int(s) for s in data.shape)
    if not axes:
        axes = (RGB_GUESSES if shape and shape[-1] in (3, 4) else GUESSES).get(len(shape))
    if not axes:
        raise InvalidInputError(
            f"Cannot tell the axes of {source} with shape {shape}: pass axes= with one "
            f"letter per axis from 'tczyx', e.g. axes={EXAMPLE_AXES.get(len(shape), 'zyx')!r}."
        )
    return Volume(data, axes, scale or (1.0,) * len(axes), source)


def _check_index(value, count: int, what: str, source: str) -> int:
    """``value`` as an index below ``count``; the message lists the valid ones."""
    valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not valid or not 0 <= value < count:
        noun = "resolution levels (0 is full resolution)" if what == "level" else "series"
        raise InvalidInputError(
            f"{what}={value!r} does not exist in {source}: it has {count} {noun}; pass "
            f"{what}= an integer from 0 to {count - 1}."
        )
    return int(value)


def check_axes(axes: str, ndim: int, source: str = "the data") -> str:
    """Validate axis names for ``ndim``-D data; returns them in lower case.

    Raises
    ------
    InvalidInputError
        Not a string, a letter outside ``"tczyx"``, a repeated letter, ``y`` or ``x``
        missing, or a length other than ``ndim``.
    """
    low = axes.lower() if isinstance(axes, str) else ""
    bad = sorted(set(low) - set(AXIS_LETTERS))
    problem = (
        "it is not a string" if not isinstance(axes, str)
        else f"letters {bad} are not axis names" if bad
        else "a letter appears twice" if len(set(low)) != len(low)
        else "'y' and 'x' are required" if not {"y", "x"} <= set(low)
        else f"{len(low)} letters for {ndim}-D data" if len(low) != ndim
        else None
    )  # fmt: skip
    if problem:
        raise InvalidInputError(
            f"Invalid axes {axes!r} for {source} ({ndim}-D): {problem}. Give one letter "
            f"per axis from 't', 'c', 'z', 'y', 'x', each at most once, e.g. "
            f"axes={EXAMPLE_AXES.get(ndim, 'zyx')!r}."
        )
    return low


def _open_path(path: Path, key, level: int, axes: str | None) -> Volume:
    from napari_sam.io.file_errors import unreadable_file
    from napari_sam.io.images import PIL_SUFFIXES, TIFF_SUFFIXES, read_image

    if not path.exists():
        raise InvalidInputError(f"No such file or folder: {path}. Check the path.")
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ZARR_MARKERS):
            raise InvalidInputError(
                f"Folder {path} is not a zarr store (no zarr.json, .zgroup or .zarray "
                "inside): give the store's root folder or a TIFF file."
            )
        import zarr

        try:
            node = zarr.open(path, mode="r")
        except Exception as error:  # broken metadata: JSON, codecs, versions
            raise unreadable_file(path, "a zarr store", error) from error
        if isinstance(node, zarr.Group):
            return _open_group(node, key, level, axes, f"zarr store {path}")
        return _open_array(node, key, level, axes, f"zarr array {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path, key, level, axes)
    if suffix == ".npy":
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as error:  # a bad header, a file shorter than its header says
            raise unreadable_file(path, "a numpy .npy file", error) from error
        return _open_array(data, key, level, axes, f"numpy file {path}")
    if suffix in PIL_SUFFIXES:  # a 2D picture: small, read whole
        return _open_array(read_image(path), key, level, axes, f"image file {path}")
    raise InvalidInputError(
        f"Unknown format {path.suffix!r} for {path}: expected a .tif/.tiff, .npy, .png, "
        ".jpg or .bmp file, or a zarr store folder (OME-Zarr included)."
    )


def _open_group(group, key, level: int, axes: str | None, source: str) -> Volume:
    """An array or OME-Zarr image from a zarr group."""
    import zarr

    node = group
    if key is not None:
        try:
            node = group[str(key)]
        except KeyError:
            raise InvalidInputError(
                f"key={key!r} is not in {source}. Available: {_group_choices(group)}."
            ) from None
        source = f"{source} key {str(key)!r}"
    if isinstance(node, zarr.Array):
        return _open_array(node, None, level, axes, source)
    meta = _multiscales(node)
    if meta is None:
        raise InvalidInputError(
            f"{source} is a group, not an image: pass key= with one of {_group_choices(node)}."
        )
    datasets = meta.get("datasets", [])
    level = _check_index(level, len(datasets), "level", f"OME-Zarr {source}")
    data = node[datasets[level]["path"]]
    source = f"OME-Zarr {source} level {level}"
    scale = np.ones(len(data.shape))
    for transforms in (datasets[level], meta):  # the image's transforms apply after the level's
        for transform in transforms.get("coordinateTransformations", []):
            if transform.get("type") == "scale" and "scale" in transform:
                scale = scale * np.asarray(transform["scale"], dtype=float)
    axes = axes or _ngff_axes(meta.get("axes"), source)
    return _open_array(data, None, 0, axes, source, tuple(scale.tolist()))


def _group_choices(group) -> str:
    """Images inside a group: arrays and OME-Zarr groups (not their level arrays)."""
    import zarr

    images: list[str] = []
    for path, node in sorted(group.members(max_depth=None), key=lambda m: m[0]):
        inside = any(path.startswith(image + "/") for image in images)  # a level of an image
        if not inside and (isinstance(node, zarr.Array) or _multiscales(node) is not None):
            images.append(path)
    return ", ".join(repr(p) for p in images) or "none (the group holds no arrays)"


def _multiscales(group) -> dict | None:
    """The first NGFF multiscales entry (0.5 nests it under ``"ome"``), or None."""
    entries = group.attrs.get("ome", {}).get("multiscales") or group.attrs.get("multiscales")
    return entries[0] if entries else None


def _ngff_axes(axes_meta, source: str) -> str | None:
    """Axis letters from NGFF axes (dicts in 0.4+, names in 0.3); None to guess."""
    letters: list[str] = []
    for axis in axes_meta or []:
        name = (axis.get("name", "") if isinstance(axis, dict) else str(axis)).lower()
        kind = axis.get("type") if isinstance(axis, dict) else None
        letter = name if name in AXIS_LETTERS else NGFF_TYPES.get(kind or "")
        if letter is None:
            raise InvalidInputError(
                f"Axis {name!r} of {source} is not one of t, c, z, y, x: pass axes= "
                "naming each axis with those letters, e.g. axes='czyx'."
            )
        letters.append(letter)
    return "".join(letters) or None


def _open_tiff(path: Path, key, level: int, axes: str | None) -> Volume:
    import zarr

    from napari_sam.io.file_errors import unreadable_file
    from napari_sam.io.tiff_files import open_tiff

    tif = open_tiff(path)  # stays open while the zarr view uses it
    index = _check_index(0 if key is None else key, len(tif.series), "key", f"TIFF {path}")
    series = tif.series[index]
    level = _check_index(level, len(series.levels), "level", f"series {index} of {path}")
    try:
        data = zarr.open_array(series.aszarr(level=level), mode="r")
    except Exception as error:  # page index or tags that do not describe an image
        raise unreadable_file(path, "a TIFF file", error) from error
    source = f"{path} series {index} level {level}"
    axes = axes or _tiff_axes(series.levels[level].axes, source)
    fits = isinstance(axes, str) and len(axes) == data.ndim  # else _open_array reports it
    scale = _tiff_scale(tif, index, axes.lower(), level) if fits else None
    return _open_array(data, None, 0, axes, source, scale)


def _tiff_axes(letters: str, source: str) -> str:
    """Map tifffile's axis letters; unknown ones (Q, I, ...) become z, then t."""
    axes = [TIFF_LETTERS.get(letter) for letter in letters]
    unknown = [i for i, a in enumerate(axes) if a is None]
    free = [a for a in "zt" if a not in axes]
    if len({a for a in axes if a}) != len(axes) - len(unknown) or len(unknown) > len(free):
        raise InvalidInputError(
            f"Cannot map tifffile axes {letters!r} of {source} to t, c, z, y, x: pass "
            f"axes= with one letter per axis, e.g. axes={EXAMPLE_AXES.get(len(letters))!r}."
        )
    for i, letter in zip(reversed(unknown), free):
        axes[i] = letter
    return "".join(a or "" for a in axes)


def _tiff_scale(tif, index: int, axes: str, level: int) -> tuple[float, ...]:
    """Pixel sizes from OME-XML (micrometre, second), ImageJ spacing and frame interval,
    and the resolution tags; those of the chosen series and level."""
    series = tif.series[index]
    page = series.keyframe  # the first page, where the resolution tags are
    per_unit = page.get_resolution(MICROMETRE if page.resolutionunit > 1 else None)
    sizes = dict(zip("xy", (1.0 / r if r > 0 else 1.0 for r in per_unit)))
    imagej = tif.imagej_metadata or {}
    sizes.update(z=float(imagej.get("spacing", 1.0)), t=float(imagej.get("finterval", 1.0)))
    xml = ElementTree.fromstring(tif.ome_metadata) if tif.ome_metadata else ElementTree.Element("")
    pixels = [e for e in xml.iter() if e.tag.endswith("}Pixels")][index : index + 1]
    sizes.update(
        {a: float(p.get(n) or 1.0) for p in pixels for a, n in OME_SIZES.items() if p.get(n)}
    )
    base, shape = series.shape, series.levels[level].shape
    return tuple(sizes.get(a, 1.0) * (base[i] / shape[i]) for i, a in enumerate(axes))
