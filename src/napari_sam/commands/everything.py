"""``napari-sam segment-everything``: every object of every slice, on a dask cluster, into zarr."""

from __future__ import annotations

import argparse
import sys

# The flags' defaults and help texts are read from the settings they fill.
from napari_sam.batch.settings import (
    MAX_AUTO_WORKERS,
    MIN_CORES_FOR_WORKERS,
    MIN_SLICES_PER_WORKER,
    StackSettings,
)
from napari_sam.commands.arguments import (
    add_architecture_argument,
    add_device_argument,
    add_precision_argument,
)
from napari_sam.engine.everything.linking import LinkingSettings
from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.model.precision import AUTO

# Flags that override one EverythingSettings field each; omitted flags keep the engine's
# defaults (shown in --help; documented with their evaluation in docs/everything.md).
SETTING_FLAGS = {
    "points_per_side": (int, "grid points along each side of a plane or tile"),
    "points_per_batch": (int, "prompts per decoder call"),
    "pred_iou_thresh": (float, "keep masks whose predicted IoU is at least this"),
    "stability_score_thresh": (float, "keep masks whose stability score is at least this"),
    "box_nms_thresh": (float, "drop a mask whose box IoU with a better one's is above this"),
    "min_area": (int, "drop masks smaller than this many pixels"),
    "min_region_area": (int, "remove islands and fill holes smaller than this many pixels"),
    "crop_layers": (int, "zoomed crop layers, each re-encoding 4^k crops"),
    "stop_after_empty": (
        int,
        "decode the grid points this image's classifier ranks most likely to find an "
        "object first; stop after this many in a row found none",
    ),
    "skip_distance": (float, "skip grid points within this many pixels of an object already found"),
}


def register(commands) -> None:
    """Add the ``segment-everything`` subcommand to the ``napari-sam`` parser."""
    stack, linking, settings = StackSettings(), LinkingSettings(), EverythingSettings()
    parser = commands.add_parser(
        "segment-everything",
        help="segment every object of an image or stack into zarr labels",
        description="Segment everything in each slice (in parallel on dask.distributed), then link "
        "slices into 3D objects. Rerun the same command to resume an interrupted run.",
    )
    parser.add_argument(
        "input", help="TIFF, zarr or OME-Zarr (folder), or .npy: a 2D image or a z stack"
    )
    parser.add_argument("--out", required=True, help="output labels store (a .zarr folder)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        help="local worker processes; 0 runs in this process (default: in this process, "
        f"or one worker per core, at most {MAX_AUTO_WORKERS}, on machines of "
        f"{MIN_CORES_FOR_WORKERS}+ cores with {MIN_SLICES_PER_WORKER}+ slices per worker to do)",
    )
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing dask scheduler, e.g. tcp://host:8786"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads per worker (default: cores / workers)"
    )
    parser.add_argument(
        "--model", default=stack.model, help="model name or checkpoint file (default %(default)s)"
    )
    add_architecture_argument(parser)
    add_device_argument(parser)
    add_precision_argument(parser)
    parser.add_argument(
        "--tile",
        type=int,
        default=stack.tile,
        help="segment planes in tiles of this side (pixels; default: whole planes)",
    )
    parser.add_argument(
        "--halo",
        type=int,
        default=stack.halo,
        help="overlap of neighbouring tiles (pixels; default %(default)s)",
    )
    parser.add_argument("--z-range", metavar="START:STOP", help="only these slices of the stack")
    parser.add_argument("--key", help="series (TIFF) or array path (zarr) inside the input")
    parser.add_argument("--level", type=int, default=0, help="OME-Zarr resolution level (0 = full)")
    parser.add_argument(
        "--axes", help="axis names of the input, e.g. zyx, czyx (default: from the file)"
    )
    parser.add_argument("--channel", type=int, help="channel to segment in multichannel data")
    for name, (kind, text) in SETTING_FLAGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            help=f"{text} (default {getattr(settings, name)})",
        )
    parser.add_argument(
        "--every-point",
        action="store_true",
        help="decode every grid point (no skipping: 5-8x slower, the last bit of recall)",
    )
    parser.add_argument(
        "--keep-background",
        action="store_true",
        help="keep large masks touching three edges (dropped as background by default)",
    )
    parser.add_argument(
        "--link",
        action=argparse.BooleanOptionalAction,
        default=stack.linking is not None,
        help="link slices into 3D objects (default %(default)s); --no-link numbers "
        "each 2D object apart",
    )
    parser.add_argument(
        "--link-iou",
        type=float,
        help="least IoU between an object's neighbouring sections "
        f"(default {linking.iou_threshold})",
    )
    parser.add_argument(
        "--min-extent",
        type=int,
        help=f"slices a 3D object must span to be kept (default {linking.min_extent})",
    )
    parser.add_argument(
        "--no-gap-closing", action="store_true", help="do not link over one missed slice"
    )
    head = parser.add_mutually_exclusive_group()
    head.add_argument(
        "--learn",
        type=int,
        metavar="K",
        help="learn an instance head first: decode every grid point on K planes spread "
        "through the stack, train on them, then segment every plane with the head (saved "
        "beside --out as NAME.head.pt, reused on resume; docs/instance_head.md)",
    )
    head.add_argument(
        "--head",
        metavar="FILE",
        help="segment with this instance head (napari-sam train --head, or a --learn run)",
    )
    parser.add_argument(
        "--head-mode",
        choices=("apg", "ais"),
        default=stack.head_mode,
        help="with a head: apg, one SAM prompt per object the head finds; ais, the head's "
        "own instances, no decoder (fastest) (default %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output made for other data/settings, or a damaged one (never a "
        "folder holding other files or the input)",
    )
    parser.set_defaults(handler=run_segment_everything)


def run_segment_everything(args: argparse.Namespace) -> int:
    """``napari-sam segment-everything``: a stack into linked 3D labels, resumably."""
    from napari_sam.batch.everything import segment_stack
    from napari_sam.batch.settings import Execution
    from napari_sam.batch.tasks import StackSource
    from napari_sam.commands.arguments import parse_z_range

    settings = stack_settings(args)
    source = StackSource(
        args.input, key=args.key, level=args.level, axes=args.axes, channel=args.channel
    )
    execution = Execution(
        workers=0 if args.scheduler else args.workers,
        scheduler=args.scheduler,
        threads=args.threads,
    )
    z_range = None if args.z_range is None else parse_z_range(args.z_range)
    with _Bars() as bars:
        summary = segment_stack(
            source,
            args.out,
            settings,
            execution,
            z_range=z_range,
            overwrite=args.overwrite,
            progress=bars.update,
        )
    repaired = (
        f", {summary.repaired} damaged slice{'s' if summary.repaired > 1 else ''} redone"
        if summary.repaired
        else ""
    )
    print(
        f"{args.out}: {summary.objects} objects in {summary.slices} slices "
        f"({summary.segmented} segmented now, {summary.reused} already done{repaired}), "
        f"{summary.seconds:.1f} s, {summary.slices_per_minute:.1f} slices/min "
        f"({summary.execution}, {summary.model_id}"
        + ("" if summary.method == "grid" else f", {summary.method}")
        + ")"
    )
    return 0


def stack_settings(args: argparse.Namespace) -> StackSettings:
    """The :class:`StackSettings` of parsed ``segment-everything`` arguments.

    Raises
    ------
    InvalidInputError
        ``--every-point`` together with a flag that tunes the skipping of points, or a
        setting out of its range.
    """
    from napari_sam.errors import InvalidInputError

    overrides = {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None
    }
    if args.keep_background:
        overrides["drop_background"] = False
    if args.every_point:
        skipping = {"stop_after_empty", "skip_distance"} & set(overrides)
        if skipping:
            raise InvalidInputError(
                f"--every-point decodes every grid point: drop {sorted(skipping)}."
            )
    settings = EverythingSettings(**overrides)
    if args.every_point:
        settings = settings.every_point()
    return StackSettings(
        model=model_source(args.model, args.architecture, args.device, args.precision),
        settings=settings,
        tile=args.tile,
        halo=args.halo,
        linking=_linking(args),
        head=args.head,
        head_mode=args.head_mode,
        learn=_learn(args.learn),
    )


def _learn(planes: int | None) -> int | None:
    from napari_sam.errors import InvalidInputError

    if planes is not None and planes < 1:
        raise InvalidInputError(f"--learn K needs K >= 1 planes; got {planes}.")
    return planes


def model_source(
    model: str, architecture: str | None, device: str | None = None, precision: str = AUTO
):
    """``--model`` as a batch run loads it: the name, or the name with the options given.

    Raises
    ------
    InvalidInputError
        ``device`` is not on this machine, or ``precision`` is unknown or bf16 on a GPU
        (said before any work).
    """
    if architecture is None and device is None and precision == AUTO:
        return model
    from napari_sam.batch.tasks import ModelChoice
    from napari_sam.engine.model.precision import resolve_precision
    from napari_sam.engine.model.runtime import resolve_device

    if device is not None or precision != AUTO:
        resolve_precision(precision, resolve_device(device))
    return ModelChoice(model, architecture, device, precision)


def _linking(args: argparse.Namespace) -> LinkingSettings | None:
    if not args.link:
        return None
    values = {"gap_closing": False} if args.no_gap_closing else {}
    if args.link_iou is not None:
        values["iou_threshold"] = args.link_iou
    if args.min_extent is not None:
        values["min_extent"] = args.min_extent
    return LinkingSettings(**values)


class _Bars:
    """One tqdm bar on stderr per stage ("segment", then "link")."""

    def __init__(self) -> None:
        self.bars: dict = {}

    def __enter__(self):
        return self

    def update(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage not in self.bars:
            names = {
                "teacher": ("learning: every point", "slice"),
                "encoding": ("learning: encoding", "image"),
                "training": ("learning: training", "step"),
                "segment": ("segmenting", "slice"),
                "link": ("linking", "slice"),
            }
            desc, unit = names.get(stage, (stage, "slice"))
            self.bars[stage] = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)
        bar = self.bars[stage]
        bar.update(done - bar.n)

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()
