"""Image and target transforms with mmdetection's semantics.

Two kinds of callers use these functions:

* datasets apply training augmentation (:class:`RandomHorizontalFlip`) to images in [0, 1] and
  their :class:`~glimpse.structures.Target` at the original resolution;
* a detector's preprocessor resizes (keep ratio to a scale, 1333x800 in the papers), normalises
  and pads to a size divisor (32; 64 with CARAFE), then maps its predictions back with
  :func:`rescale_size`'s factors, so models take and return original-resolution pixels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse.structures import Target

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "rescale_size",
    "resize_image",
    "resize_target",
    "hflip",
    "normalize",
    "pad_batch",
    "Compose",
    "RandomHorizontalFlip",
]

# mmdetection's pytorch-style normalisation, in 0..255 units (to_rgb=True).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """Keep-ratio target size, as mmcv's ``rescale_size``.

    Args:
        size: (height, width) of the input image.
        scale: (long edge, short edge) bound, e.g. (1333, 800).

    Returns:
        ((new_height, new_width), factor): the largest size that fits both bounds.
    """
    h, w = size
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(h * factor + 0.5), int(w * factor + 0.5)), factor


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [C, H, W] (or [B, C, H, W]) to ``size = (height, width)``."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image.dim() == 4
    out = F.interpolate(image if batched else image[None], size=size, mode="bilinear",
                        align_corners=False)
    return out if batched else out[0]


def resize_target(target: Target, old_size: tuple[int, int], new_size: tuple[int, int]) -> Target:
    """Rescale boxes (per-axis factors), masks and semantic maps (nearest) to ``new_size``."""
    sy, sx = new_size[0] / old_size[0], new_size[1] / old_size[1]
    out: Target = dict(target)  # type: ignore[assignment]
    scale = torch.tensor([sx, sy, sx, sy])
    for key in ("boxes", "boxes_ignore", "proposals"):
        if key in out:
            out[key] = out[key] * scale.to(out[key])
    if "masks" in out:
        masks = out["masks"]
        out["masks"] = (F.interpolate(masks[None].float(), size=new_size, mode="nearest")[0]
                        .to(masks.dtype) if masks.numel() else masks.new_zeros(
                            (masks.shape[0], *new_size)))
    if "sem_seg" in out:
        seg = out["sem_seg"]
        out["sem_seg"] = F.interpolate(seg[None, None].float(), size=new_size,
                                       mode="nearest")[0, 0].to(seg.dtype)
    return out


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


def normalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """[B or none, 3, H, W] image in [0, 1] -> (255 * image - mean) / std."""
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(shape)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(shape)
    return (image * 255.0 - m) / s


def pad_batch(images: Sequence[Tensor], size_divisor: int = 32,
              pad_value: float = 0.0) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack [C, H_i, W_i] images into [B, C, H, W], padding bottom/right to ``size_divisor``.

    Returns:
        (batch, sizes): the padded batch and each image's (height, width) before padding.
    """
    if len(images) == 0:
        raise ValueError("pad_batch needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    h = (h + size_divisor - 1) // size_divisor * size_divisor
    w = (w + size_divisor - 1) // size_divisor * size_divisor
    batch = images[0].new_full((len(images), images[0].shape[0], h, w), pad_value)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


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
