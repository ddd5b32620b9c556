import math

import pytest
import torch

from napari_sam.engine.network.prompt_encoder import FourierPositionEncoding, PromptEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return PromptEncoder(input_image_size=(1024, 1024)).eval()


def test_fourier_encoding_of_known_positions():
    pe = FourierPositionEncoding(2)
    with torch.no_grad():
        pe.positional_encoding_gaussian_matrix.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.25]]))
    out = pe.encode(torch.tensor([[0.75, 1.0]]))  # (2x-1, 2y-1) = (0.5, 1.0)
    angles = 2 * math.pi * torch.tensor([0.5, 0.25])
    torch.testing.assert_close(out, torch.cat([angles.sin(), angles.cos()])[None])


def test_grid_is_the_encoding_of_cell_centres_in_x_y_order():
    torch.manual_seed(0)
    pe = FourierPositionEncoding(8)
    grid = pe.grid((3, 5))  # 3 rows, 5 cols
    assert grid.shape == (16, 3, 5)
    for row in range(3):
        for col in range(5):
            # points() takes (x, y) = (col, row) pixel positions in an (h, w) image
            expected = pe.points(torch.tensor([col + 0.5, row + 0.5]), (3, 5))
            torch.testing.assert_close(grid[:, row, col], expected)


def test_points_scale_x_by_width_and_y_by_height():
    torch.manual_seed(0)
    pe = FourierPositionEncoding(4)
    torch.testing.assert_close(
        pe.points(torch.tensor([[30.0, 10.0]]), (20, 60)), pe.encode(torch.tensor([[0.5, 0.5]]))
    )


def test_dense_positional_encoding_shape(encoder):
    assert encoder.dense_positional_encoding().shape == (1, 256, 64, 64)


@pytest.mark.parametrize(
    ("points", "box", "tokens"), [(3, False, 4), (3, True, 5), (0, True, 2), (1, False, 2)]
)
def test_sparse_token_counts(encoder, points, box, tokens):
    point_arg = None
    if points:
        point_arg = (torch.rand(2, points, 2) * 1000, torch.ones(2, points, dtype=torch.int64))
    box_arg = torch.tensor([[10.0, 20.0, 300.0, 400.0]] * 2) if box else None
    with torch.no_grad():
        sparse, dense = encoder(point_arg, box_arg, None)
    assert sparse.shape == (2, tokens, 256)
    assert dense.shape == (2, 256, 64, 64)


def test_point_labels_select_learned_embeddings(encoder):
    coords = torch.tensor([[[100.0, 700.0], [100.0, 700.0]]])
    labels = torch.tensor([[1, 0]])
    with torch.no_grad():
        sparse, _ = encoder((coords, labels), None, None)
        weights = [e.weight[0] for e in encoder.point_embeddings]
        torch.testing.assert_close(sparse[0, 0] - sparse[0, 1], weights[1] - weights[0])
        # the padding token ("not a point") carries no position
        torch.testing.assert_close(sparse[0, 2], encoder.not_a_point_embed.weight[0])
        # positions are shifted to pixel centres: (x, y) + 0.5 over the 1024 input
        expected = encoder.pe_layer.encode(torch.tensor([100.5, 700.5]) / 1024) + weights[1]
        torch.testing.assert_close(sparse[0, 0], expected)


def test_box_corners_get_corner_embeddings(encoder):
    box = torch.tensor([[10.0, 20.0, 300.0, 400.0]])
    with torch.no_grad():
        sparse, _ = encoder(None, box, None)
        top_left = encoder.pe_layer.encode(torch.tensor([10.5, 20.5]) / 1024)
        bottom_right = encoder.pe_layer.encode(torch.tensor([300.5, 400.5]) / 1024)
        torch.testing.assert_close(sparse[0, 0], top_left + encoder.point_embeddings[2].weight[0])
        torch.testing.assert_close(
            sparse[0, 1], bottom_right + encoder.point_embeddings[3].weight[0]
        )


def test_dense_embedding_without_and_with_a_mask(encoder):
    with torch.no_grad():
        _, no_mask = encoder(None, torch.zeros(3, 4), None)
        expected = encoder.no_mask_embed.weight[0].view(256, 1, 1).expand(256, 64, 64)
        for item in no_mask:
            torch.testing.assert_close(item, expected)
        sparse, dense = encoder(None, None, torch.randn(3, 1, 256, 256))
    assert sparse.shape == (3, 0, 256)
    assert dense.shape == (3, 256, 64, 64)
    assert not torch.allclose(dense[0], dense[1])
