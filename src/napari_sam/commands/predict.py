"""``napari-sam predict``: one object of a 2D image from point and box prompts, to a mask.

Everything that would fail after the model ran (the prompts, the output formats, an
existing output) is checked first, with the engine's own prompt checks; a box reaching
past the image is clipped to it. Coordinates may be negative as written
(``--point -5,10``): :func:`attach_negative_values` keeps argparse from taking them
for options.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# Flags whose value may start with a minus sign (``--point -5,10``).
COORDINATE_FLAGS = ("--point", "--negative", "--box")


def register(commands) -> None:
    """Add the ``predict`` subcommand to the ``napari-sam`` parser."""
    from napari_sam.commands.arguments import (
        add_architecture_argument,
        add_device_argument,
        add_precision_argument,
    )
    from napari_sam.commands.predict_stack import add_stack_arguments
    from napari_sam.engine.model import DEFAULT_MODEL  # not at the top: imports torch

    predict = commands.add_parser(
        "predict",
        help="segment one object from point and/or box prompts",
        description="Segment one object of a 2D image from prompts; writes a 0/1 mask.",
    )
    predict.add_argument(
        "image", help="2D image file (.tif, .png, .jpg, .npy); with --prompts, also a stack"
    )
    predict.add_argument(
        "--point",
        type=coordinate_pair,
        action="append",
        default=[],
        metavar="ROW,COL",
        help="a point on the object (repeatable)",
    )
    predict.add_argument(
        "--negative",
        type=coordinate_pair,
        action="append",
        default=[],
        metavar="ROW,COL",
        help="a point on the background (repeatable)",
    )
    predict.add_argument(
        "--box",
        type=box_corners,
        metavar="ROW0,COL0,ROW1,COL1",
        help="a box around the object, corners inclusive",
    )
    predict.add_argument(
        "--out", required=True, help="output mask (.tif, .png or .npy; labels with --prompts)"
    )
    predict.add_argument("--overlay", help="also write the mask over the image as a PNG")
    predict.add_argument(
        "--model", default=DEFAULT_MODEL, help="model name or checkpoint file (default %(default)s)"
    )
    add_architecture_argument(predict)
    predict.add_argument(
        "--channel", type=int, help="channel index for multichannel images (last axis)"
    )
    add_device_argument(predict)
    add_precision_argument(predict)
    predict.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_stack_arguments(predict)
    predict.set_defaults(handler=run_predict)


def coordinate_pair(text: str) -> tuple[float, float]:
    """argparse type for ``ROW,COL``."""
    return tuple(_numbers(text, 2, "ROW,COL"))  # type: ignore[return-value]


def box_corners(text: str) -> tuple[float, float, float, float]:
    """argparse type for ``ROW0,COL0,ROW1,COL1``."""
    return tuple(_numbers(text, 4, "ROW0,COL0,ROW1,COL1"))  # type: ignore[return-value]


def _numbers(text: str, count: int, form: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {form} ({count} numbers), got {text!r}")
    return values


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--point -5,10`` as ``--point=-5,10``, so that argparse does not take the value
    for an option; every other argument unchanged."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if token in COORDINATE_FLAGS and re.match(r"-\.?\d", following):
            joined.append(f"{token}={following}")
            index += 2
        else:
            joined.append(token)
            index += 1
    return joined


def run_predict(args: argparse.Namespace) -> int:
    """``napari-sam predict``: prompts to one mask file."""
    import numpy as np

    from napari_sam.engine.model.loading import load_model
    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.engine.prediction.preprocess import compute_normalization
    from napari_sam.io.images import read_image, write_labels
    from napari_sam.io.overlay import save_overlay

    if args.prompts:
        from napari_sam.commands.predict_stack import run_prompts

        return run_prompts(args)
    _check_request(args)
    _check_image_path(Path(args.image))
    image = read_image(args.image)
    normalization = compute_normalization(image, channel=args.channel)
    points, labels, box = _prompts(args, image.shape[:2])
    model = load_model(args.model, args.device, architecture=args.architecture)
    predictor = Predictor(model, precision=args.precision)
    predictor.set_image(image, normalization)
    prediction = predictor.predict(points=points, point_labels=labels, box=box)
    mask = prediction.best_mask.astype(np.uint8)
    write_labels(args.out, mask, overwrite=True)
    if args.overlay:
        save_overlay(args.overlay, normalization.apply(image), mask)
    print(
        f"wrote {args.out}: {int(mask.sum())} pixels, predicted IoU "
        f"{prediction.scores[prediction.best]:.3f} ({predictor.model.model_id}, encoder "
        f"{predictor.precision})"
    )
    return 0


def _check_request(args: argparse.Namespace) -> None:
    """What would fail after the model ran: the prompts given, the outputs' formats, an
    existing output without ``--overwrite``."""
    from napari_sam.errors import InvalidInputError
    from napari_sam.io.images import check_label_path
    from napari_sam.io.overlay import check_overlay_path

    if args.propagate:
        raise InvalidInputError("--propagate carries the objects of a prompts file: add --prompts.")
    if not (args.point or args.negative or args.box):
        raise InvalidInputError(
            "Give at least one prompt: --point ROW,COL or --box ROW0,COL0,ROW1,COL1 "
            "(or a prompts file: --prompts FILE)."
        )
    if args.negative and not (args.point or args.box):
        raise InvalidInputError("--negative points only refine an object: add --point or --box.")
    check_label_path(args.out)
    if args.overlay:
        check_overlay_path(args.overlay)
    for existing in (args.out, args.overlay):
        if existing and not args.overwrite and Path(existing).exists():
            raise InvalidInputError(
                f"{existing} already exists: choose another name or pass --overwrite."
            )


def _prompts(args: argparse.Namespace, shape: tuple[int, int]):
    """(points (K, 2), labels (K,), box (4,)), each None when absent, checked by the
    engine's own functions before the model loads; a box past the edge clipped."""
    import numpy as np

    from napari_sam.engine.prediction.prompts import check_box, check_points

    given = list(args.point) + list(args.negative)
    points = np.array(given) if given else None
    labels = np.array([1] * len(args.point) + [0] * len(args.negative)) if given else None
    clipped = clip_box(args.box, shape)
    box = None if clipped is None else np.array(clipped)
    check_points(points, labels, shape)
    check_box(box, shape)
    return points, labels, box


def clip_box(
    box: tuple[float, float, float, float] | None, shape: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """A ``--box`` reaching past the image, clipped to it (with a note on stderr).

    A box drawn around an object at the edge often starts at -3 or ends past the last
    row; its part on the image is the box meant. A box with no pixel on the image, or
    with inverted corners, is returned unchanged for the engine to refuse.
    """
    if box is None:
        return None
    row0, col0, row1, col1 = box
    clipped = (max(row0, 0.0), max(col0, 0.0), min(row1, shape[0] - 1.0), min(col1, shape[1] - 1.0))
    if clipped == tuple(box) or clipped[0] > clipped[2] or clipped[1] > clipped[3]:
        return box
    shown = [",".join(f"{v:g}" for v in corners) for corners in (box, clipped)]
    print(
        f"napari-sam: note: --box {shown[0]} reaches past the image of {shape[0]} x "
        f"{shape[1]} pixels: clipped to {shown[1]}",
        file=sys.stderr,
    )
    return clipped


def _check_image_path(path: Path) -> None:
    """A folder given to ``predict``: say what it is and which command reads it."""
    from napari_sam.errors import InvalidInputError
    from napari_sam.io.images import IMAGE_FORMATS
    from napari_sam.io.volumes import ZARR_MARKERS

    if not path.is_dir():
        return
    if any((path / marker).is_file() for marker in ZARR_MARKERS):
        raise InvalidInputError(
            f"{path} is a zarr store (a folder): predict reads 2D image files ({IMAGE_FORMATS}); "
            "`napari-sam embed` and `napari-sam segment-everything` read zarr stores."
        )
    raise InvalidInputError(
        f"{path} is a folder: predict reads one 2D image file ({IMAGE_FORMATS}); give the "
        "path of an image inside it."
    )
