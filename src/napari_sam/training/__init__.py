"""Fine-tuning and training SAM on image + instance-label pairs, and measuring the result.

The modules follow the data: :mod:`~napari_sam.training.datasets` (labelled images from
arrays, files, folders and napari layers, split by whole image), ``sampling`` (objects
per step, crops, flips, targets), ``prompting`` (the SAM paper's simulated interactive
prompts), ``losses``, ``optimization`` (what trains, AdamW, schedule, layer-wise decay,
drop path), ``network`` (trainable models, checkpoints and model cards), ``loop``
(training with validation, early stopping and resume) and ``evaluation`` (mean IoU per
prompt type and per number of clicks, and the regression check). Nothing here imports Qt.
"""
