"""``napari-sam predict STACK --prompts FILE [--propagate z|t]``: prompts replayed on a stack.

The prompts file is an annotator record or a plain list of objects (see
:mod:`~napari_sam.engine.annotation.prompt_files`). Each object is decoded on its plane;
with ``--propagate`` it is carried through the stack along that axis until it ends
(:mod:`~napari_sam.engine.annotation.propagation`). Labels go to ``.tif``, ``.npy`` or a
``.zarr`` array (written beside, then moved into place, so a crash never leaves half a
result under the final name). With ``--cache`` the embeddings persist and a rerun
decodes only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

LABEL_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")


def add_stack_arguments(predict: argparse.ArgumentParser) -> None:
    """The ``predict`` options for prompts files and propagation."""
    from napari_sam.engine.annotation.projection import PROJECTIONS
    from napari_sam.engine.annotation.propagation import PropagationSettings

    defaults = PropagationSettings()
    group = predict.add_argument_group("stacks: prompts from a file, propagated")
    group.add_argument(
        "--prompts",
        metavar="FILE",
        help="JSON prompts (an annotator record, or {'objects': [{'id', 'plane', 'box' or "
        "'points'}]}); the image may then be a stack (TIFF, zarr, .npy)",
    )
    group.add_argument(
        "--propagate",
        choices=("z", "t"),
        help="carry each object from its prompted plane(s) through the stack along this axis",
    )
    group.add_argument(
        "--projection",
        choices=PROJECTIONS,
        default=defaults.projection,
        help="prompts carried to the next slice (default %(default)s)",
    )
    group.add_argument(
        "--min-iou",
        type=float,
        default=defaults.min_iou,
        help="stop where a slice's mask overlaps the previous one less (default %(default)s)",
    )
    group.add_argument(
        "--max-growth",
        type=float,
        default=defaults.max_growth,
        help="stop where a slice's mask grows by more than this factor (default %(default)s)",
    )
    group.add_argument(
        "--min-score",
        type=float,
        default=defaults.min_score,
        help="stop where SAM's predicted IoU is lower (default %(default)s)",
    )
    group.add_argument("--axes", help="axis names of the stack, e.g. zyx or tyx (default: guessed)")
    group.add_argument("--cache", help="embedding cache folder (reused by later runs)")


def check_stack_request(args: argparse.Namespace) -> None:
    """What would fail after the model ran, for a prompts file."""
    from napari_sam.errors import InvalidInputError

    if args.point or args.negative or args.box:
        raise InvalidInputError(
            "Give either --prompts FILE or --point/--negative/--box, not both: the file "
            "holds every object's prompts."
        )
    if args.overlay:
        raise InvalidInputError("--overlay draws one 2D mask; it is not available with --prompts.")
    out = Path(args.out)
    if out.suffix.lower() not in LABEL_SUFFIXES:
        raise InvalidInputError(
            f"Unsupported output format {out.suffix!r} for {out}: use .tif, .npy or .zarr."
        )
    if out.exists() and not args.overwrite:
        raise InvalidInputError(f"{out} already exists: choose another name or pass --overwrite.")


def run_prompts(args: argparse.Namespace) -> int:
    """Decode (and propagate) every object of the prompts file; write the labels."""
    import time

    from tqdm import tqdm

    from napari_sam.engine.annotation.prompt_files import read_prompts, segment_prompts
    from napari_sam.engine.annotation.propagation import PropagationSettings
    from napari_sam.errors import InvalidInputError
    from napari_sam.io.volumes import open_volume

    check_stack_request(args)
    entries = read_prompts(args.prompts)
    settings = PropagationSettings(
        projection=args.projection,
        min_iou=args.min_iou,
        max_growth=args.max_growth,
        min_score=args.min_score,
    )
    volume = open_volume(args.image, axes=args.axes)
    axis = None
    if args.propagate:
        if args.propagate not in volume.stack_axes:
            raise InvalidInputError(
                f"{args.image} has no {args.propagate} axis (its axes are {volume.axes!r}); "
                "name them with --axes, e.g. --axes tyx for a time-lapse."
            )
        axis = volume.stack_axes.index(args.propagate)
    session = _session(args, volume)
    started = time.perf_counter()
    with tqdm(
        total=0, unit="slice", desc="propagating", file=sys.stderr, disable=axis is None
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        labels, extents = segment_prompts(session, entries, axis, settings, progress=progress)
    write_stack_labels(Path(args.out), labels, args.overwrite)
    spans = ", ".join(f"{label}: {a}-{b}" for label, (a, b) in sorted(extents.items()))
    where = f"slices {spans}" if axis is not None else "on their planes"
    print(
        f"wrote {args.out}: {len(extents)} objects ({where}), "
        f"{time.perf_counter() - started:.1f} s ({session.model_id}, encoder "
        f"{session.predictor.precision}, axes {volume.axes})"
    )
    return 0


def _session(args: argparse.Namespace, volume):
    from napari_sam.engine.annotation.session import AnnotationSession

    data = volume.planes_view()
    if args.cache:
        from napari_sam.batch.embedding import open_cached_session

        return open_cached_session(
            data,
            args.cache,
            model=args.model,
            channel_axis=volume.channel_axis,
            channel=args.channel,
            precision=args.precision,
        )
    from napari_sam.engine.model.loading import load_model
    from napari_sam.engine.prediction.predictor import Predictor

    model = load_model(args.model, args.device, architecture=args.architecture)
    return AnnotationSession(
        Predictor(model, precision=args.precision), data, volume.channel_axis, args.channel
    )


def write_stack_labels(path: Path, labels, overwrite: bool) -> None:
    """Labels to .tif/.npy, or to a .zarr array written beside and then moved in place."""
    if path.suffix.lower() != ".zarr":
        from napari_sam.io.images import write_labels

        write_labels(path, labels, overwrite=True)
        return
    import zarr

    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    chunks = (1, *labels.shape[-2:])
    array = zarr.open_array(
        str(partial), mode="w", shape=labels.shape, chunks=chunks, dtype=labels.dtype
    )
    array[...] = labels
    if path.exists() and overwrite:
        shutil.rmtree(path)
    partial.rename(path)
