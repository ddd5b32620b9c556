"""Interactive SAM: encode an image once, then decode prompts in milliseconds.

:class:`Predictor` is the engine's main object. ``set_image`` runs the expensive
encoder and returns an :class:`Embedding`; ``predict`` turns points, a box and/or a
previous mask into masks at the original resolution; ``predict_batch`` decodes many
objects in one decoder call. All coordinates are (row, col) pixels of the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from napari_sam.engine.model.loading import SamModel, load_model
from napari_sam.engine.model.precision import AUTO, encoder_autocast, encoder_precision
from napari_sam.engine.network.fast_decoder import FastDecoder, ImageContext
from napari_sam.engine.prediction import prompts
from napari_sam.engine.prediction.output_checks import check_embedding, check_finite
from napari_sam.engine.prediction.preprocess import (
    Normalization,
    compute_normalization,
    resize_longest_side,
)
from napari_sam.engine.prediction.results import BatchPrediction, Embedding, LowResBatch, Prediction
from napari_sam.engine.prediction.upsampling import LogitUpsampler
from napari_sam.errors import CacheMismatchError, InvalidInputError, OperationCancelled

MASK_THRESHOLD = 0.0  # logits above this are inside the mask


@contextmanager
def stop_points(encoder: torch.nn.Module, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Let a running encoder be cancelled between its blocks (every ~50-150 ms on a CPU)."""
    if should_stop is None:
        yield
        return

    def check(module, args):
        if should_stop():
            raise OperationCancelled("The image encoding was cancelled.")

    blocks = [
        m
        for m in encoder.modules()
        if type(m).__name__ in ("Block", "MBConv", "TinyViTBlock", "PatchMerging")
    ]
    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Predictor:
    """Holds one model and one current image embedding.

    Parameters
    ----------
    model : str, pathlib.Path or SamModel
        Registry name (default ``"vit_t"``), checkpoint file, or an already loaded model.
    device : str, optional
        Torch device for a model given by name; ``None`` is the CPU unless an accelerator
        type is verified (docs/devices.md); ``"auto"`` picks cuda, mps, then cpu.
    precision : str
        The encoder's arithmetic: ``"auto"`` (bf16 on a CPU with native bfloat16, fp32
        elsewhere), ``"fp32"`` or ``"bf16"`` (docs/precision.md). The decoder runs in
        fp32 either way. The resolved one is :attr:`precision`.

    Raises
    ------
    InvalidInputError
        An unknown ``precision``, ``"bf16"`` on a GPU, or ``"bf16"`` with an encoder
        that runs in fp32 only (ONNX Runtime).

    Examples
    --------
    >>> predictor = Predictor("vit_t")                      # doctest: +SKIP
    >>> predictor.set_image(image)                          # doctest: +SKIP
    >>> mask = predictor.predict(points=[(120, 88)]).best_mask   # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | Path | SamModel = "vit_t",
        device: str | None = None,
        precision: str = AUTO,
    ):
        self.model = model if isinstance(model, SamModel) else load_model(model, device)
        self.precision = encoder_precision(precision, self.model)  # "fp32" or "bf16"
        self._embedding: Embedding | None = None
        self._upsampler: LogitUpsampler | None = None
        self._context: ImageContext | None = None
        self._features: torch.Tensor | None = None  # the embedding's, on the model's device
        self._decoder = FastDecoder(self.model.module.mask_decoder)
        with torch.inference_mode():
            self._image_pe = self.model.module.prompt_encoder.dense_positional_encoding()

    @property
    def embedding(self) -> Embedding:
        """The current embedding; raises if no image was set."""
        if self._embedding is None:
            raise InvalidInputError("No image is set: call set_image(image) first.")
        return self._embedding

    @property
    def current_embedding(self) -> Embedding | None:
        """The current embedding, or None before any image (never raises)."""
        return self._embedding

    def set_image(
        self,
        image: np.ndarray,
        normalization: Normalization | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Embedding:
        """Encode a 2D image (the slow step, about a second on a CPU) and make it current.

        Parameters
        ----------
        image : numpy.ndarray, shape (H, W) or (H, W, C)
            Grey, RGB, or multichannel (then ``normalization`` must choose a channel).
        normalization : Normalization, optional
            Reuse one mapping for all tiles or slices of the same data; computed from
            this image when omitted (see :func:`compute_normalization`).
        should_stop : callable, optional
            Polled between encoder blocks; returning True raises
            :class:`~napari_sam.errors.OperationCancelled`.

        Returns
        -------
        Embedding

        Raises
        ------
        InvalidInputError
            A bad image (see :func:`compute_normalization`), a constant one included
            when ``normalization`` is computed here.
        ModelOutputError
            The encoder returned NaN or infinite values (damaged weights).
        """
        embedding = self.encode(image, normalization, should_stop)
        self.set_embedding(embedding)
        return embedding

    def encode(
        self,
        image: np.ndarray,
        normalization: Normalization | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Embedding:
        """Like :meth:`set_image` but leaves the current embedding alone (thread-safe)."""
        image = np.asarray(image)
        normalization = normalization or compute_normalization(image)
        rgb = normalization.apply(image)
        size = self.model.input_size
        resized = resize_longest_side(rgb, size)
        pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float()
        encoder = self.model.module.image_encoder
        with torch.inference_mode(), stop_points(encoder, should_stop):
            with encoder_autocast(self.precision, self.model.device):
                features = self.model.module(pixels.to(self.model.device))
            features = features.float()  # bf16 leaves as float32: the decoder stays fp32
            check_finite(self.model, features, "image embedding")
        return Embedding(
            features=features,
            input_size=resized.shape[:2],
            original_size=image.shape[:2],
            model_id=self.model.model_id,
            normalization=normalization,
            precision=self.precision,
        )

    def set_embedding(self, embedding: Embedding) -> None:
        """Make a stored embedding current (no encoder call).

        Raises
        ------
        CacheMismatchError
            The embedding was computed by other weights.
        ModelOutputError
            The embedding holds NaN or infinite values (e.g. a cache written by damaged
            weights).
        """
        if embedding.model_id != self.model.model_id:
            raise CacheMismatchError(
                f"This embedding was computed by {embedding.model_id}, but the predictor "
                f"holds {self.model.model_id}: encode the image again with set_image."
            )
        check_embedding(embedding)
        self._upsampler = LogitUpsampler(
            embedding.original_size, embedding.input_size, self.model.input_size
        )
        prompt_encoder = self.model.module.prompt_encoder
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        # a cached embedding comes from disk on the CPU; on the CPU this is no copy
        self._features = embedding.features.to(self.model.device)
        self._context = self._decoder.prepare(self._features, self._image_pe, no_mask)
        self._embedding = embedding

    def predict(
        self,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
    ) -> Prediction:
        """Masks for one object from its prompts.

        Parameters
        ----------
        points : array-like, shape (K, 2), optional
            (row, col) pixels.
        point_labels : array-like, shape (K,), optional
            1 for object, 0 for background; all 1 when omitted.
        box : array-like, shape (4,), optional
            (row0, col0, row1, col1), corners inclusive.
        mask_input : array-like, shape (256, 256), optional
            Low-resolution logits of an earlier prediction, to refine it.
        multimask : bool, optional
            Three candidate masks (True) or one (False). Default: three for a single
            point alone, one otherwise, as the SAM paper recommends.

        Returns
        -------
        Prediction
            ``masks`` (N, H, W), ``scores`` (N,), ``logits`` (N, 256, 256).

        Raises
        ------
        ModelOutputError
            The decoder returned NaN or infinite logits or scores (damaged weights).
        """
        shape = self.embedding.original_size
        point_set = prompts.check_points(points, point_labels, shape)
        corners = prompts.check_box(box, shape)
        logits = prompts.check_mask_input(mask_input)
        if point_set is None and corners is None and logits is None:
            raise InvalidInputError("Give at least one prompt: points, box or mask_input.")
        if multimask is None:
            multimask = (
                point_set is not None
                and corners is None
                and logits is None
                and len(point_set[0]) == 1
            )
        batch = self._decode(
            None if point_set is None else point_set[0][None],
            None if point_set is None else point_set[1][None],
            None if corners is None else corners[None],
            None if logits is None else logits[None],
            multimask,
        )
        return batch[0]

    def predict_batch(
        self,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        batch_size: int = 16,
    ) -> BatchPrediction:
        """Masks for B objects at once (many boxes, or points per object).

        Parameters
        ----------
        points : array-like, shape (B, K, 2) or (B, 2), optional
            (row, col) points; (B, 2) means one point per object.
        point_labels : array-like, shape (B, K) or (B,), optional
        boxes : array-like, shape (B, 4), optional
        mask_input : array-like, shape (B, 256, 256), optional
        multimask : bool
            Three candidates per object instead of one.
        batch_size : int
            Objects per decoder call; bounds memory (about 30 MB per object).

        Returns
        -------
        BatchPrediction
            ``masks`` (B, N, H, W), ``scores`` (B, N), ``logits`` (B, N, 256, 256).

        Raises
        ------
        ModelOutputError
            As for :meth:`predict`.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be at least 1; got {batch_size}.")
        coords, labels, corners, logits = self._check_batch(points, point_labels, boxes, mask_input)
        count = len(next(x for x in (coords, corners, logits) if x is not None))
        if count == 0:
            return self._empty_batch(multimask)
        parts = []
        for start in range(0, count, batch_size):
            part = slice(start, start + batch_size)
            parts.append(
                self._decode(
                    None if coords is None else coords[part],
                    None if labels is None else labels[part],
                    None if corners is None else corners[part],
                    None if logits is None else logits[part],
                    multimask,
                )
            )
        return BatchPrediction(
            masks=np.concatenate([p.masks for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            logits=np.concatenate([p.logits for p in parts]),
        )

    def _empty_batch(self, multimask: bool) -> BatchPrediction:
        n = 3 if multimask else 1
        rows, cols = self.embedding.original_size
        return BatchPrediction(
            masks=np.zeros((0, n, rows, cols), bool),
            scores=np.zeros((0, n), np.float32),
            logits=np.zeros((0, n, prompts.LOW_RES, prompts.LOW_RES), np.float32),
        )

    def _check_batch(self, points, point_labels, boxes, mask_input):
        """Validate batched prompts -> numpy arrays (or None) with one leading object axis."""
        shape = self.embedding.original_size
        coords = labels = corners = logits = None
        sizes = {}
        if points is not None:
            coords = np.asarray(points, dtype=np.float64)
            if coords.ndim == 2:
                coords = coords[:, None, :]
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise InvalidInputError(
                    f"Batched points must have shape (B, K, 2) or (B, 2) as (row, col); "
                    f"got {np.shape(points)}."
                )
            flags = None
            if point_labels is not None:
                flags = np.asarray(point_labels)
                if flags.size != coords.shape[0] * coords.shape[1]:
                    raise InvalidInputError(
                        f"point_labels must have shape {coords.shape[:2]} (one label per "
                        f"point); got {flags.shape}."
                    )
                flags = flags.reshape(coords.shape[:2])
            checked = [
                prompts.check_points(c, None if flags is None else flags[i], shape)
                for i, c in enumerate(coords)
            ]
            coords = np.stack([c for c, _ in checked]) if checked else coords
            labels = (
                np.stack([f for _, f in checked])
                if checked
                else np.zeros(coords.shape[:2], np.int64)
            )
            sizes["points"] = len(coords)
        if boxes is not None:
            array = np.asarray(boxes, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != 4:
                raise InvalidInputError(
                    "Batched boxes must have shape (B, 4) as (row0, col0, row1, col1); "
                    f"got {array.shape}."
                )
            corners = (
                np.stack([prompts.check_box(b, shape) for b in array]) if len(array) else array
            )
            sizes["boxes"] = len(corners)
        if mask_input is not None:
            array = np.asarray(mask_input, dtype=np.float32)
            if array.ndim != 3:
                raise InvalidInputError(
                    f"Batched mask_input must have shape (B, 256, 256); got {array.shape}."
                )
            logits = np.stack([prompts.check_mask_input(m) for m in array]) if len(array) else array
            sizes["mask_input"] = len(logits)
        if not sizes:
            raise InvalidInputError("Give at least one prompt: points, boxes or mask_input.")
        if len(set(sizes.values())) != 1:
            raise InvalidInputError(f"The prompts describe different numbers of objects: {sizes}.")
        return coords, labels, corners, logits

    def predict_low_res(
        self, points: np.ndarray, point_labels: np.ndarray | None = None, multimask: bool = True
    ) -> LowResBatch:
        """Decode B point prompts to low-resolution logits only (no upsampling).

        The fast path of segment-everything: candidates are filtered at 256x256 and only
        the survivors are upsampled with :meth:`upsample_logits`.

        Parameters
        ----------
        points : array-like, shape (B, K, 2) or (B, 2)
            (row, col) points per object.
        point_labels : array-like, shape (B, K) or (B,), optional
        multimask : bool
            Three candidates per object instead of one.

        Returns
        -------
        LowResBatch
            ``logits`` (B, N, 256, 256) and ``scores`` (B, N) as torch tensors.

        Raises
        ------
        ModelOutputError
            As for :meth:`predict`.
        """
        coords, labels, _, _ = self._check_batch(points, point_labels, None, None)
        logits, scores = self._decode_low_res(coords, labels, None, None, multimask)
        return LowResBatch(logits=logits, scores=scores)

    def upsample_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 256, 256) low-res logits of the current image -> (N, rows, cols) float logits."""
        if self._upsampler is None:
            raise InvalidInputError("No image is set: call set_image(image) first.")
        with torch.inference_mode():
            return self._upsampler(logits.float())

    def _decode(self, coords, labels, corners, logits, multimask: bool) -> BatchPrediction:
        """Run prompt encoder, decoder and upsampling on validated numpy prompts."""
        low_res, iou = self._decode_low_res(coords, labels, corners, logits, multimask)
        assert self._upsampler is not None  # set with the embedding that _decode_low_res needs
        b, n = iou.shape
        with torch.inference_mode():
            full = self._upsampler(low_res.reshape(b * n, *low_res.shape[-2:]).float().cpu())
            masks = (full > MASK_THRESHOLD).reshape(b, n, *self.embedding.original_size)
        return BatchPrediction(
            masks=masks.numpy(),
            scores=iou.float().cpu().numpy(),
            logits=low_res.float().cpu().numpy(),
        )

    def _decode_low_res(self, coords, labels, corners, logits, multimask: bool):
        """Prompt encoder and decoder: (B, n, 256, 256) logits and (B, n) IoU, torch."""
        embedding = self.embedding
        device = self.model.device
        sam = self.model.module
        if logits is not None and not np.isfinite(logits).all():
            # Caught here, or the decoder's NaN output would be blamed on the weights.
            raise InvalidInputError(
                "mask_input holds NaN or infinite values: pass finite low-resolution logits, "
                "such as a previous prediction's logits[i]."
            )
        original, resized = embedding.original_size, embedding.input_size
        with torch.inference_mode():
            point_arg = None
            if coords is not None:
                xy = prompts.to_encoder_xy(coords, original, resized)
                point_arg = (
                    torch.as_tensor(xy, dtype=torch.float32, device=device),
                    torch.as_tensor(labels, dtype=torch.int64, device=device),
                )
            box_arg = None
            if corners is not None:
                xy = prompts.to_encoder_xy(corners.reshape(-1, 2, 2), original, resized)
                box_arg = torch.as_tensor(xy.reshape(-1, 4), dtype=torch.float32, device=device)
            mask_arg = None
            if logits is not None:
                mask_arg = torch.as_tensor(logits, device=device)[:, None]
            sparse, dense = sam.prompt_encoder(point_arg, box_arg, mask_arg)
            context = self._context
            if mask_arg is not None:  # a dense prompt per object: no shared image work
                assert self._features is not None  # set with the embedding
                context = self._decoder.prepare(self._features, self._image_pe, dense, shared=False)
            chosen = slice(1, None) if multimask else slice(0, 1)
            assert context is not None  # prepared with the embedding
            low_res, iou = self._decoder(context, sparse, chosen)
            check_finite(self.model, iou, "predicted IoU")
            check_finite(self.model, low_res, "mask logits")
            return low_res, iou
