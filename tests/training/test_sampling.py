import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.training.sampling import prepare_image, sample_objects


def test_targets_and_boxes_are_in_the_encoder_frame(labelled_images):
    image = labelled_images[0]  # 96 x 96: the encoder frame is 1024 x 1024, low-res 256 x 256
    prepared = prepare_image(image, 1024, np.random.default_rng(0))
    batch = sample_objects(prepared, 10, np.random.default_rng(0))
    assert batch.targets.shape == (4, 1, 256, 256) and prepared.input_size == (1024, 1024)
    for k, object_id in enumerate(batch.ids):
        truth = torch.from_numpy(image.labels == object_id)[None, None].float()
        upscaled = F.interpolate(truth, size=(256, 256), mode="nearest")[0, 0] > 0.5
        target = batch.targets[k, 0] > 0.5
        iou = (upscaled & target).sum() / (upscaled | target).sum()
        assert iou > 0.95
        rows, cols = np.nonzero(image.labels == object_id)
        scale = 1024 / 96
        expected = [cols.min() * scale, rows.min() * scale, cols.max() * scale, rows.max() * scale]
        assert np.allclose(batch.boxes[k].numpy(), expected, atol=1e-3)
    assert batch.valid.all()


def test_crops_and_flips_move_labels_with_pixels(labelled_images):
    image = labelled_images[0]
    for seed in range(5):
        prepared = prepare_image(image, 1024, np.random.default_rng(seed), crop_size=64, flips=True)
        assert prepared.labels.shape == (64, 64) and prepared.augmented
        bright = prepared.pixels[0, 0].numpy()[::16, ::16] > 128  # the objects are bright
        inside = prepared.labels[::1, ::1] > 0
        assert (bright == inside).mean() > 0.9
