"""How an instance head is trained (torch-free, so the command line reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from napari_sam.errors import InvalidInputError

DIHEDRAL = 8  # flips and quarter turns of a square: the variants augmentation encodes


@dataclass(frozen=True)
class HeadTrainingSettings:
    """How a head is trained; the defaults take 2-4 minutes on 2 CPU cores."""

    steps: int = 500  # optimiser steps
    batch_size: int = 4  # images per step
    learning_rate: float = 3e-3  # AdamW, cosine decay to zero
    weight_decay: float = 1e-4
    width: int = 64  # head channels at the token grid
    augment: int = 4  # dihedral variants of each image encoded (1: none, 8: all)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "width": self.width >= 8 and self.width % 4 == 0,
            "augment": 1 <= self.augment <= DIHEDRAL,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidInputError(f"Invalid head training settings: {values}.")
