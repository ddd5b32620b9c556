"""Thin napari dock widgets: read inputs, run one engine call off the GUI thread, write layers."""


def open_annotator(viewer, image=None, model: str = "vit_t", start: bool = True):
    """Dock the SAM annotator in ``viewer`` (one call from the napari console).

    Parameters
    ----------
    viewer : napari.Viewer
    image : str or napari.layers.Image, optional
        The layer to annotate; default the selected (or last) image layer.
    model : str
        Registry name or checkpoint path.
    start : bool
        Start the session at once (encodes the visible plane in the background).

    Returns
    -------
    AnnotatorWidget
    """
    from napari_sam._widgets.annotator import AnnotatorWidget

    widget = AnnotatorWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget, name="SAM annotator", area="right")
    if image is not None:
        widget.image_box.setCurrentText(getattr(image, "name", image))
    if start:
        widget.start()
    return widget


def open_everything(viewer, image=None, model="vit_t", preview: bool = True):
    """Dock the segment-everything widget in ``viewer`` (one call from the napari console).

    Parameters
    ----------
    viewer : napari.Viewer
    image : str or napari.layers.Image, optional
        The layer to segment; default the first image layer.
    model : str, pathlib.Path or SamModel
        Registry name, checkpoint path or a loaded model.
    preview : bool
        Start decoding the visible plane at once (in the background).

    Returns
    -------
    EverythingWidget
    """
    from napari_sam._widgets.everything import EverythingWidget

    widget = EverythingWidget(viewer, model=model)
    viewer.window.add_dock_widget(widget, name="SAM segment everything", area="right")
    if image is not None:
        widget.image_box.setCurrentText(getattr(image, "name", image))
    if preview:
        widget.preview()
    return widget
