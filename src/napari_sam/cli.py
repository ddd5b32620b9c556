"""The ``napari-sam`` command: one entry point with subcommands.

``main(argv)`` returns an exit code, so tests call it in-process. Errors that the user
can fix (a :class:`~napari_sam.errors.NapariSamError`) print one clear line and exit 1;
argument mistakes exit 2 through argparse.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from napari_sam import __version__
from napari_sam.errors import NapariSamError

log = logging.getLogger("napari_sam")

# Larger subcommands live in their own modules under napari_sam.commands; each exposes
# ``register(commands)``, which adds its parser and sets ``handler`` to its run function.
COMMAND_MODULES = (
    "napari_sam.commands.embed",
    "napari_sam.commands.everything",
    "napari_sam.commands.training",
)


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from napari_sam.engine.model import DEFAULT_MODEL  # not at the top: imports torch

    parser = argparse.ArgumentParser(
        prog="napari-sam", description="Segment Anything for microscopy."
    )
    parser.add_argument("--version", action="version", version=f"napari-sam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="segment one object from point and/or box prompts",
        description="Segment one object of a 2D image from prompts; writes a 0/1 mask.",
    )
    predict.add_argument("image", help="2D image file (.tif, .png, .jpg, .npy)")
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
    predict.add_argument("--out", required=True, help="output mask (.tif, .png or .npy)")
    predict.add_argument("--overlay", help="also write the mask over the image as a PNG")
    predict.add_argument(
        "--model", default=DEFAULT_MODEL, help="model name or checkpoint file (default %(default)s)"
    )
    predict.add_argument(
        "--channel", type=int, help="channel index for multichannel images (last axis)"
    )
    predict.add_argument("--device", help="torch device (default: cuda, mps or cpu)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing output files")

    weights = commands.add_parser("weights", help="list, fetch or locate model weights")
    actions = weights.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="registered models and whether they are cached")
    fetch = actions.add_parser("fetch", help="download and verify weights into the cache")
    fetch.add_argument("names", nargs="+", metavar="NAME", help="model names, or 'all'")
    path = actions.add_parser("path", help="print the path of cached weights")
    path.add_argument("name", metavar="NAME")

    demo = commands.add_parser(
        "demo", help="segment everything on the bundled DSB2018 nuclei image (the main job)"
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default %(default)s)")
    demo.add_argument(
        "--model", default=DEFAULT_MODEL, help="model name or checkpoint file (default %(default)s)"
    )
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers = {"predict": run_predict, "weights": run_weights, "demo": run_demo}
    try:
        return handlers[args.command](args) if args.command in handlers else args.handler(args)
    except NapariSamError as error:
        print(f"napari-sam: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-sam: interrupted", file=sys.stderr)
        return 130


def run_predict(args: argparse.Namespace) -> int:
    """``napari-sam predict``: prompts to one mask file."""
    import numpy as np

    from napari_sam.engine.prediction.predictor import Predictor
    from napari_sam.engine.prediction.preprocess import compute_normalization
    from napari_sam.errors import InvalidInputError
    from napari_sam.io.images import read_image, write_labels
    from napari_sam.io.overlay import save_overlay

    if not (args.point or args.negative or args.box):
        raise InvalidInputError(
            "Give at least one prompt: --point ROW,COL or --box ROW0,COL0,ROW1,COL1."
        )
    if args.negative and not (args.point or args.box):
        raise InvalidInputError("--negative points only refine an object: add --point or --box.")
    for existing in (args.out, args.overlay):
        if existing and not args.overwrite and _exists(existing):
            raise InvalidInputError(
                f"{existing} already exists: choose another name or pass --overwrite."
            )
    image = read_image(args.image)
    normalization = compute_normalization(image, channel=args.channel)
    predictor = Predictor(args.model, device=args.device)
    predictor.set_image(image, normalization)
    points = list(args.point) + list(args.negative)
    labels = [1] * len(args.point) + [0] * len(args.negative)
    prediction = predictor.predict(
        points=np.array(points) if points else None,
        point_labels=np.array(labels) if points else None,
        box=args.box,
    )
    mask = prediction.best_mask.astype(np.uint8)
    write_labels(args.out, mask, overwrite=True)
    if args.overlay:
        save_overlay(args.overlay, normalization.apply(image), mask)
    print(
        f"wrote {args.out}: {int(mask.sum())} pixels, predicted IoU "
        f"{prediction.scores[prediction.best]:.3f} ({predictor.model.model_id})"
    )
    return 0


def run_weights(args: argparse.Namespace) -> int:
    """``napari-sam weights list|fetch|path``."""
    from napari_sam.engine.model.registry import MODELS, get_model_spec
    from napari_sam.engine.model.weights import fetch_weights, is_cached, weights_path

    if args.action == "list":
        print(f"{'name':<12} {'size':>9}  {'cached':<6}  {'licence':<10}  description")
        for spec in MODELS.values():
            cached = "yes" if weights_path(spec).is_file() else "no"
            print(
                f"{spec.name:<12} {spec.size / 1e6:>7.1f}MB  {cached:<6}  "
                f"{spec.license:<10}  {spec.description}"
            )
        return 0
    if args.action == "path":
        spec = get_model_spec(args.name)
        path = weights_path(spec)
        if not is_cached(spec):
            print(
                f"napari-sam: {args.name} is not cached; "
                f"run `napari-sam weights fetch {args.name}` "
                f"(it would live at {path})",
                file=sys.stderr,
            )
            return 1
        print(path)
        return 0
    names = list(MODELS) if args.names == ["all"] else args.names
    specs = [get_model_spec(name) for name in names]  # fail early on a typo
    for spec in specs:
        with _DownloadBar(spec.name) as bar:
            path = fetch_weights(spec, progress=bar.update)
        print(f"{spec.name}: {path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``napari-sam demo``: the main job on the bundled image."""
    from napari_sam.demo import run_demo as demo

    summary = demo(args.out, model=args.model, progress=lambda text: print(f"... {text}"))
    print(
        f"segment everything: {summary.found} objects in {summary.everything_seconds:.1f} s "
        f"({summary.points_decoded} of 1024 grid points decoded), AP@0.5 {summary.ap50:.3f}, "
        f"AP@0.75 {summary.ap75:.3f} against the human labels\n"
        f"prompted: {summary.objects} nuclei, encoder {summary.encoder_seconds:.2f} s, all boxes "
        f"{summary.box_seconds:.2f} s, one click {summary.click_ms_median:.1f} ms (median); "
        f"mean IoU boxes {summary.box_mean_iou:.3f}, single clicks {summary.point_mean_iou:.3f}\n"
        "wrote " + ", ".join(summary.outputs)
    )
    return 0


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()


class _DownloadBar:
    """A tqdm byte counter that appears only once bytes actually flow."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None  # a tqdm bar, made on the first update

    def __enter__(self) -> _DownloadBar:
        return self

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total or None, unit="B", unit_scale=True, desc=self.name, file=sys.stderr
            )
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    sys.exit(main())
