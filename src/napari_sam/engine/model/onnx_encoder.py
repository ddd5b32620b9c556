"""Optional ONNX Runtime image encoder: the same SAM, a faster encoder on CPUs.

ONNX Runtime fuses the encoder's attention and convolution graph and runs MobileSAM's
encoder in roughly half the time of eager PyTorch on our CPUs (see DESIGN.md; numbers in
``benchmarks/bench_encoder_onnx.py``). The encoder is exported once per weights with
``torch.onnx.export`` and cached as ``<cache>/onnx/<model_id>-encoder.onnx``; the prompt
encoder and mask decoder stay in PyTorch. The model stays fp32: int8 quantisation
lowered mask IoU to 0.92 in our measurements, so it is not offered.

:func:`use_onnx_encoder` returns a :class:`~napari_sam.engine.model.loading.SamModel` that a
:class:`~napari_sam.engine.prediction.predictor.Predictor` takes as is. One limitation: ONNX
Runtime runs the encoder as a single call, so ``should_stop`` can no longer cancel an
encoding between blocks; it is only honoured before the next image.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from napari_sam.engine.model.weights import cache_dir
from napari_sam.engine.network.sam import Sam
from napari_sam.errors import InvalidInputError, MissingDependencyError

if TYPE_CHECKING:
    from napari_sam.engine.model.loading import SamModel

OPSET = 17  # supported by every onnxruntime >= 1.14
INPUT_NAME = "pixels"
OUTPUT_NAME = "features"


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError(
            "The ONNX encoder needs onnxruntime and onnx, which are not installed. "
            'Install them with: pip install "napari-sam-microscopy[onnx]"'
        ) from error
    return onnxruntime


def onnx_path(model_id: str) -> Path:
    """Cache file of the exported encoder of the weights ``model_id``."""
    safe = model_id.replace("/", "_").replace("\\", "_")
    return cache_dir() / "onnx" / f"{safe}-encoder.onnx"


def export_encoder(encoder: nn.Module, input_size: int, path: Path) -> Path:
    """Export ``encoder`` ((1, 3, S, S) float32 -> (1, 256, 64, 64)) to ONNX at ``path``.

    The file is written under a temporary name and renamed, so a crash or a second
    process never leaves a half-written model where the cache looks.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    example = torch.zeros(1, 3, input_size, input_size)
    try:
        # The TorchScript-based exporter is quick (seconds) and its graph runs well in
        # ORT; its deprecation and tracer warnings say nothing a user can act on.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                encoder,
                (example,),
                str(temporary),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
            )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


class OnnxImageEncoder(nn.Module):
    """Runs an exported SAM image encoder in an ONNX Runtime session on the CPU.

    Parameters
    ----------
    path : pathlib.Path
        The ``.onnx`` file written by :func:`export_encoder`.
    threads : int, optional
        Intra-op threads; default ``torch.get_num_threads()``.
    """

    # The exported graph is fp32 and torch.autocast does not reach ONNX Runtime: a
    # Predictor given this encoder encodes in fp32 (encoder_precision in precision.py).
    precision = "fp32"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) normalised float pixels -> (1, 256, 64, 64) float32 features."""
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(features).to(pixels.device)


class OnnxSam(Sam):
    """A :class:`Sam` whose image encoder is an :class:`OnnxImageEncoder`.

    Shares the prompt encoder, mask decoder and pixel statistics of ``sam``; the
    original module is left untouched.
    """

    def __init__(self, sam: Sam, encoder: OnnxImageEncoder) -> None:
        nn.Module.__init__(self)  # not Sam.__init__: that would build a new network
        self.architecture = sam.architecture
        self.image_encoder = encoder
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.register_buffer("pixel_mean", torch.as_tensor(sam.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.as_tensor(sam.pixel_std), persistent=False)


def use_onnx_encoder(model: SamModel, path: Path | None = None) -> SamModel:
    """The same model with its image encoder run by ONNX Runtime (export cached).

    Parameters
    ----------
    model : SamModel
        A loaded model on the CPU (from :func:`~napari_sam.engine.model.loading.load_model`).
    path : pathlib.Path, optional
        Where the exported encoder lives; default :func:`onnx_path` of ``model.model_id``.
        Exported there if missing.

    Returns
    -------
    SamModel
        Same ``spec``, ``model_id`` and device; embeddings are interchangeable with the
        eager model's (max abs difference about 1e-5).

    Raises
    ------
    InvalidInputError
        The model is not on the CPU (ONNX Runtime's CPU provider is the one we ship).
    MissingDependencyError
        onnxruntime (or onnx, for the first export) is not installed.
    """
    if model.device != "cpu":
        raise InvalidInputError(
            f"The ONNX encoder runs on the CPU, but the model is on {model.device!r}: "
            "load it with device='cpu', or keep the PyTorch encoder on this device."
        )
    _import_onnxruntime()
    path = Path(path) if path is not None else onnx_path(model.model_id)
    if not path.is_file():
        export_encoder(model.module.image_encoder, model.input_size, path)
    encoder = OnnxImageEncoder(path)
    return dataclasses.replace(model, module=OnnxSam(model.module, encoder))
