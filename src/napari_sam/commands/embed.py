"""``napari-sam embed``: encode the planes of an image or volume into a resumable cache."""

from __future__ import annotations

import argparse
import sys

# The flags' defaults and help texts are read from the model registry and the tiling.
from napari_sam.commands.arguments import (
    add_architecture_argument,
    add_device_argument,
    add_precision_argument,
)
from napari_sam.engine.model import DEFAULT_MODEL
from napari_sam.engine.tiling.grid import DEFAULT_HALO, DEFAULT_WINDOW


def register(commands) -> None:
    """Add the ``embed`` subcommand to the ``napari-sam`` parser."""
    embed = commands.add_parser(
        "embed",
        help="encode every plane of an image or volume into an embedding cache",
        description="Encode planes once into a zarr embedding cache; rerun to resume.",
    )
    embed.add_argument("input", help="TIFF, zarr or OME-Zarr (folder), or .npy")
    embed.add_argument("--cache", required=True, help="output embedding cache (a .zarr folder)")
    embed.add_argument(
        "--model", default=DEFAULT_MODEL, help="model name or checkpoint file (default %(default)s)"
    )
    add_architecture_argument(embed)
    add_device_argument(embed)
    add_precision_argument(embed)
    embed.add_argument("--key", help="series (TIFF) or array path (zarr) inside the input")
    embed.add_argument("--level", type=int, default=0, help="OME-Zarr resolution level (0 = full)")
    embed.add_argument(
        "--axes", help="axis names of the input, e.g. zyx, tczyx (default: from the file)"
    )
    embed.add_argument("--channel", type=int, help="channel to segment in multichannel data")
    embed.add_argument(
        "--z-range", metavar="START:STOP", help="only these planes of the first stack axis"
    )
    embed.add_argument(
        "--float16", action="store_true", help="store features as float16 (half the disk)"
    )
    embed.add_argument(
        "--tile",
        type=int,
        metavar="N",
        help="tile interior side in pixels; 0 = whole planes (default: tiles only "
        "for planes too large for the encoder, "
        f"{DEFAULT_WINDOW - 2 * DEFAULT_HALO} + halo {DEFAULT_HALO})",
    )
    embed.add_argument(
        "--halo",
        type=int,
        metavar="N",
        help=f"overlap around each tile in pixels (default {DEFAULT_HALO} / "
        "upscale, at most tile / 4)",
    )
    embed.add_argument(
        "--upscale",
        type=float,
        default=1.0,
        metavar="F",
        help="encoder pixels per image pixel, e.g. 2 for small cells (default 1)",
    )
    embed.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a cache made for other data/settings, or a damaged one (never a "
        "folder holding other files)",
    )
    embed.set_defaults(handler=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    """``napari-sam embed``: planes of a volume into a resumable embedding cache.

    The cache's lock is held for the whole run, so a second ``embed`` (or a segment-everything
    store) at the same path stops at once; ``--overwrite`` replaces only a cache.
    """
    from napari_sam.batch.embedding import open_cached_session
    from napari_sam.io.store_lock import StoreLock
    from napari_sam.io.stores import EMBEDDING_CACHE, check_store_path
    from napari_sam.io.volumes import open_volume

    cache = check_store_path(args.cache, EMBEDDING_CACHE, source=args.input)
    with StoreLock(cache, EMBEDDING_CACHE.noun) as lock:  # a second run stops here at once
        volume = open_volume(args.input, key=args.key, level=args.level, axes=args.axes)
        data, channel_axis = volume.planes_view(), "c" in volume.axes
        session = open_cached_session(
            data,
            args.cache,
            model=_model(args.model, args.architecture, args.device),
            channel_axis=channel_axis,
            channel=args.channel,
            feature_dtype="float16" if args.float16 else "float32",
            overwrite=args.overwrite,
            capacity=1,
            tile=args.tile,
            halo=args.halo,
            upscale=args.upscale,
            lock=lock,
            precision=args.precision,
        )
        _embed_planes(args, session, volume.axes)
    return 0


def _embed_planes(args: argparse.Namespace, session, axes: str) -> None:
    """Encode the planes asked for with a progress bar, then print the summary line."""
    from tqdm import tqdm

    from napari_sam.batch.embedding import embed_volume
    from napari_sam.engine.annotation.tiled_session import TiledSession

    planes = _plane_keys(session.layout, args.z_range)
    grid = session.cache.grid
    unit = "plane" if grid is None else "tile"
    with tqdm(
        total=len(planes) * len(grid or [0]), unit=unit, desc="embedding", file=sys.stderr
    ) as bar:
        summary = embed_volume(
            session, planes, progress=lambda done, total: bar.update(done - bar.n)
        )
    tiling = (
        "whole planes"
        if not isinstance(session, TiledSession)
        else (
            f"{summary.tiles_per_plane} tiles per plane (tile {session.tile}, halo {session.halo}, "
            f"upscale {session.upscale:g})"
        )
    )
    counted = "" if grid is None else " tiles"
    print(
        f"{args.cache}: {summary.planes} planes, {tiling}, {summary.encoded}{counted} encoded now, "
        f"{summary.reused}{counted} already cached, {summary.seconds:.1f} s "
        f"({session.model_id}, encoder {session.predictor.precision}, axes {axes})"
    )


def _plane_keys(layout, z_range: str | None) -> list[tuple[int, ...]]:
    import numpy as np

    from napari_sam.commands.arguments import parse_z_range
    from napari_sam.errors import InvalidInputError

    keys: list[tuple[int, ...]] = [()]
    if layout.stack_ndim:
        keys = [tuple(int(i) for i in k) for k in np.ndindex(*layout.stack_shape)]
    if z_range is None:
        return keys
    start, stop = parse_z_range(z_range)
    if not layout.stack_ndim or not stop <= layout.stack_shape[0]:
        raise InvalidInputError(
            f"--z-range {z_range} does not fit planes "
            f"0..{layout.stack_shape[0] if layout.stack_ndim else 0}."
        )
    return [k for k in keys if start <= k[0] < stop]


def _model(model: str, architecture: str | None, device: str | None):
    """``--model`` as a name, or loaded with the ``--architecture`` and ``--device`` given."""
    if architecture is None and device is None:
        return model
    from napari_sam.engine.model.loading import load_model

    return load_model(model, device, architecture=architecture)
