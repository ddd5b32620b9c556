"""Tests for napari_sam.io.volumes: lazy volumes from TIFF, zarr, OME-Zarr and arrays."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
import zarr.storage

from napari_sam.engine.prediction.planes import plane_layout, read_plane
from napari_sam.errors import InvalidInputError
from napari_sam.io.volumes import TransposedArray, Volume, open_volume

CZYX = np.arange(2 * 4 * 6 * 8, dtype=np.uint16).reshape(2, 4, 6, 8)


class CountingStore(zarr.storage.WrapperStore):
    """A store that records every chunk key read (metadata documents are not counted)."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.reads: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        if not key.endswith(("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")):
            self.reads.append(key)
        return await super().get(key, prototype, byte_range)


def counting_array(tmp_path) -> tuple[zarr.Array, CountingStore]:
    """CZYX (2, 4, 6, 8) stored in chunks of (1, 2, 3, 4): 2 x 2 x 2 x 2 = 16 chunks."""
    array = zarr.create_array(
        tmp_path / "c.zarr", shape=CZYX.shape, chunks=(1, 2, 3, 4), dtype=CZYX.dtype
    )
    array[:] = CZYX
    store = CountingStore(zarr.storage.LocalStore(tmp_path / "c.zarr", read_only=True))
    return zarr.open_array(store, mode="r"), store


def plane_chunks(z_chunk: int) -> set[str]:
    """Keys of the chunks holding z planes of chunk row ``z_chunk``: all c, y and x chunks."""
    return {f"c/{c}/{z_chunk}/{y}/{x}" for c in range(2) for y in range(2) for x in range(2)}


def write_ome_zarr(path, version: str) -> None:
    """Two-level CZYX OME-Zarr image (level 1 halves y and x), NGFF 0.4 or 0.5."""
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("0", data=CZYX)
    group.create_array("1", data=CZYX[:, :, ::2, ::2])
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space"},
        {"name": "x", "type": "space"},
    ]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 2.0, 0.25 * 2**level, 0.25 * 2**level]},
                {"type": "translation", "translation": [0.0, 0.0, 0.0, 0.0]},
            ],
        }
        for level in (0, 1)
    ]
    multiscale = {
        "version": version,
        "axes": axes,
        "datasets": datasets,
        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.5, 1.0, 1.0]}],
    }
    if version == "0.4":
        group.attrs["multiscales"] = [multiscale]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}


# In-memory arrays


def test_numpy_passes_through_with_guessed_axes():
    data = np.zeros((4, 6, 8), np.float32)
    volume = open_volume(data)
    assert volume.data is data
    assert (volume.axes, volume.shape, volume.dtype) == ("zyx", (4, 6, 8), np.float32)
    assert volume.scale == (1.0, 1.0, 1.0)
    assert volume.planes_view() is data
    assert (volume.stack_axes, volume.channel_axis) == ("z", False)


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((6, 8), "yx"),
        ((6, 8, 3), "yxc"),
        ((4, 6, 8), "zyx"),
        ((2, 4, 6, 8), "tzyx"),
        ((4, 6, 8, 4), "zyxc"),
        ((2, 4, 6, 8, 3), "tzyxc"),
    ],
)
def test_axes_guessed_without_metadata_never_invent_channels(shape, axes):
    assert open_volume(np.zeros(shape, np.uint8)).axes == axes


def test_explicit_axes_are_lower_cased_and_reorder_the_view():
    volume = open_volume(CZYX, axes="CZYX")
    assert (volume.axes, volume.planes_axes, volume.stack_axes) == ("czyx", "zyxc", "z")
    assert volume.channel_axis
    assert np.array_equal(volume.planes_view(), np.moveaxis(CZYX, 0, -1))


def test_zarr_dimension_names_give_the_axes(tmp_path):
    array = zarr.create_array(
        tmp_path / "a.zarr", shape=(3, 6, 8), dtype="u1", dimension_names=["c", "y", "x"]
    )
    assert open_volume(array).axes == "cyx"
    assert open_volume(tmp_path / "a.zarr").axes == "cyx"
    assert open_volume(tmp_path / "a.zarr", axes="zyx").axes == "zyx"


def test_npy_file_is_memory_mapped(tmp_path):
    np.save(tmp_path / "a.npy", CZYX)
    volume = open_volume(tmp_path / "a.npy", axes="czyx")
    assert isinstance(volume.data, np.memmap)
    assert np.array_equal(volume.planes_view()[3], np.moveaxis(CZYX, 0, -1)[3])


# Reordering


@pytest.mark.parametrize("wrap", ["numpy", "dask", "zarr"])
def test_planes_view_equals_moveaxis(wrap):
    data = {
        "numpy": lambda: CZYX,
        "dask": lambda: da.from_array(CZYX, chunks=(1, 2, 3, 4)),
        "zarr": lambda: zarr.array(CZYX, chunks=(1, 2, 3, 4)),
    }[wrap]()
    view = open_volume(data, axes="czyx").planes_view()
    expected = np.moveaxis(CZYX, 0, -1)  # (z, y, x, c)
    assert view.shape == (4, 6, 8, 2)
    assert np.array_equal(np.asarray(view), expected)
    for key in [
        2,
        -1,
        (1, slice(3, 5), Ellipsis, 0),
        (3, slice(None), 2),
        (Ellipsis, 1),
        (slice(1, 4, 2), 0),
        (np.int64(2), 5, 7),
    ]:
        assert np.array_equal(np.asarray(view[key]), expected[key]), key
    layout = plane_layout(view.shape, channel_axis=True)  # the engine's reading of the view
    assert (layout.stack_shape, layout.plane_shape) == ((4,), (6, 8))
    assert np.array_equal(read_plane(view, layout, (2,)), expected[2])


def test_transposed_array_three_axes_moved():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    view = TransposedArray(data, (2, 0, 3, 1))
    expected = data.transpose(2, 0, 3, 1)
    assert (view.shape, view.ndim, view.dtype) == ((4, 2, 5, 3), 4, data.dtype)
    assert np.array_equal(np.asarray(view), expected)
    assert np.array_equal(view[1, :, 2], expected[1, :, 2])
    assert np.array_equal(view[..., 0], expected[..., 0])


# Lazy reads: one plane reads the chunks of that plane only


def test_zarr_plane_reads_only_its_chunks(tmp_path):
    array, store = counting_array(tmp_path)
    volume = open_volume(array, axes="czyx")
    assert store.reads == []  # opening reads metadata only
    plane = volume.planes_view()[3]  # z = 3 lies in z chunk 1
    assert np.array_equal(plane, np.moveaxis(CZYX[:, 3], 0, -1))
    assert sorted(store.reads) == sorted(plane_chunks(1))  # 8 of 16 chunks, each once


def test_dask_plane_reads_only_its_chunks(tmp_path):
    array, store = counting_array(tmp_path)
    volume = open_volume(da.from_zarr(array), axes="czyx")
    view = volume.planes_view()
    assert isinstance(view, da.Array) and store.reads == []
    plane = np.asarray(view[1])  # z = 1 lies in z chunk 0
    assert np.array_equal(plane, np.moveaxis(CZYX[:, 1], 0, -1))
    assert sorted(store.reads) == sorted(plane_chunks(0))


def test_ome_group_plane_reads_only_its_chunks(tmp_path):
    write_ome_zarr(tmp_path / "ome.zarr", "0.5")
    store = CountingStore(zarr.storage.LocalStore(tmp_path / "ome.zarr", read_only=True))
    volume = open_volume(zarr.open_group(store, mode="r"))
    assert store.reads == []
    plane = volume.planes_view()[2, 1:3]  # level 0 is one chunk per array
    assert np.array_equal(plane, np.moveaxis(CZYX[:, 2, 1:3], 0, -1))
    assert store.reads == ["0/c/0/0/0/0"]


# TIFF


def test_tiff_plane_reads_only_its_pages(tmp_path, monkeypatch):
    tifffile.imwrite(
        tmp_path / "ij.tif", CZYX.transpose(1, 0, 2, 3), imagej=True, metadata={"axes": "ZCYX"}
    )  # 8 pages: z-major, then channels
    stores = []
    aszarr = tifffile.TiffPageSeries.aszarr

    def counting_aszarr(series, **kwargs):
        stores.append(CountingStore(aszarr(series, **kwargs)))
        return stores[-1]

    monkeypatch.setattr(tifffile.TiffPageSeries, "aszarr", counting_aszarr)
    plane = open_volume(tmp_path / "ij.tif").planes_view()[3]
    assert np.array_equal(plane, np.moveaxis(CZYX[:, 3], 0, -1))
    assert sorted(stores[0].reads) == ["3.0.0.0", "3.1.0.0"]  # the 2 pages of z = 3


def test_tiff_imagej_axes_spacing_and_resolution(tmp_path):
    tifffile.imwrite(
        tmp_path / "ij.tif",
        CZYX.transpose(1, 0, 2, 3),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "ZCYX", "spacing": 2.5, "unit": "um"},
    )
    volume = open_volume(tmp_path / "ij.tif")
    assert (volume.axes, volume.shape) == ("zcyx", (4, 2, 6, 8))
    assert volume.scale == (2.5, 1.0, 0.5, 0.5)
    assert volume.planes_scale == (2.5, 0.5, 0.5, 1.0)
    assert isinstance(volume.data, zarr.Array)
    assert np.array_equal(volume.planes_view()[3], np.moveaxis(CZYX[:, 3], 0, -1))


def test_tiff_shaped_axes_and_time_interval(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", CZYX[0], metadata={"axes": "ZYX"})
    volume = open_volume(tmp_path / "s.tif")
    assert (volume.axes, volume.scale) == ("zyx", (1.0, 1.0, 1.0))
    assert np.array_equal(volume.data[2], CZYX[0, 2])
    tifffile.imwrite(
        tmp_path / "t.tif", CZYX, imagej=True, metadata={"axes": "TZYX", "finterval": 30.0}
    )
    assert open_volume(tmp_path / "t.tif").scale == (30.0, 1.0, 1.0, 1.0)


def test_tiff_unknown_axes_become_z_then_t(tmp_path):
    tifffile.imwrite(tmp_path / "q.tif", CZYX, photometric="minisblack")
    assert tifffile.TiffFile(tmp_path / "q.tif").series[0].axes == "QQYX"
    assert open_volume(tmp_path / "q.tif").axes == "tzyx"
    assert open_volume(tmp_path / "q.tif", axes="czyx").axes == "czyx"
    rgb_stack = np.zeros((2, 6, 8, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb_stack.tif", rgb_stack, photometric="rgb")
    assert tifffile.TiffFile(tmp_path / "rgb_stack.tif").series[0].axes == "QYXS"
    assert open_volume(tmp_path / "rgb_stack.tif").axes == "zyxc"


def test_tiff_rgb_samples_are_channels(tmp_path):
    rgb = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    volume = open_volume(tmp_path / "rgb.tif")
    assert (volume.axes, volume.planes_axes, volume.stack_axes) == ("yxc", "yxc", "")
    assert np.array_equal(volume.planes_view()[...], rgb)


def test_tiff_centimetre_resolution_in_micrometres(tmp_path):
    tifffile.imwrite(
        tmp_path / "cm.tif", CZYX[0, 0], resolution=(40_000, 20_000), resolutionunit="CENTIMETER"
    )
    assert open_volume(tmp_path / "cm.tif").scale == pytest.approx((0.5, 0.25))


def test_ome_tiff_physical_sizes(tmp_path):
    tifffile.imwrite(
        tmp_path / "a.ome.tif",
        CZYX.transpose(1, 0, 2, 3),
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.5},
    )
    volume = open_volume(tmp_path / "a.ome.tif")
    assert (volume.axes, volume.scale) == ("zcyx", (1.5, 1.0, 0.4, 0.3))


def test_tiff_series_chosen_by_key(tmp_path):
    with tifffile.TiffWriter(tmp_path / "m.tif") as writer:
        writer.write(CZYX[0, 0], photometric="minisblack")
        writer.write(CZYX[1], photometric="minisblack", metadata={"axes": "ZYX"})
    first, second = open_volume(tmp_path / "m.tif"), open_volume(tmp_path / "m.tif", key=1)
    assert (first.axes, first.shape, second.axes, second.shape) == ("yx", (6, 8), "zyx", (4, 6, 8))
    assert np.array_equal(second.data[1], CZYX[1, 1])
    assert "series 1" in second.source
    with pytest.raises(
        InvalidInputError,
        match=r"key=2 does not exist in TIFF .*m.tif: it has 2 series; "
        r"pass key= an integer from 0 to 1\.",
    ):
        open_volume(tmp_path / "m.tif", key=2)
    with pytest.raises(InvalidInputError, match="key='raw' does not exist"):
        open_volume(tmp_path / "m.tif", key="raw")


def test_tiff_pyramid_level(tmp_path):
    with tifffile.TiffWriter(tmp_path / "p.ome.tif") as writer:
        writer.write(
            CZYX[0],
            subifds=1,
            photometric="minisblack",
            metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
        writer.write(CZYX[0, :, ::2, ::2], subfiletype=1, photometric="minisblack")
    low = open_volume(tmp_path / "p.ome.tif", level=1)
    assert (low.axes, low.shape, low.scale) == ("zyx", (4, 3, 4), (1.0, 1.0, 1.0))
    assert np.array_equal(low.data[...], CZYX[0, :, ::2, ::2])
    assert open_volume(tmp_path / "p.ome.tif").scale == (1.0, 0.5, 0.5)
    with pytest.raises(
        InvalidInputError,
        match=r"level=2 does not exist in series 0 of .*: it has "
        r"2 resolution levels \(0 is full resolution\)",
    ):
        open_volume(tmp_path / "p.ome.tif", level=2)


# zarr stores and OME-Zarr


def test_zarr_group_key_selects_an_array(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("raw", data=CZYX, dimension_names=["c", "z", "y", "x"])
    group.create_group("labels").create_array("cells", data=CZYX[0])
    raw = open_volume(tmp_path / "g.zarr", key="raw")
    assert (raw.axes, raw.shape) == ("czyx", CZYX.shape)
    assert np.array_equal(raw.data[1, 2], CZYX[1, 2])
    assert open_volume(group, key="labels/cells").axes == "zyx"
    with pytest.raises(
        InvalidInputError,
        match=r"is a group, not an image: pass key= with "
        r"one of 'labels/cells', 'raw'",
    ):
        open_volume(tmp_path / "g.zarr")
    with pytest.raises(
        InvalidInputError,
        match=r"key='nuclei' is not in .* Available: "
        r"'labels/cells', 'raw'",
    ):
        open_volume(tmp_path / "g.zarr", key="nuclei")
    with pytest.raises(InvalidInputError, match=r"level=1 was given, but .* single image"):
        open_volume(tmp_path / "g.zarr", key="raw", level=1)
    empty = zarr.open_group(tmp_path / "e.zarr", mode="w")
    with pytest.raises(InvalidInputError, match="none \\(the group holds no arrays\\)"):
        open_volume(empty)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels_axes_and_scale(tmp_path, version):
    write_ome_zarr(tmp_path / "ome.zarr", version)
    full = open_volume(tmp_path / "ome.zarr")
    assert (full.axes, full.shape, full.scale) == ("czyx", (2, 4, 6, 8), (1.0, 3.0, 0.25, 0.25))
    low = open_volume(tmp_path / "ome.zarr", level=1)
    assert (low.shape, low.scale) == ((2, 4, 3, 4), (1.0, 3.0, 0.5, 0.5))
    assert low.planes_scale == (3.0, 0.5, 0.5, 1.0)
    assert np.array_equal(low.planes_view()[2], np.moveaxis(CZYX[:, 2, ::2, ::2], 0, -1))
    with pytest.raises(
        InvalidInputError,
        match=r"level=2 does not exist in OME-Zarr .* it has "
        r"2 resolution levels .* from 0 to 1\.",
    ):
        open_volume(tmp_path / "ome.zarr", level=2)


def test_ome_zarr_inside_a_group_is_listed_and_opened(tmp_path):
    zarr.open_group(tmp_path / "root.zarr", mode="w")
    write_ome_zarr(tmp_path / "root.zarr" / "image", "0.5")
    with pytest.raises(InvalidInputError, match=r"one of 'image'\."):
        open_volume(tmp_path / "root.zarr")
    assert open_volume(tmp_path / "root.zarr", key="image", level=1).shape == (2, 4, 3, 4)


def test_ome_zarr_unknown_axis_name_needs_axes(tmp_path):
    group = zarr.open_group(tmp_path / "o.zarr", mode="w")
    group.create_array("0", data=CZYX[0])
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {"axes": [{"name": "angle"}, {"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}
        ],
    }
    with pytest.raises(InvalidInputError, match=r"Axis 'angle' .* is not one of t, c, z, y, x"):
        open_volume(tmp_path / "o.zarr")
    assert open_volume(tmp_path / "o.zarr", axes="tyx").scale == (1.0, 1.0, 1.0)


# Errors


@pytest.mark.parametrize(
    "axes, problem",
    [
        ("zyq", r"letters \['q'\] are not axis names"),
        ("zzx", "a letter appears twice"),
        ("czy", "'y' and 'x' are required"),
        ("yx", "2 letters for 3-D data"),
    ],
)
def test_invalid_axes(axes, problem):
    with pytest.raises(
        InvalidInputError,
        match=rf"Invalid axes '{axes}' .*{problem}.* "
        r"e.g. axes='zyx'",
    ):
        open_volume(np.zeros((4, 6, 8)), axes=axes)


def test_axes_must_be_a_string():
    with pytest.raises(
        InvalidInputError, match="Invalid axes 3 for x \\(3-D\\): it is not a string"
    ):
        Volume(np.zeros((4, 6, 8)), 3, (1.0,) * 3, "x")


def test_wrong_axes_length_for_a_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", CZYX[0], metadata={"axes": "ZYX"})
    with pytest.raises(InvalidInputError, match="2 letters for 3-D data"):
        open_volume(tmp_path / "a.tif", axes="yx")


def test_unguessable_axes(tmp_path):
    with pytest.raises(
        InvalidInputError,
        match=r"Cannot tell the axes .* shape \(2, 2, 4, 6, "
        r"8\): pass axes=.* axes='tczyx'",
    ):
        open_volume(np.zeros((2, 2, 4, 6, 8)))
    tifffile.imwrite(tmp_path / "q3.tif", np.zeros((2, 2, 2, 6, 8), np.uint8))  # three unknown axes
    with pytest.raises(
        InvalidInputError, match=r"tifffile axes 'QQQYX' of .*q3.tif .*axes='tczyx'"
    ):
        open_volume(tmp_path / "q3.tif")
    tifffile.imwrite(
        tmp_path / "cs.tif",
        np.zeros((2, 6, 8, 3), np.uint8),
        photometric="rgb",
        metadata={"axes": "CYXS"},
    )  # channels twice
    with pytest.raises(InvalidInputError, match=r"tifffile axes 'CYXS' of .*cs.tif .*axes='czyx'"):
        open_volume(tmp_path / "cs.tif")


def test_missing_path_and_unknown_formats(tmp_path):
    with pytest.raises(InvalidInputError, match=r"No such file or folder: .*nope.tif"):
        open_volume(tmp_path / "nope.tif")
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(InvalidInputError, match=r"Cannot read .*a.png as a PNG image"):
        open_volume(str(tmp_path / "a.png"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidInputError, match=r"is not a zarr store \(no zarr.json"):
        open_volume(tmp_path / "folder")
    with pytest.raises(InvalidInputError, match="Cannot open a list as a volume"):
        open_volume([[1, 2], [3, 4]])


def test_key_and_level_rejected_for_single_images(tmp_path):
    with pytest.raises(
        InvalidInputError,
        match="key='raw' was given, but numpy array "
        "holds a single image at one resolution: leave "
        "out key=",
    ):
        open_volume(CZYX, key="raw")
    with pytest.raises(InvalidInputError, match="level=1 was given, but dask array holds"):
        open_volume(da.zeros((6, 8)), level=1)
    zarr.create_array(tmp_path / "a.zarr", shape=(6, 8), dtype="u1")
    with pytest.raises(InvalidInputError, match="key=0 was given, but zarr array"):
        open_volume(tmp_path / "a.zarr", key=0)


def test_scale_length_must_match_axes():
    with pytest.raises(
        InvalidInputError,
        match=r"Scale \(1.0, 1.0\) has 2 values for axes "
        "'zyx'",
    ):
        Volume(np.zeros((4, 6, 8)), "zyx", (1, 1), "test")


def test_unsupported_indices_on_a_reordered_view():
    view = TransposedArray(CZYX, (1, 2, 3, 0))
    for key in ([0, 1], np.array([0, 1]), (0, 0, 0, 0, 0), (..., 0, ...)):
        with pytest.raises(
            InvalidInputError,
            match=r"not supported on a reordered view of 4 "
            r"axes: use at most 4 integers",
        ):
            view[key]


def test_import_loads_no_torch_or_gui():
    code = (
        "import sys, napari_sam.io.volumes; "
        "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'magicgui') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
