"""Sample images bundled with napari-sam, for the library and for napari's File > Open Sample.

The only sample so far is one 2D fluorescence image of cell nuclei with its 125
hand-annotated nuclei, from the 2018 Data Science Bowl (Caicedo et al., Nature Methods 16,
1247-1253, 2019; CC0), as redistributed in the StarDist package. ``src/napari_sam/data/
README.md`` gives the source and attribution. The files are read through
:mod:`importlib.resources`, so they load from an installed wheel, an editable install or a
zip alike.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np
import tifffile

DSB2018_IMAGE = "dsb2018_nuclei.tif"
DSB2018_LABELS = "dsb2018_nuclei_labels.tif"


def read_sample_file(name: str) -> np.ndarray:
    """Read one bundled TIFF from ``napari_sam/data``.

    Parameters
    ----------
    name : str
        File name inside the package's ``data`` folder, e.g. ``"dsb2018_nuclei.tif"``.

    Returns
    -------
    numpy.ndarray
        The stored array, with the dtype and shape it was saved with.

    Raises
    ------
    FileNotFoundError
        If no bundled file has that name.
    """
    resource = files("napari_sam").joinpath("data", name)
    with resource.open("rb") as handle:
        return tifffile.imread(handle)


def load_dsb2018() -> tuple[np.ndarray, np.ndarray]:
    """Load the DSB2018 nuclei image and its instance labels.

    Returns
    -------
    image : numpy.ndarray
        (row, col) = (512, 512) uint16 fluorescence intensities (values 0 to 235).
    labels : numpy.ndarray
        (row, col) = (512, 512) int32 instance labels: 0 is background, 125 nuclei with
        ids that are not consecutive (largest id 183).

    Examples
    --------
    >>> from napari_sam.samples import load_dsb2018
    >>> image, labels = load_dsb2018()
    >>> image.shape, image.dtype.name, labels.dtype.name
    ((512, 512), 'uint16', 'int32')
    >>> len(np.unique(labels)) - 1
    125
    """
    image = read_sample_file(DSB2018_IMAGE)
    labels = read_sample_file(DSB2018_LABELS).astype(np.int32)
    return image, labels


def make_dsb2018_sample() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Provide the DSB2018 nuclei sample to napari as two layers.

    napari calls this through the ``napari-sam.make_dsb2018_sample`` command of the plugin
    manifest (File > Open Sample > napari-sam > DSB2018 nuclei (2D)).

    Returns
    -------
    list of tuple
        napari layer data tuples ``(data, kwargs, layer_type)``: an ``"image"`` layer
        named ``"DSB2018 nuclei"`` holding the (512, 512) uint16 image, then a
        ``"labels"`` layer named ``"DSB2018 nuclei labels"`` holding the (512, 512)
        int32 ground-truth labels.
    """
    image, labels = load_dsb2018()
    return [
        (image, {"name": "DSB2018 nuclei", "colormap": "gray"}, "image"),
        # Ground truth rather than a working layer: half-transparent, so the image shows.
        (labels, {"name": "DSB2018 nuclei labels", "opacity": 0.5}, "labels"),
    ]
