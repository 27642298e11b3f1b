"""Augmentation (glimpse.data.transforms) and image geometry (glimpse.preprocess) on hand-made
cases: boxes, masks and semantic maps stay consistent."""

from __future__ import annotations

import pytest
import torch

from glimpse.data.transforms import Compose, RandomHorizontalFlip, hflip
from glimpse.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    pad_batch,
    rescale_size,
    resize_image,
    resize_target,
)


def _mask_box(mask: torch.Tensor) -> list[float]:
    """Tight xyxy box (pixel edges) of a binary mask, the reference for box transforms."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _case():
    """A 6x10 image with one 3x4 box and its exact mask; sem_seg labels the box 2."""
    image = torch.arange(3 * 6 * 10, dtype=torch.float32).view(3, 6, 10) / 180
    masks = torch.zeros(1, 6, 10, dtype=torch.uint8)
    masks[0, 1:4, 2:6] = 1
    sem = torch.zeros(6, 10, dtype=torch.int64)
    sem[1:4, 2:6] = 2
    sem[5, 9] = 255
    target = {"boxes": torch.tensor([[2.0, 1.0, 6.0, 4.0]]), "labels": torch.tensor([1]),
              "masks": masks, "sem_seg": sem, "boxes_ignore": torch.tensor([[0.0, 0.0, 1.0, 6.0]]),
              "proposals": torch.tensor([[7.0, 2.0, 10.0, 3.0]]), "image_id": 4}
    return image, target


def test_hflip_boxes_masks_sem_seg_agree():
    image, target = _case()
    flipped, out = hflip(image, target)
    assert torch.equal(flipped[:, :, 0], image[:, :, -1])
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.0, 1.0, 8.0, 4.0]]))
    assert _mask_box(out["masks"][0]) == out["boxes"][0].tolist()
    assert torch.equal(out["sem_seg"] == 2, out["masks"][0].bool())
    assert out["sem_seg"][5, 0] == 255
    torch.testing.assert_close(out["boxes_ignore"], torch.tensor([[9.0, 0.0, 10.0, 6.0]]))
    torch.testing.assert_close(out["proposals"], torch.tensor([[0.0, 2.0, 3.0, 3.0]]))
    assert out["image_id"] == 4 and torch.equal(out["labels"], target["labels"])
    # Flipping twice is the identity; the input target is not modified.
    again, back = hflip(flipped, out)
    assert torch.equal(again, image)
    for key in ("boxes", "masks", "sem_seg", "boxes_ignore", "proposals"):
        assert torch.equal(back[key], target[key])
    assert target["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0]]


def test_hflip_empty_target():
    image = torch.rand(3, 5, 7)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "masks": torch.zeros(0, 5, 7, dtype=torch.uint8)}
    _, out = hflip(image, target)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 5, 7)
    assert hflip(image)[1] is None


def test_resize_target_integer_factor():
    image, target = _case()
    out = resize_target(target, (6, 10), (12, 20))
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.0, 2.0, 12.0, 8.0]]))
    assert out["masks"].shape == (1, 12, 20) and out["masks"].dtype == torch.uint8
    assert _mask_box(out["masks"][0]) == out["boxes"][0].tolist()
    assert out["sem_seg"].shape == (12, 20) and out["sem_seg"].dtype == torch.int64
    assert torch.equal(out["sem_seg"] == 2, out["masks"][0].bool())
    assert set(out["sem_seg"].unique().tolist()) == {0, 2, 255}  # nearest: no blended labels
    # Per-axis factors (non keep-ratio resize).
    out = resize_target(target, (6, 10), (3, 20))
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.0, 0.5, 12.0, 2.0]]))
    empty = resize_target({"masks": torch.zeros(0, 6, 10, dtype=torch.uint8)}, (6, 10), (3, 5))
    assert empty["masks"].shape == (0, 3, 5)
    assert resize_image(image, (12, 20)).shape == (3, 12, 20)
    assert resize_image(image, (6, 10)) is image


@pytest.mark.parametrize("size, scale, want", [
    ((480, 640), (1333, 800), ((800, 1067), 800 / 480)),  # short edge bound
    ((400, 1333 * 2), (1333, 800), ((200, 1333), 0.5)),  # long edge bound
    ((128, 128), (128, 128), ((128, 128), 1.0)),
])
def test_rescale_size(size, scale, want):
    (h, w), factor = rescale_size(size, scale)
    assert (h, w) == want[0]
    assert factor == pytest.approx(want[1])
    assert max(h, w) <= max(scale) and min(h, w) <= min(scale)


def test_pad_batch_and_normalize():
    a, b = torch.rand(3, 5, 7), torch.rand(3, 33, 2)
    batch, sizes = pad_batch([a, b], size_divisor=32)
    assert batch.shape == (2, 3, 64, 32) and sizes == [(5, 7), (33, 2)]
    assert torch.equal(batch[0, :, :5, :7], a) and torch.equal(batch[1, :, :33, :2], b)
    assert batch[0, :, 5:].abs().sum() == 0 and batch[0, :, :, 7:].abs().sum() == 0
    with pytest.raises(ValueError):
        pad_batch([])
    x = torch.rand(3, 2, 2)
    want = torch.stack([(x[c] * 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)])
    torch.testing.assert_close(normalize(x), want)


def test_random_flip_and_compose():
    image, target = _case()
    flipped, out = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1))
    same, out0 = RandomHorizontalFlip(0.0)(image, target)
    assert same is image and out0 is target
    img2, out2 = Compose([RandomHorizontalFlip(1.0), RandomHorizontalFlip(1.0)])(image, target)
    assert torch.equal(img2, image) and torch.equal(out2["boxes"], target["boxes"])
