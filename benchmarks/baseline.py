"""The reference-style inference path, for speed comparisons in the same run.

Mirrors how Meta's ``SamPredictor`` runs our same modules: the plain mask decoder (all
projections over the 4096 image tokens, all four masks), then two dense bilinear
interpolations (to the 1024 frame, crop, to the original size). No caching.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.engine.prediction.prompts import to_encoder_xy
from napari_sam.engine.prediction.results import Embedding


def reference_style_predict(sam, embedding: Embedding, point_rc: np.ndarray) -> np.ndarray:
    """One positive point -> (3, rows, cols) bool masks, computed the reference way."""
    with torch.inference_mode():
        xy = to_encoder_xy(
            np.asarray(point_rc, float)[None], embedding.original_size, embedding.input_size
        )
        coords = torch.as_tensor(xy, dtype=torch.float32)[None]
        labels = torch.ones((1, 1), dtype=torch.int64)
        sparse, dense = sam.prompt_encoder((coords, labels), None, None)
        pe = sam.prompt_encoder.dense_positional_encoding()
        logits, _iou = sam.mask_decoder(embedding.features, pe, sparse, dense)
        logits = logits[:, 1:]
        size = sam.input_size
        full = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
        full = full[..., : embedding.input_size[0], : embedding.input_size[1]]
        full = F.interpolate(full, embedding.original_size, mode="bilinear", align_corners=False)
        return (full > 0)[0].numpy()
