"""The SAM engine: pure numpy and torch, never napari, Qt or magicgui.

Import what you need from the submodules, e.g.
``from napari_sam.engine.predictor import Predictor``.
"""
