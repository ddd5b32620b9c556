"""napari-sam: Segment Anything for microscopy, as a napari plugin, library and CLI.

Importing the package is cheap: torch and napari load only when a feature needs them.
The main entry points are available lazily from here::

    from napari_sam import Predictor, load_model, compute_normalization
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Predictor": "napari_sam.engine.prediction.predictor",
    "Prediction": "napari_sam.engine.prediction.results",
    "BatchPrediction": "napari_sam.engine.prediction.results",
    "Embedding": "napari_sam.engine.prediction.results",
    "Normalization": "napari_sam.engine.prediction.preprocess",
    "compute_normalization": "napari_sam.engine.prediction.preprocess",
    "load_model": "napari_sam.engine.model.loading",
    "MODELS": "napari_sam.engine.model.registry",
    "AnnotationSession": "napari_sam.engine.annotation.session",
    "open_annotator": "napari_sam._widgets",
    "open_everything": "napari_sam._widgets",
    "AutomaticSegmenter": "napari_sam.engine.everything.segmenter",
    "EverythingSettings": "napari_sam.engine.everything.settings",
    "segment_plane": "napari_sam.engine.everything.segmenter",
    "EverythingSession": "napari_sam.engine.everything.session",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
