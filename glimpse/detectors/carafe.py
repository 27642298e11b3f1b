"""Faster and Mask R-CNN with CARAFE (Wang et al., ICCV 2019), as mmdetection's
``configs/carafe``: the ``FPN_CARAFE`` neck (:func:`~glimpse.necks.fpn_carafe`), images padded to
a multiple of 64, and for Mask R-CNN CARAFE in place of the mask head's deconvolution (no ReLU
after it). Built by passing these parts into :func:`~glimpse.detectors.two_stage.faster_rcnn` and
:func:`~glimpse.detectors.two_stage.mask_rcnn`.

On a ResNet-50 they have mmdet's parameter counts: 47,358,576 and 49,813,604.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from glimpse.detectors.two_stage import TwoStageDetector, faster_rcnn, mask_rcnn
from glimpse.layers import upsampler_factory
from glimpse.necks import fpn_carafe

__all__ = ["faster_rcnn_carafe", "mask_rcnn_carafe"]


def _neck(backbone: nn.Module, channels: int, upsampler: Callable[[int], nn.Module] | str
          ) -> nn.Module:
    return fpn_carafe(list(backbone.out_channels.values()), channels, upsampler=upsampler)


def faster_rcnn_carafe(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    upsampler: Callable[[int], nn.Module] | str = "carafe",
    size_divisor: int = 64,
    **kwargs: Any,
) -> TwoStageDetector:
    """Faster R-CNN with the ``FPN_CARAFE`` neck (mmdet ``faster-rcnn_r50_fpn-carafe_1x``).

    Args:
        backbone: module of the C2..C5 contract.
        num_classes: K foreground classes.
        fpn_channels: pyramid width (256).
        upsampler: the neck's top-down upsampler: a name of :data:`glimpse.layers.UPSAMPLERS`
            (Table 2's rows run through this layout) or an FPN-contract factory.
        size_divisor: padding multiple (64).
        **kwargs: other :func:`~glimpse.detectors.two_stage.faster_rcnn` settings (not
            ``neck``, which is built here).
    """
    return faster_rcnn(backbone, num_classes, fpn_channels=fpn_channels,
                       neck=_neck(backbone, fpn_channels, upsampler),
                       size_divisor=size_divisor, **kwargs)


def mask_rcnn_carafe(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    upsampler: Callable[[int], nn.Module] | str = "carafe",
    mask_upsampler: Callable[[int], nn.Module] | str = "carafe",
    size_divisor: int = 64,
    **kwargs: Any,
) -> TwoStageDetector:
    """Mask R-CNN with the ``FPN_CARAFE`` neck and CARAFE in the mask head (mmdet
    ``mask-rcnn_r50_fpn-carafe_1x``).

    Args are those of :func:`faster_rcnn_carafe`, plus ``mask_upsampler``: the mask head's
    x2 upsampler, a name of :data:`glimpse.layers.UPSAMPLERS` or a factory ``f(channels)``
    (mask-head contract, activation included).
    """
    if isinstance(mask_upsampler, str):
        mask_upsampler = upsampler_factory(mask_upsampler, scale_factor=2)
    return mask_rcnn(backbone, num_classes, fpn_channels=fpn_channels,
                     neck=_neck(backbone, fpn_channels, upsampler), size_divisor=size_divisor,
                     mask_upsampler=mask_upsampler, **kwargs)
