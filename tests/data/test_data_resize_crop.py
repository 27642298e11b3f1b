"""RandomResizeCrop (mmseg's ADE20K 512 x 512 geometry) by hand, and the recipe pipelines."""

from __future__ import annotations

import random

import pytest
import torch

from glimpse.data.transforms import (
    RandomResizeCrop,
    RandomShortSideResize,
    segmentation_train_pipeline,
)


def test_resize_then_crop_sizes():
    random.seed(0)
    t = RandomResizeCrop(ratio_range=(1.0, 1.0))
    image = torch.rand(3, 256, 512)
    labels = torch.arange(8).repeat_interleave(64)[None].expand(256, 512).clone()
    out, target = t(image, {"sem_seg": labels})
    # fit in 2048 x 512: factor min(2048 / 512, 512 / 256) = 2 -> 512 x 1024, then a 512 crop
    assert out.shape == (3, 512, 512) and target["sem_seg"].shape == (512, 512)
    # nearest-resized columns of 128 px per class, cropped: whole classes stay together
    _, counts = target["sem_seg"].unique(return_counts=True)
    assert counts.max() / counts.sum() < 0.75
    # ratio 0.5 of a small image: 64 x 96 -> fit in 1024 x 256: factor 256 / 64 = 4
    small, _ = RandomResizeCrop(ratio_range=(0.5, 0.5))(torch.rand(3, 64, 96), None)
    assert small.shape == (3, 256, 384)
    tiny, tgt = RandomResizeCrop(scale=(64, 16), ratio_range=(1.0, 1.0))(
        torch.rand(3, 20, 10), {"sem_seg": torch.zeros(20, 10, dtype=torch.long)})
    assert tiny.shape == (3, 32, 16) and tgt["sem_seg"].shape == (32, 16)  # smaller than crop


def test_cat_max_ratio_redraws_and_gives_up_after_ten(monkeypatch):
    real = random.randint
    draws: list[tuple[int, int]] = []
    monkeypatch.setattr(random, "randint", lambda a, b: draws.append((a, b)) or real(a, b))
    t = RandomResizeCrop(ratio_range=(1.0, 1.0))
    labels = torch.zeros(512, 1024, dtype=torch.long)
    labels[:, 900:] = 1  # only crops starting right of x = 388 see two classes
    random.seed(3)
    _, target = t(torch.rand(3, 512, 1024), {"sem_seg": labels})
    _, counts = target["sem_seg"].unique(return_counts=True)
    assert 2 <= len(draws) <= 20 and len(draws) % 2 == 0
    assert len(draws) == 20 or (len(counts) == 2 and counts.max() / counts.sum() < 0.75)
    draws.clear()
    t(torch.rand(3, 512, 1024), {"sem_seg": torch.zeros(512, 1024, dtype=torch.long)})
    assert len(draws) == 20  # one class everywhere: ten draws, then the last crop is kept


def test_errors_and_pipelines():
    with pytest.raises(ValueError, match="semantic label maps only"):
        RandomResizeCrop()(torch.rand(3, 8, 8), {"boxes": torch.zeros(0, 4)})
    with pytest.raises(ValueError, match="must be positive"):
        RandomResizeCrop(crop_size=(0, 512))
    assert isinstance(segmentation_train_pipeline("csail").transforms[0], RandomShortSideResize)
    assert isinstance(segmentation_train_pipeline("mmseg_512x512_80k").transforms[0],
                      RandomResizeCrop)
    with pytest.raises(ValueError, match="unknown segmentation recipe 'x'"):
        segmentation_train_pipeline("x")
