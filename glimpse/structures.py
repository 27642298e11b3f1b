"""Data contracts shared by every model, dataset and evaluator, plus small box helpers.

One box format lives inside the library: ``xyxy`` in absolute pixels. Conversions happen only
at the edges (COCO loading and result writing), through the ``box_<from>_to_<to>`` helpers.

Labels follow torchvision: foreground classes are ``1..K`` and ``0`` is background, so a model
built with ``num_classes=K`` predicts K foreground classes (80 for COCO).
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import Tensor

__all__ = [
    "Target",
    "Detection",
    "Segmentation",
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
    "box_area",
    "clip_boxes",
    "nonempty_boxes",
]


class Target(TypedDict, total=False):
    """Annotations of one image, in the pixel frame of the image handed to the model.

    Keys:
        boxes: float32[N, 4] xyxy, absolute pixels.
        labels: int64[N] in 1..K.
        masks: uint8[N, H, W] instance masks (mask models only).
        sem_seg: int64[H, W] semantic map, 255 = ignore (semantic branches, segmentation).
        boxes_ignore: float32[M, 4] xyxy regions never trained as positives (COCO ``iscrowd``).
        image_id: int, the dataset's image id (COCO id), used to write results back.
        proposals: float32[P, 4] xyxy precomputed proposals (Fast R-CNN).
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    sem_seg: Tensor
    boxes_ignore: Tensor
    image_id: int
    proposals: Tensor


class Detection(TypedDict, total=False):
    """What a model returns in eval mode for one image, in that image's pixel frame.

    Keys:
        boxes: float32[D, 4] xyxy, absolute pixels of the image given to the model.
        labels: int64[D] in 1..K (proposal models return 1 for every box).
        scores: float32[D], sorted in descending order.
        masks: uint8[D, H, W] binary masks pasted into the full image (mask models only).
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor


class Segmentation(TypedDict, total=False):
    """What a segmentor returns in eval mode for one image, in that image's pixel frame.

    Keys:
        sem_seg: float32[C, H, W] per-class logits (C classes, un-normalised scores at the full
            resolution of the image given to the model); ``argmax(0)`` gives the labels.
        labels: int64[H, W] predicted class per pixel in 0..C-1, i.e. ``sem_seg.argmax(0)``
            (optional: what :class:`~glimpse.engine.metrics.SegmentationMeter` consumes; derive
            it from ``sem_seg`` when absent).
    """

    sem_seg: Tensor
    labels: Tensor


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[N, 4] (x, y, w, h) -> [N, 4] (x1, y1, x2, y2)."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """[N, 4] (x1, y1, x2, y2) -> [N, 4] (x, y, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[N, 4] xyxy -> [N] areas (zero for inverted boxes)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip [N, 4] xyxy boxes to an image of ``size = (height, width)``."""
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty_boxes(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """[N] bool: boxes whose width and height both exceed ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
