"""The four methods of the talk in one detector (beyond the papers): a FishNet backbone (given
by the zoo), mmdetection's ``FPN_CARAFE`` neck, GA-RPN proposals and a Hybrid Task Cascade head,
built by passing these parts into :func:`~glimpse.detectors.htc.htc`.

The COCO 2018 entry of the HTC paper stacked HTC with GA-RPN (its extras table: +1.0 mask AP on
test-dev) on SENet-154; nobody published FishNet + CARAFE + GA-RPN + HTC together, so the
settings here are the parts' own mmdet settings, put side by side:

* neck: ``FPN_CARAFE`` (P2..P6, CARAFE in every top-down step, images padded to 64) and, as
  mmdet's ``mask-rcnn_r50_fpn-carafe``, CARAFE in place of every mask head's deconvolution;
* proposals: GA-RPN with GA-Faster R-CNN's proposal counts (2000 / 1000 / 300 in training,
  1000 / 1000 / 300 at test): a departure from HTC's 2000 RPN proposals, because guided anchors
  are few and good (the GA paper's claim), and the R-CNN cost scales with them;
* R-CNN: HTC's (three class-agnostic stages at IoU 0.5 / 0.6 / 0.7, interleaved execution, mask
  information flow, the fused semantic branch, test score threshold 0.001).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from glimpse.detectors.guided_anchoring import (
    GA_FASTER_TEST_PROPOSALS,
    GA_FASTER_TRAIN_PROPOSALS,
)
from glimpse.detectors.htc import htc
from glimpse.detectors.parts import check_part
from glimpse.detectors.two_stage import TwoStageDetector
from glimpse.heads.guided_anchor import (
    GA_RPN_ANCHORING,
    GA_RPN_TRAIN,
    GARPNHead,
    GATrainConfig,
    GuidedAnchoring,
)
from glimpse.layers import upsampler_factory
from glimpse.necks import fpn_carafe

__all__ = ["htc_ga_carafe"]


def htc_ga_carafe(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    upsampler: Callable[[int], nn.Module] | str = "carafe",
    mask_upsampler: Callable[[int], nn.Module] | str | None = "carafe",
    size_divisor: int = 64,
    neck: nn.Module | None = None,
    rpn_head: nn.Module | None = None,
    anchoring: GuidedAnchoring | None = None,
    ga_train_cfg: GATrainConfig | None = None,
    **kwargs: Any,
) -> TwoStageDetector:
    """HTC on GA-RPN proposals over a CARAFE FPN (any C2..C5 backbone; the zoo gives FishNet).

    Args:
        backbone: module of the C2..C5 contract (``out_channels`` dict).
        num_classes: K foreground classes.
        fpn_channels: width of the neck, GA-RPN, R-CNN and semantic branch.
        upsampler: (neck) the ``FPN_CARAFE`` top-down upsampler, a name of
            :data:`glimpse.layers.UPSAMPLERS` or an FPN-contract factory.
        mask_upsampler: the mask heads' x2 upsampler (a name or a factory ``f(channels)``);
            ``None`` keeps HTC's deconvolution.
        size_divisor: padding multiple (64: every CARAFE FPN level exactly twice the next).
        neck: a ready neck instead of ``FPN_CARAFE``.
        rpn_head: a ready proposal head instead of the GA-RPN.
        anchoring, ga_train_cfg: (GA-RPN) default mmdet's GA-RPN settings.
        **kwargs: other :func:`~glimpse.detectors.htc.htc` settings (``semantic``,
            ``interleaved``, ``mask_info_flow``, ``semantic_classes``, ``rcnn_cfg``,
            ``fc_channels``, ``image_scale``, ...).

    Raises:
        ValueError: a ready part together with the settings that would build it, or
            ``rpn_cfg`` (the RPN settings of the anchor-based RPN this detector does not have).
    """
    if "rpn_cfg" in kwargs:
        raise ValueError("rpn_cfg configures an anchor-based RPN; this detector's proposals "
                         "come from a GA-RPN: pass anchoring / ga_train_cfg or rpn_head")
    check_part("neck", neck, upsampler=None if upsampler == "carafe" else upsampler)
    check_part("rpn_head", rpn_head, anchoring=anchoring, ga_train_cfg=ga_train_cfg)
    if neck is None:
        neck = fpn_carafe(list(backbone.out_channels.values()), fpn_channels,
                          upsampler=upsampler)
    if rpn_head is None:
        rpn_head = GARPNHead(fpn_channels, anchoring=anchoring or GA_RPN_ANCHORING,
                             train_cfg=ga_train_cfg or GA_RPN_TRAIN,
                             train_proposals=GA_FASTER_TRAIN_PROPOSALS,
                             test_proposals=GA_FASTER_TEST_PROPOSALS)
    if kwargs.get("roi_head") is not None and mask_upsampler == "carafe":
        mask_upsampler = None  # the default belongs to the RoI head built here
    if isinstance(mask_upsampler, str):
        mask_upsampler = upsampler_factory(mask_upsampler, scale_factor=2)
    return htc(backbone, num_classes, fpn_channels=fpn_channels, size_divisor=size_divisor,
               neck=neck, rpn_head=rpn_head, mask_upsampler=mask_upsampler, **kwargs)
