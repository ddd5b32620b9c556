"""The SAM engine: pure numpy and torch, never napari, Qt, magicgui, io, training or batch.

Each subpackage is one concern, and imports only the ones listed before it:

* :mod:`~napari_sam.engine.network`: SAM's torch modules (encoders, prompt encoder, mask
  decoder) and the decoder's fast re-association;
* :mod:`~napari_sam.engine.model`: which SAM (the registry), its weights (fetched,
  verified, cached), loading, and how it runs on this machine (device, allocator, threads,
  ONNX);
* :mod:`~napari_sam.engine.prediction`: one image in, masks out: normalisation, prompts,
  the :class:`~napari_sam.engine.prediction.predictor.Predictor`, result dataclasses,
  planes of stacks;
* :mod:`~napari_sam.engine.tiling`: planes larger than the encoder, cut into tiles with
  halo, and objects followed across tiles;
* :mod:`~napari_sam.engine.everything`: segment everything (grid prompting, filtering,
  merging, the widget's session) and linking planes into 3D objects;
* :mod:`~napari_sam.engine.annotation`: the interactive session behind the annotator
  (objects from prompts, commits, records, the embedding store).

:mod:`~napari_sam.engine.metrics` (IoU, average precision) sits below them all. Import
what you need from the modules, e.g.
``from napari_sam.engine.prediction.predictor import Predictor``;
``tests/test_layering.py`` keeps this order.
"""
