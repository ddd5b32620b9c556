"""The ``napari-sam`` command: one entry point with subcommands.

``main(argv)`` returns an exit code, so tests call it in-process. Errors that the user
can fix (a :class:`~napari_sam.errors.NapariSamError`) print one clear line and exit 1;
argument mistakes exit 2 through argparse. The library's messages name parameters as
Python callers write them (``channel=INDEX``); :func:`command_line_words` shows the same
message with the running subcommand's flags (``--channel INDEX``) through one table,
:data:`PARAMETER_FLAGS`, so each message has one source. Before any work, no output may
be an input or nest with it (:data:`OUTPUTS`), and ``--point -5,10`` is read as the
coordinates it means (:func:`~napari_sam.commands.predict.attach_negative_values`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from napari_sam import __version__
from napari_sam.commands.predict import attach_negative_values
from napari_sam.errors import NapariSamError

log = logging.getLogger("napari_sam")

# Larger subcommands live in their own modules under napari_sam.commands; each exposes
# ``register(commands)``, which adds its parser and sets ``handler`` to its run function.
COMMAND_MODULES = (
    "napari_sam.commands.embed",
    "napari_sam.commands.everything",
    "napari_sam.commands.training",
)

# Parameters that library messages name (``axes=``, ``channel=INDEX``) and the dest of the
# flag that sets each on the command line; shown as that flag when the running subcommand
# has it. None: no flag (Python only), and a sentence naming it is left out.
PARAMETER_FLAGS: dict[str, str | None] = {
    "architecture": "architecture",
    "axes": "axes",
    "channel": "channel",
    "key": "key",
    "level": "level",
    "overwrite": "overwrite",  # a switch: overwrite=True reads --overwrite
    "precision": "precision",
    "channel_weights": None,
}

# The input and the outputs of each subcommand that writes files (argument dests). No
# output may be the input, lie inside it, or hold it (--overwrite would delete it with
# the output), and no two outputs may be one path.
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "predict": ("image", ("out", "overlay")),
    "embed": ("input", ("cache",)),
    "segment-everything": ("input", ("out",)),
}


def command_line_words(message: str, flags: Collection[str]) -> str:
    """A library message as the command line shows it.

    Parameters named the Python way (``axes=``, ``level=2``, ``axes='zyx'``) become the
    flags of :data:`PARAMETER_FLAGS` (``--axes``, ``--level 2``, ``--axes zyx``) when
    their dest is in ``flags`` (those of the running subcommand); a sentence naming a
    Python-only parameter is left out. Other text is unchanged.

    Parameters
    ----------
    message : str
    flags : collection of str
        Argument dests of the running subcommand, e.g. ``vars(args)``.
    """
    python_only = [name for name, dest in PARAMETER_FLAGS.items() if dest is None]
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", message)
    kept = [s for s in sentences if not any(_parameter(name).search(s) for name in python_only)]
    text = " ".join(kept or sentences)
    for name, dest in PARAMETER_FLAGS.items():
        if dest is not None and dest in flags:
            text = _parameter(name).sub(partial(_flag, dest), text)
    return text


def _parameter(name: str) -> re.Pattern[str]:
    """``name=`` and its value, as a word (not inside ``my_name=`` or a path)."""
    return re.compile(rf"(?<![^\s(]){re.escape(name)}=('[^'\s]*'|[^\s,;)]*)")


def _flag(dest: str, found: re.Match[str]) -> str:
    """``--dest VALUE`` from ``name=VALUE`` (quotes dropped; the punctuation that ends a
    sentence kept after it)."""
    value, end = re.fullmatch(r"(.*?)([.:]*)", found.group(1)).groups()  # type: ignore[union-attr]
    value = value[1:-1] if len(value) > 1 and value[0] == value[-1] == "'" else value
    value = "" if value == "True" else value  # a switch is on by its flag alone
    return f"--{dest.replace('_', '-')}" + (f" {value}" if value else "") + end


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse outputs that are the input, nest with it, or repeat each other.

    Raises
    ------
    InvalidInputError
        An output of :data:`OUTPUTS` resolves to the input, lies inside it, or holds it;
        or two outputs are the same path.
    """
    from napari_sam.errors import InvalidInputError
    from napari_sam.io.stores import relation_to_input

    if args.command not in OUTPUTS:
        return
    input_name, output_names = OUTPUTS[args.command]
    source = Path(getattr(args, input_name)).resolve()
    seen: dict[Path, str] = {}
    for name in output_names:
        value = getattr(args, name)
        if value is None:
            continue
        flag, target = "--" + name, Path(value).resolve()
        if target in seen:
            raise InvalidInputError(
                f"{seen[target]} and {flag} are the same file {value}: give each its own "
                "name (e.g. mask.tif and mask.png)."
            )
        seen[target] = flag
        problem = relation_to_input(target, source)
        if problem:
            raise InvalidInputError(
                f"{flag} {value} {problem}: napari-sam never writes over its input, nor an "
                "output that --overwrite would delete with it. Choose a path apart from it."
            )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from napari_sam.commands.predict import register as register_predict
    from napari_sam.engine.model import DEFAULT_MODEL  # not at the top: imports torch

    parser = argparse.ArgumentParser(
        prog="napari-sam", description="Segment Anything for microscopy."
    )
    parser.add_argument("--version", action="version", version=f"napari-sam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_predict(commands)  # first in --help: the simplest job
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
    argv = attach_negative_values(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handlers = {"weights": run_weights, "demo": run_demo}
    try:
        check_outputs(args)
        return handlers[args.command](args) if args.command in handlers else args.handler(args)
    except NapariSamError as error:
        print(f"napari-sam: error: {command_line_words(str(error), vars(args))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-sam: interrupted", file=sys.stderr)
        return 130


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
        f"prompted: {summary.objects} nuclei, encoder {summary.encoder_seconds:.2f} s "
        f"({summary.precision}), all boxes "
        f"{summary.box_seconds:.2f} s, one click {summary.click_ms_median:.1f} ms (median); "
        f"mean IoU boxes {summary.box_mean_iou:.3f}, single clicks {summary.point_mean_iou:.3f}\n"
        "wrote " + ", ".join(summary.outputs)
    )
    return 0


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
