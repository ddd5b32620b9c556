"""The instance head's file, and segmenting with it: AIS and APG on whole planes and tiles.

The network's quality is tested with real weights in test_head_quality.py; here the head is
random (tiny SAM) or replaced by perfect maps drawn from labels, so that what is checked
is the plumbing: files, encoder checks, seeds -> prompts -> SAM, tiles merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from napari_sam.engine.everything.settings import EverythingSettings
from napari_sam.engine.instances import segmenter as head_segmenter
from napari_sam.engine.instances.head import HeadCard, InstanceHead, TrainedHead, load_head
from napari_sam.engine.instances.seeds import HeadMaps, predict_maps
from napari_sam.engine.instances.segmenter import HeadSegmenter
from napari_sam.engine.metrics import average_precision
from napari_sam.errors import CheckpointError, InvalidInputError
from napari_sam.training.head_targets import distance_maps


def random_head(encoder: str, width: int = 8, seed: int = 0) -> TrainedHead:
    torch.manual_seed(seed)
    card = HeadCard(encoder=encoder, trained_on="test", mode="labels", planes=1, objects=1)
    return TrainedHead(InstanceHead(256, width).eval(), replace(card, width=width))


def test_a_saved_head_loads_back_identical(tmp_path):
    head = random_head("tiny@abc")
    path = head.save(tmp_path / "sub" / "my head")
    assert path.name == "my head.pt" and (tmp_path / "sub" / "my head.json").is_file()
    loaded = load_head(tmp_path / "sub" / "my head.json")  # either file names the head
    assert loaded.card == head.card
    for name, tensor in head.network.state_dict().items():
        assert torch.equal(tensor, loaded.network.state_dict()[name]), name
    assert not loaded.network.training
    assert not list(tmp_path.rglob("*.partial"))


def test_bad_head_files_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(InvalidInputError, match="a head is two files"):
        load_head(tmp_path / "none")
    path = random_head("tiny@abc").save(tmp_path / "h")
    path.write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="does not hold this head's weights"):
        load_head(path)
    card = json.loads((tmp_path / "h.json").read_text())
    (tmp_path / "h.json").write_text(json.dumps({**card, "version": 99}))
    with pytest.raises(CheckpointError, match="Retrain the head"):
        load_head(path)
    (tmp_path / "h.json").write_text(json.dumps({"colour": "blue"}))
    with pytest.raises(CheckpointError, match="not an instance head card"):
        load_head(path)


def test_a_head_refuses_embeddings_of_another_encoder(tiny_model, image_300x500):
    from napari_sam.engine.prediction.predictor import Predictor

    head = random_head("vit_b@0123")
    with pytest.raises(CheckpointError, match="trained on embeddings of vit_b@0123"):
        HeadSegmenter(Predictor(tiny_model), head, "ais").segment(image_300x500)
    with pytest.raises(InvalidInputError, match="Unknown head mode"):
        HeadSegmenter(Predictor(tiny_model), head, "grid")


def test_maps_cover_the_window(tiny_model, image_300x500):
    from napari_sam.engine.prediction.predictor import Predictor

    head = random_head(tiny_model.model_id)
    embedding = Predictor(tiny_model).encode(image_300x500)
    maps = predict_maps(head.network, embedding, tiny_model.input_size)
    for values in (maps.foreground, maps.centre, maps.boundary):
        assert values.shape == (300, 500) and values.dtype == np.float32
        assert 0 <= values.min() and values.max() <= 1


def test_apg_decodes_one_prompt_per_seed_with_sam(monkeypatch, tiny_model, image_300x500):
    """With maps of three drawn discs, APG asks SAM about exactly their three centres."""
    from napari_sam.engine.prediction.predictor import Predictor

    truth = discs((300, 500))
    monkeypatch.setattr(
        head_segmenter, "predict_maps", lambda *args, **kw: HeadMaps(*distance_maps(truth))
    )
    predictor = Predictor(tiny_model)
    asked = []
    decode = predictor.predict_low_res

    def spy(points, multimask=True):
        asked.append(np.asarray(points).copy())
        return decode(points, multimask=multimask)

    monkeypatch.setattr(predictor, "predict_low_res", spy)
    loose = EverythingSettings(  # the tiny random SAM's masks mean nothing: keep them all
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        keep_iou_floor=-10.0,
        drop_background=False,
        max_area_fraction=1.0,
    )
    head = random_head(tiny_model.model_id)
    result = HeadSegmenter(predictor, head, "apg", loose).segment(image_300x500)
    (points,) = asked
    assert points.shape == (3, 1, 2)
    assert np.abs(np.sort(points[:, 0, 0]) - [40, 40, 200]).max() <= 1
    assert result.points_decoded == 3 and result.count >= 1
    ais = HeadSegmenter(predictor, head, "ais").segment(image_300x500)
    assert average_precision(ais.labels, truth, 0.95) == 1.0


def discs(shape, centres=((40, 50), (40, 200), (200, 400)), radius=15) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
    return labels


@dataclass(frozen=True, eq=False)
class WindowEmbedding:
    """Stands in for an embedding: which window of the plane it is."""

    window: tuple[slice, slice]
    model_id: str = "perfect@0"


def test_tiled_ais_with_perfect_maps_gives_back_every_object(monkeypatch, tiny_model):
    """Objects across tile borders come out whole and once: each belongs to the tile that
    holds its seed, and the halo holds the rest of it."""
    rows, cols = np.mgrid[:300, :400]
    truth = np.zeros((300, 400), np.int32)
    centres = [(40, 40), (150, 200), (148, 126), (260, 330), (100, 300), (200, 60)]
    for index, (r, c) in enumerate(centres, start=1):
        truth[(rows - r) ** 2 + (cols - c) ** 2 <= 14**2] = index

    def perfect(network, embedding, frame, shape=None):
        window_labels = truth[embedding.window]
        return HeadMaps(*distance_maps(window_labels))

    monkeypatch.setattr(head_segmenter, "predict_maps", perfect)
    from napari_sam.engine.prediction.predictor import Predictor

    head = random_head("perfect@0")
    segmenter = HeadSegmenter(Predictor(tiny_model), head, "ais")
    whole = segmenter.segment(truth.astype(np.uint16), embed=WindowEmbedding)
    tiled = segmenter.segment(truth.astype(np.uint16), tile=128, halo=32, embed=WindowEmbedding)
    for result in (whole, tiled):
        assert result.count == len(centres)
        assert average_precision(result.labels, truth, 0.95) == 1.0
