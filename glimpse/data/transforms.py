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

from glimpse.structures import Target

__all__ = ["hflip", "Compose", "RandomHorizontalFlip"]

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
