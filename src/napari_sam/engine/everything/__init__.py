"""Segment everything: grid prompting on views of a plane, low-resolution filtering and
merging into one label image, the widget's preview-and-rethreshold session, and linking
per-plane labels into 3D objects."""
