"""The installed plugin is discovered by napari (npe2) and opens its samples as two layers each.

Needs the `test` extra and an X server (pytest-xvfb starts Xvfb): napari cannot add layers
with Qt's offscreen platform, which has no OpenGL.
"""

from __future__ import annotations

import numpy as np

PLUGIN = "napari-sam-microscopy"  # npe2 requires the manifest name to be the distribution name
SAMPLE = "dsb2018_nuclei"
SAMPLE_3D = "cells3d_nuclei"  # downloaded on first use; `make test` fetches it beforehand


def test_manifest_is_discovered():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest(PLUGIN)
    assert manifest.display_name == "napari-sam"
    samples = {sample.key: sample.display_name for sample in manifest.contributions.sample_data}
    assert samples == {SAMPLE: "DSB2018 nuclei (2D)", SAMPLE_3D: "cells3d nuclei (3D)"}


def test_open_sample_adds_image_and_labels(make_napari_viewer):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    added = viewer.open_sample(PLUGIN, SAMPLE)

    assert [type(layer) for layer in added] == [Image, Labels]
    assert [layer.name for layer in viewer.layers] == ["DSB2018 nuclei", "DSB2018 nuclei labels"]
    image, labels = viewer.layers
    assert image.data.shape == (512, 512) and image.data.dtype == np.uint16
    assert labels.data.shape == (512, 512)
    assert len(np.unique(labels.data)) == 126


def test_open_3d_sample_adds_volume_and_labels(make_napari_viewer):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    added = viewer.open_sample(PLUGIN, SAMPLE_3D)

    assert [type(layer) for layer in added] == [Image, Labels]
    assert [layer.name for layer in viewer.layers] == ["cells3d nuclei", "cells3d nuclei labels"]
    image, labels = viewer.layers
    assert image.ndim == 3 and labels.ndim == 3
    assert image.data.shape == (60, 256, 256) and image.data.dtype == np.uint16
    assert labels.data.shape == (60, 256, 256)
    assert len(np.unique(labels.data)) == 21  # background + 20 nuclei
    assert tuple(image.scale) == (1, 1, 1) == tuple(labels.scale)  # the TIFFs give no voxel size


def test_annotator_is_in_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-microscopy", "SAM annotator")
    from napari_sam._widgets.annotator import AnnotatorWidget

    assert isinstance(widget, AnnotatorWidget)
    assert widget.image_box.count() == 0  # no image layer yet
    widget.close_session()
