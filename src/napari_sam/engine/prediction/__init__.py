"""One image in, masks out: intensity normalisation, prompt checking in (row, col), the
:class:`~napari_sam.engine.prediction.predictor.Predictor` (encode once, decode in
milliseconds), the result dataclasses, and stacks seen as planes."""
