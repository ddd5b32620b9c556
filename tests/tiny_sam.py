"""A tiny SAM with seeded random weights, built from the package's real modules.

Only the image encoder is shrunk (a ViT of width 32 and two blocks, windowed attention
only, since global attention over 64x64 tokens would dominate the run time); the prompt
encoder and mask decoder are SAM's own. Shapes, coordinates and error paths are those of
the real models while every test stays fast on a CPU. A plain module rather than a
conftest so that worker processes started by a test (dask, subprocess) can import it:
``tests/`` is on their path.
"""

from __future__ import annotations

from napari_sam.engine.model.loading import SamModel, build_sam
from napari_sam.engine.model.registry import ModelSpec
from napari_sam.engine.network.fusion import fold_batchnorm
from napari_sam.engine.network.sam import SamArchitecture
from napari_sam.engine.network.vit_encoder import ViTConfig


def tiny_architecture() -> SamArchitecture:
    """The real prompt encoder and decoder behind a ViT encoder of width 32, depth 2."""
    return SamArchitecture(ViTConfig(embed_dim=32, depth=2, num_heads=2, global_blocks=()))


def random_model(
    architecture: SamArchitecture, seed: int = 0, device: str = "cpu", name: str = "random"
) -> SamModel:
    """A SAM with seeded random weights, ready for inference (batch norms folded, no grad).

    Parameters
    ----------
    architecture : SamArchitecture
        Any architecture, e.g. :func:`tiny_architecture`.
    seed : int
        Seed of ``torch.manual_seed``; the same seed gives the same weights.
    device : str
    name : str
        The model id is ``f"{name}-seed{seed}"``.
    """
    import torch

    torch.manual_seed(seed)
    spec = ModelSpec(
        name=name,
        description="random weights",
        architecture=architecture,
        filename="",
        sha256="",
        size=0,
        license="none",
    )
    module = build_sam(spec).eval()
    fold_batchnorm(module)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return SamModel(
        module=module.to(device), spec=spec, model_id=f"{name}-seed{seed}", device=device
    )
