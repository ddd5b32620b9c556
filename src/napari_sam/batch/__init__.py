"""Batch drivers over whole volumes: embedding every plane into the on-disk cache, and
segment-everything over a stack, slice by slice, in this process or on dask.distributed,
resumably. They sit above :mod:`napari_sam.engine` and :mod:`napari_sam.io`, and nothing
below imports them."""
