"""Command-line values and flags shared by several subcommands, defined once."""

from __future__ import annotations

import argparse

from napari_sam.errors import InvalidInputError

ARCHITECTURE_HELP = (
    "registry name of the architecture of a --model checkpoint file, e.g. vit_b "
    "(default: guessed from the file name; refused for registered model names)"
)


def add_architecture_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--architecture`` to a subcommand whose ``--model`` may be a checkpoint file.

    The value reaches :func:`~napari_sam.engine.model.loading.load_model` (or
    :func:`~napari_sam.engine.model.registry.get_model_spec`) as ``architecture=``,
    which checks it; errors naming ``architecture=`` then read ``--architecture`` on the
    command line (see ``napari_sam.cli.PARAMETER_FLAGS``).
    """
    parser.add_argument("--architecture", metavar="NAME", help=ARCHITECTURE_HELP)


DEVICE_HELP = (
    "torch device: cpu (default), cuda, cuda:N, mps or auto; the GPU path is not yet "
    "verified on a real GPU (docs/devices.md)"
)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` to a subcommand that runs the model.

    The value reaches :func:`~napari_sam.engine.model.loading.load_model`, which checks
    it (:func:`~napari_sam.engine.model.runtime.resolve_device`).
    """
    parser.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)


PRECISION_HELP = (
    "the encoder's arithmetic: auto (default: bf16 on CPUs with Intel AMX, about 1.4x "
    "faster there; fp32 elsewhere, and everywhere with NAPARI_SAM_NO_AUTO_BF16=1), fp32, "
    "or bf16 (slower than fp32 without AMX); see docs/precision.md"
)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--precision {auto,fp32,bf16}`` to a subcommand that runs the encoder.

    The value reaches :class:`~napari_sam.engine.prediction.predictor.Predictor` as
    ``precision=``, which resolves ``auto`` on the CPU that runs it
    (:func:`~napari_sam.engine.model.precision.resolve_precision`).
    """
    from napari_sam.engine.model.precision import AUTO, PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=AUTO, help=PRECISION_HELP)


def parse_z_range(text: str) -> tuple[int, int]:
    """A z-range as the command line writes it, ``"START:STOP"``, as ``(start, stop)``.

    The one parser of every ``START:STOP`` of ``napari-sam`` (``--train-pair``,
    ``--z-range`` of ``embed`` and ``segment-everything``); whether the range fits the
    data is checked where the data are opened.

    Parameters
    ----------
    text : str
        Two integers, e.g. ``"10:20"`` for planes 10 to 19.

    Returns
    -------
    (int, int)
        ``[start, stop)`` with ``0 <= start < stop``.

    Raises
    ------
    InvalidInputError
        ``text`` is not two integers around a colon, or not ``0 <= START < STOP``.
    """
    try:
        start, stop = (int(value) for value in text.split(":"))
    except ValueError:
        raise InvalidInputError(f"A z-range is START:STOP (two integers); got {text!r}.") from None
    if not 0 <= start < stop:
        raise InvalidInputError(f"A z-range START:STOP needs 0 <= START < STOP; got {text!r}.")
    return start, stop
