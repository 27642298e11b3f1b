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

__all__ = ["hflip", "Compose", "RandomHorizontalFlip", "RandomShortSideResize"]

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
