"""Data on disk: images and volumes read lazily (TIFF, zarr, OME-Zarr), label images and
overlays written, the embedding cache and the segment-everything store, and the sample
data. Nothing here runs a model over a whole volume: that is :mod:`napari_sam.batch`."""
