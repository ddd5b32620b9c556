"""A light instance head on SAM's frozen image embedding, and its weights file with a card.

The head follows the idea of micro-sam's instance decoder (Archit et al. 2025): from the
image embedding alone, predict per pixel of the decoder's low-resolution grid (256 x 256
over the padded encoder frame)

* the foreground (a logit),
* the distance to the object's centre, 0 at the centre and 1 at its rim,
* the distance to the object's boundary, 1 at the centre and 0 at the rim,

both distances normalised per object. Seeds, watershed instances and point prompts come
from these maps (:mod:`napari_sam.engine.instances.seeds`). The network is ours: a 1x1
projection, two residual 3x3 blocks on the 64 x 64 tokens for context, then two learned x2
upsamplings, about 0.2 M parameters (under 1 MB).

A head is saved as ``NAME.pt`` (a plain state dict, loaded with ``weights_only=True``) and
``NAME.json``, its card: what it was trained on, the encoder it belongs to and its measured
quality.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from napari_sam.errors import CheckpointError, InvalidInputError

CARD_VERSION = 1
OUTPUTS = 3  # foreground logit, centre distance logit, boundary distance logit


@dataclass(frozen=True)
class HeadCard:
    """What a head file says about itself (``NAME.json`` beside ``NAME.pt``)."""

    encoder: str  # model id of the embeddings it was trained on ("vit_t@1a2b3c4d")
    trained_on: str  # the images or stack, in words
    mode: str  # "labels" (the user's), "distilled" (every-point segment-everything)
    planes: int  # training planes
    objects: int  # training objects
    width: int = 64  # channels of the head at the token grid
    embedding_channels: int = 256
    quality: dict = field(default_factory=dict)  # measured figures, e.g. {"ap50": 0.71}
    seconds: float = 0.0  # training time
    version: int = CARD_VERSION


class InstanceHead(nn.Module):
    """Foreground and per-object distances from a SAM image embedding.

    Parameters
    ----------
    embedding_channels : int
        Channels of the image embedding (256 for every SAM encoder).
    width : int
        Channels at the token grid; halved at each upsampling.
    """

    def __init__(self, embedding_channels: int = 256, width: int = 64) -> None:
        super().__init__()
        self.project = _conv(embedding_channels, width, 1)
        self.context = nn.ModuleList([_Residual(width), _Residual(width)])
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 2, stride=2),
            _norm(width // 2),
            nn.GELU(),
            _conv(width // 2, width // 2, 3),
            nn.ConvTranspose2d(width // 2, width // 4, 2, stride=2),
            _norm(width // 4),
            nn.GELU(),
            _conv(width // 4, width // 4, 3),
        )
        self.out = nn.Conv2d(width // 4, OUTPUTS, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, 64, 64) embedding -> (B, 3, 256, 256) logits (foreground, centre, boundary)."""
        x = self.project(features)
        for block in self.context:
            x = block(x)
        return self.out(self.up(x))


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            _norm(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            _norm(width),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


def _conv(inputs: int, outputs: int, size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, size, padding=size // 2), _norm(outputs), nn.GELU()
    )


@dataclass(frozen=True, eq=False)
class TrainedHead:
    """A head with its card, ready to segment (on the CPU unless moved)."""

    network: InstanceHead
    card: HeadCard

    def check_encoder(self, model_id: str) -> None:
        """Raise CheckpointError unless embeddings of ``model_id`` are what it learnt from."""
        if model_id != self.card.encoder:
            raise CheckpointError(
                f"This instance head was trained on embeddings of {self.card.encoder}, "
                f"but the model in use is {model_id}. Load {self.card.encoder.split('@')[0]} "
                "or train a head for this model (napari-sam train --head, or --learn K)."
            )

    def save(self, path: str | Path) -> Path:
        """Write ``NAME.pt`` and ``NAME.json`` atomically; returns the ``.pt`` path."""
        weights = head_paths(path)[0]
        weights.parent.mkdir(parents=True, exist_ok=True)
        partial = weights.with_name(f".{weights.name}.{os.getpid()}.partial")
        torch.save(self.network.state_dict(), partial)
        card_path = weights.with_suffix(".json")
        card_partial = card_path.with_name(f".{card_path.name}.{os.getpid()}.partial")
        card_partial.write_text(json.dumps(asdict(self.card), indent=2) + "\n")
        os.replace(partial, weights)
        os.replace(card_partial, card_path)
        return weights


def head_paths(path: str | Path) -> tuple[Path, Path]:
    """``head`` or ``head.pt`` or ``head.json`` -> (``head.pt``, ``head.json``)."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    return base.with_name(base.name + ".pt"), base.with_name(base.name + ".json")


def load_head(path: str | Path) -> TrainedHead:
    """Load a head saved by :meth:`TrainedHead.save`.

    Raises
    ------
    InvalidInputError
        A file is missing.
    CheckpointError
        The files are not a head of this version, or do not match each other.
    """
    weights, card_path = head_paths(path)
    for needed in (weights, card_path):
        if not needed.is_file():
            raise InvalidInputError(
                f"No instance head at {needed}: a head is two files, NAME.pt and NAME.json, "
                "written by napari-sam train --head or segment-everything --learn."
            )
    try:
        values = json.loads(card_path.read_text())
        card = HeadCard(**values)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{card_path} is not an instance head card: {error}") from error
    if card.version != CARD_VERSION:
        raise CheckpointError(
            f"{card_path} is a head of format {card.version}; this napari-sam reads "
            f"{CARD_VERSION}. Retrain the head."
        )
    network = InstanceHead(card.embedding_channels, card.width)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as error:  # a damaged or foreign file; say which
        raise CheckpointError(f"{weights} does not hold this head's weights: {error}") from error
    network.eval()
    return TrainedHead(network, card)
