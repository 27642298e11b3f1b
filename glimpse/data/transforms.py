"""Training augmentation with mmdetection's semantics, applied by datasets to images in [0, 1]
and their :class:`~glimpse.structures.Target` at the original resolution.

Resizing, normalisation and padding belong to the model (:mod:`glimpse.preprocess`), so that
models take and return original-resolution pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from glimpse.preprocess import resize_image, resize_target
from glimpse.structures import Target

__all__ = ["hflip", "Compose", "RandomHorizontalFlip", "RandomResizeCrop",
           "RandomShortSideResize", "segmentation_train_pipeline"]

def hflip(image: Tensor, target: Target | None = None) -> tuple[Tensor, Target | None]:
    """Horizontal flip of a [C, H, W] image and its target (mmdetection v2: x' = W - x)."""
    width = image.shape[-1]
    image = image.flip(-1)
    if target is None:
        return image, None
    out: Target = dict(target)  # type: ignore[assignment]
    for key in ("boxes", "boxes_ignore", "proposals"):
        if key in out:
            b = out[key]
            out[key] = torch.stack((width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]), dim=1)
    if "masks" in out:
        out["masks"] = out["masks"].flip(-1)
    if "sem_seg" in out:
        out["sem_seg"] = out["sem_seg"].flip(-1)
    return image, out


class Compose:
    """Apply ``(image, target) -> (image, target)`` transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target | None):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    """Flip with probability ``p`` (0.5 in mmdetection's training pipelines).

    Draws from Python's ``random`` so that seeding the worker (``glimpse.engine`` does) makes
    the augmentation reproducible.
    """

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Tensor, target: Target | None):
        if random.random() < self.p:
            return hflip(image, target)
        return image, target


class RandomShortSideResize:
    """Resize so that the short side is one of ``short_sides`` (drawn uniformly) and the long
    side at most ``max_long``, keeping the aspect ratio; the CSAIL UperNet training recipe
    (short side in {300, 375, 450, 525, 600}, long side <= 1000) that the CARAFE paper's
    Table 5 used. Images bilinear, label maps and masks nearest.
    """

    def __init__(self, short_sides: Sequence[int] = (300, 375, 450, 525, 600),
                 max_long: int = 1000):
        if not short_sides or min(short_sides) < 1 or max_long < 1:
            raise ValueError(f"short_sides and max_long must be positive, got "
                             f"{tuple(short_sides)}, {max_long}")
        self.short_sides = tuple(short_sides)
        self.max_long = max_long

    def __call__(self, image: Tensor, target: Target | None):
        h, w = image.shape[-2:]
        short = random.choice(self.short_sides)
        factor = min(short / min(h, w), self.max_long / max(h, w))
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        out = resize_image(image, size)
        return out, resize_target(target, (h, w), size) if target is not None else None


class RandomResizeCrop:
    """mmsegmentation's ADE20K training geometry (``upernet_r50_4xb4-80k_ade20k-512x512``):
    ``RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)`` then
    ``RandomCrop(512, cat_max_ratio=0.75)``: a ratio r is drawn uniformly, the image is resized
    to fit in ``(2048 r) x (512 r)`` (long x short), and a crop of ``crop_size`` is taken, redrawn
    up to 10 times while one class covers more than ``cat_max_ratio`` of its labelled pixels.
    Crops of images smaller than ``crop_size`` are the whole side (the model pads the batch).
    mmseg's photometric distortion is not applied (glimpse departs here).
    """

    def __init__(self, scale: tuple[int, int] = (2048, 512),
                 ratio_range: tuple[float, float] = (0.5, 2.0),
                 crop_size: tuple[int, int] = (512, 512), cat_max_ratio: float = 0.75,
                 ignore_index: int = 255):
        if min(scale) < 1 or min(crop_size) < 1 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"scale, crop_size and ratio_range must be positive, got {scale}, "
                             f"{crop_size}, {ratio_range}")
        self.scale, self.ratio_range, self.crop_size = scale, ratio_range, crop_size
        self.cat_max_ratio, self.ignore_index = cat_max_ratio, ignore_index

    def __call__(self, image: Tensor, target: Target | None):
        if target is not None and ("boxes" in target or "proposals" in target):
            raise ValueError("RandomResizeCrop crops semantic label maps only, not boxes")
        h, w = image.shape[-2:]
        r = random.uniform(*self.ratio_range)
        factor = min(max(self.scale) * r / max(h, w), min(self.scale) * r / min(h, w))
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        image = resize_image(image, size)
        if target is not None:
            target = resize_target(target, (h, w), size)
        ch, cw = min(self.crop_size[0], size[0]), min(self.crop_size[1], size[1])
        for _ in range(10):
            top, left = random.randint(0, size[0] - ch), random.randint(0, size[1] - cw)
            if target is None or "sem_seg" not in target or self.cat_max_ratio >= 1:
                break
            labels = target["sem_seg"][top:top + ch, left:left + cw]
            _, counts = labels[labels != self.ignore_index].unique(return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        image = image[:, top:top + ch, left:left + cw]
        if target is not None:
            target = dict(target)  # type: ignore[assignment]
            for key in ("sem_seg", "masks"):
                if key in target:
                    target[key] = target[key][..., top:top + ch, left:left + cw]
        return image, target


def segmentation_train_pipeline(recipe: str) -> Compose:
    """The training augmentation of a segmentation recipe (the keys of
    ``glimpse.engine.train_dense.SEGMENTATION_RECIPES``): ``"csail"`` random short side
    300-600 (long <= 1000) + flip; ``"mmseg_512x512_80k"`` :class:`RandomResizeCrop` + flip."""
    first = {"csail": RandomShortSideResize, "mmseg_512x512_80k": RandomResizeCrop}
    if recipe not in first:
        raise ValueError(f"unknown segmentation recipe {recipe!r}; known: {', '.join(first)}")
    return Compose([first[recipe](), RandomHorizontalFlip(0.5)])
