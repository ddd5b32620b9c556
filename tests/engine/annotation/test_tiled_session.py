"""Tiled sessions and planes with the tiny model: geometry, upscaling, backends, cancelling."""

import numpy as np
import pytest
import torch

from napari_sam.engine.annotation.session import AnnotationSession
from napari_sam.engine.annotation.tiled_session import TiledSession, open_session
from napari_sam.engine.prediction.predictor import Predictor
from napari_sam.engine.prediction.preprocess import compute_normalization
from napari_sam.engine.prediction.prompts import to_encoder_xy
from napari_sam.engine.prediction.upsampling import LogitUpsampler
from napari_sam.engine.tiling.prompting import TiledPlane
from napari_sam.errors import OperationCancelled


class MemoryTiles:
    """A TileBackend in a dict, counting loads and saves."""

    def __init__(self):
        self.saved, self.loads = {}, 0

    def load(self, index):
        self.loads += 1
        return self.saved.get(index)

    def save(self, index, embedding):
        self.saved[index] = embedding

    def completed(self):
        return set(self.saved)


@pytest.fixture(scope="module")
def image(make_image):
    return make_image((300, 500), seed=4)


def counting(predictor):
    calls = []
    original = predictor.encode
    predictor.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    return calls


def test_open_session_tiles_only_large_planes(tiny_model, image):
    assert type(open_session(tiny_model, image)) is AnnotationSession  # 500 px fits the encoder
    assert type(open_session(tiny_model, image, upscale=4)) is TiledSession  # 2000 > 1024 pixels
    session = open_session(tiny_model, image, tile=128, halo=16)
    assert isinstance(session, TiledSession) and (session.tile, session.halo) == (128, 16)
    assert type(open_session(tiny_model, image, tile=0, upscale=4)) is AnnotationSession


def test_upscaled_tiles_map_prompts_and_masks_by_the_factor(tiny_model, make_image):
    large = make_image((840, 840), seed=5)
    plane = TiledPlane(Predictor(tiny_model), large, compute_normalization(large), upscale=2)
    assert (plane.tile, plane.halo, plane.side, len(plane.tiles)) == (384, 64, 512, 9)
    for tile in plane.tiles:
        rows, cols = tile.window
        embedding = plane.embedding(tile)
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        assert embedding.original_size == shape
        scale = np.array(embedding.input_size) / shape
        assert scale.min() >= 2.0  # at least 2 encoder pixels per pixel (more on clipped windows)
        if shape == (512, 512):
            np.testing.assert_array_equal(scale, [2.0, 2.0])
        point = np.array([[rows.start + 100.5, cols.start + 37.25]])
        encoder = to_encoder_xy(point - [rows.start, cols.start], shape, embedding.input_size)
        back = encoder[0, ::-1] / scale + [
            rows.start,
            cols.start,
        ]  # (x, y) -> (row, col) plane pixels
        np.testing.assert_allclose(back, point[0], atol=0.02)
    logits = torch.full((1, 256, 256), -8.0)
    logits[0, 50:80, 20:40] = 8.0  # encoder pixels 200..320 by 80..160 of a full 512 x 512 window
    full = plane.tiles[4].window  # the centre tile's window is a whole 512 x 512
    mask = (
        LogitUpsampler((512, 512), plane.embedding(full).input_size, 1024)(logits)[0] > 0
    ).numpy()
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (100, 160, 40, 80)  # halved


def test_tiled_session_embeds_every_tile_once_and_previews_whole_plane_masks(tiny_model, image):
    backend = MemoryTiles()
    session = TiledSession(tiny_model, image, tile=128, halo=16, tile_backends=lambda key: backend)
    calls = counting(session.predictor)
    assert not session.has_embedding(())
    steps = []
    session.embed((), progress=lambda done, total: steps.append((done, total)))
    assert (
        steps == [(i, 12) for i in range(1, 13)] and len(calls) == 12 and len(backend.saved) == 12
    )
    assert session.has_embedding(())
    preview = session.preview((), points=[(150, 250)], boxes=[(20, 30, 90, 120)])
    assert preview.masks().shape == (2, 300, 500)
    direct = session.plane(()).predict(box=np.array([20, 30, 90, 120.0]))
    np.testing.assert_array_equal(preview.objects[0].mask, direct.masks[0])
    drawn = np.zeros((300, 500), bool)
    drawn[40:60, 70:95] = True
    refined = session.preview((), mask_input=drawn)
    np.testing.assert_array_equal(refined.objects[0].prompt.box, [40, 70, 59, 94])

    again = TiledSession(tiny_model, image, tile=128, halo=16, tile_backends=lambda key: backend)
    calls = counting(again.predictor)
    again.embed(())
    assert calls == [] and again.has_embedding(())


def test_cancelling_keeps_the_tiles_already_encoded(tiny_model, image):
    backend, asked = MemoryTiles(), []
    plane = TiledPlane(
        Predictor(tiny_model), image, compute_normalization(image), 128, 16, backend=backend
    )
    with pytest.raises(OperationCancelled, match="cancelled"):
        plane.encode_tiles(should_stop=lambda: len(backend.saved) >= 3 and not asked.append(1))
    assert len(backend.saved) == 3 and not plane.ready()
    assert plane.encode_tiles() == 12 - 3 and plane.ready()


def test_without_a_cache_a_plane_keeps_only_the_tiles_memory_holds(
    tiny_model, image, monkeypatch, caplog
):
    from napari_sam.engine.annotation import tiled_session

    assert tiled_session.tiles_in_memory() >= 16
    everything = TiledSession(tiny_model, image, tile=64, halo=8).plane()
    assert everything.capacity == len(everything.tiles) + tiled_session.SPARE_WINDOWS
    monkeypatch.setattr(tiled_session, "tiles_in_memory", lambda: 5)
    capped = TiledSession(tiny_model, image, tile=64, halo=8).plane()
    assert len(capped.tiles) > 5 and capped.capacity == 16  # the session's own capacity
    assert "Attach an embedding cache" in caplog.text


def test_a_tiled_stack_propagates_with_whole_plane_masks(tiny_model, make_image):
    from napari_sam.engine.annotation.projection import project
    from napari_sam.engine.annotation.propagation import PropagationSettings

    stack = np.stack([make_image((300, 500), seed=s) for s in (4, 5, 6)])
    session = open_session(tiny_model, stack, tile=256, halo=32)
    start = np.zeros((300, 500), bool)
    start[100:160, 200:280] = True
    loose = PropagationSettings(min_iou=0.0, min_score=0.0, max_growth=np.inf, min_area=1)
    (found,) = session.propagate((1,), start[None], settings=loose).objects
    assert set(found.slices) <= {0, 1, 2} and 1 in found.slices
    for index in set(found.slices) - {1}:  # each step is the tiled plane's own answer
        prompt = project(start, None, loose.projection, loose.box_margin)
        direct = session.plane((index,)).predict(prompt.points, prompt.labels, prompt.box)
        np.testing.assert_array_equal(found.slices[index].paste((300, 500)), direct.masks[0])
