"""Hybrid Task Cascade (Chen et al., CVPR 2019) builders: a :class:`TwoStageDetector` with
:class:`~glimpse.heads.htc.HTCRoIHead` and, in ``htc``, the
:class:`~glimpse.heads.semantic.FusedSemanticHead` (mmdet v2 ``htc_r50_fpn_1x_coco`` and
``htc_without_semantic_r50_fpn_1x_coco``).

On a ResNet-50 with 80 classes the models have exactly mmdet's parameter counts: ``htc``
80,258,293 and ``htc_without_semantic`` 77,456,190 (Cascade Mask R-CNN's 77,324,606 plus the
1x1 ``conv_res`` of mask stages 2 and 3, 2 x 65,792; the semantic head adds 2,802,103).

The paper's ablation (its Table 2) is one builder with flags, :data:`HTC_ABLATION`: Cascade
Mask R-CNN, + interleaved execution, + mask information flow, + semantic fusion (HTC).
Settings beyond the cascade's: test score threshold 0.001, semantic loss weight 0.2 (mmdet; the
paper's beta is 1), semantic labels of 183 COCO-stuff classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from glimpse.detectors.parts import check_part
from glimpse.detectors.two_stage import (
    CASCADE_RPN,
    RCNNConfig,
    RPNConfig,
    TwoStageDetector,
    build_neck,
    build_rpn_head,
)
from glimpse.heads.base import DenseHead
from glimpse.heads.cascade import CASCADE_IOUS, CASCADE_STDS, CascadeRoIHead
from glimpse.heads.htc import HTCMaskHead, HTCRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig
from glimpse.heads.semantic import FusedSemanticHead
from glimpse.preprocess import DetectionPreprocessor

__all__ = ["HTC_ABLATION", "HTC_RCNN", "htc", "htc_without_semantic"]

# HTC's R-CNN test settings: score threshold 0.001 (mmdet htc configs), else the defaults.
HTC_RCNN = RCNNConfig(test=RCNNTestConfig(score_thr=0.001))

# The paper's Table 2 rows as keyword arguments of :func:`htc`, cumulative.
HTC_ABLATION: dict[str, dict[str, Any]] = {
    "cascade_mask": {"semantic": False, "interleaved": False, "mask_info_flow": False},
    "interleaved": {"semantic": False, "interleaved": True, "mask_info_flow": False},
    "mask_info_flow": {"semantic": False, "interleaved": True, "mask_info_flow": True},
    "semantic": {"semantic": True, "interleaved": True, "mask_info_flow": True},
}


def _htc_roi_head(
    *,
    roi_head: CascadeRoIHead | None,
    num_classes: int,
    channels: int,
    rcnn_cfg: RCNNConfig | None,
    fc_channels: int | None,
    stage_ious: Sequence[float] | None,
    stage_stds: Sequence[Sequence[float]] | None,
    stage_loss_weights: Sequence[float] | None,
    box_loss_beta: float | None,
    mask_upsampler: Callable[[int], nn.Module] | None,
    interleaved: bool,
    mask_info_flow: bool,
) -> CascadeRoIHead:
    """The given RoI head, or HTC's three class-agnostic box stages and mask stages (the
    first mask stage without ``conv_res``, as mmdet v2; none has it without the flow)."""
    check_part("roi_head", roi_head, rcnn_cfg=rcnn_cfg, fc_channels=fc_channels,
               stage_ious=stage_ious, stage_stds=stage_stds,
               stage_loss_weights=stage_loss_weights, box_loss_beta=box_loss_beta,
               mask_upsampler=mask_upsampler)
    if roi_head is not None:
        return roi_head
    cfg = rcnn_cfg or HTC_RCNN
    stage_ious = CASCADE_IOUS if stage_ious is None else stage_ious
    stage_stds = CASCADE_STDS if stage_stds is None else stage_stds
    stage_loss_weights = (1.0, 0.5, 0.25) if stage_loss_weights is None else stage_loss_weights
    if not len(stage_ious) == len(stage_stds) == len(stage_loss_weights):
        raise ValueError("stage_ious, stage_stds and stage_loss_weights need one entry per stage")
    beta = 1.0 if box_loss_beta is None else box_loss_beta
    fc_channels = 1024 if fc_channels is None else fc_channels
    box_heads = [BoxHead(num_classes, channels, fc_channels=fc_channels, class_agnostic=True,
                         target_stds=stds, box_loss_beta=beta) for stds in stage_stds]
    train_cfgs = [replace(cfg.train, pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou)
                  for iou in stage_ious]
    mask_heads = [HTCMaskHead(num_classes, channels, channels, upsampler=mask_upsampler,
                              with_conv_res=mask_info_flow and stage > 0)
                  for stage in range(len(stage_ious))]
    return HTCRoIHead(box_heads, train_cfgs, stage_loss_weights, mask_heads,
                      interleaved=interleaved, mask_info_flow=mask_info_flow,
                      test_cfg=cfg.test)


def htc(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    semantic: bool = True,
    interleaved: bool = True,
    mask_info_flow: bool = True,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    neck: nn.Module | None = None,
    upsampler: Callable[[int], nn.Module] | None = None,
    rpn_head: DenseHead | None = None,
    rpn_cfg: RPNConfig | None = None,
    roi_head: CascadeRoIHead | None = None,
    rcnn_cfg: RCNNConfig | None = None,
    fc_channels: int | None = None,
    stage_ious: Sequence[float] | None = None,
    stage_stds: Sequence[Sequence[float]] | None = None,
    stage_loss_weights: Sequence[float] | None = None,
    box_loss_beta: float | None = None,
    mask_upsampler: Callable[[int], nn.Module] | None = None,
    semantic_head: nn.Module | None = None,
    semantic_classes: int | None = None,
) -> TwoStageDetector:
    """Hybrid Task Cascade with FPN (mmdet ``htc_r50_fpn_1x``).

    Ready-made parts replace their settings as in
    :func:`~glimpse.detectors.two_stage.faster_rcnn` (the composed detectors pass a GA-RPN as
    ``rpn_head``, a CARAFE FPN as ``neck``).

    Args:
        semantic: with the fused semantic branch (training then needs ``sem_seg`` targets).
        interleaved: (R-CNN) interleaved execution of the box and mask branches in training.
        mask_info_flow: (R-CNN) mask information flow between the mask stages.
        rpn_cfg: (RPN) default :data:`~glimpse.detectors.two_stage.CASCADE_RPN`.
        rcnn_cfg: (R-CNN) default :data:`HTC_RCNN` (test score threshold 0.001).
        semantic_head: a ready semantic branch (``semantic=True`` only): ``forward(feats) ->
            (logits, semantic feature map of fpn_channels channels at stride 8)``.
        semantic_classes: (semantic) classes of the semantic labels (183: COCO-stuff maps).

    Other args are those of :func:`~glimpse.detectors.two_stage.cascade_mask_rcnn`.
    """
    if not semantic and (semantic_head is not None or semantic_classes is not None):
        raise ValueError("semantic=False: semantic_head / semantic_classes would be ignored")
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    rpn_head = build_rpn_head(rpn_head=rpn_head, channels=fpn_channels, rpn_cfg=rpn_cfg,
                              default=CASCADE_RPN)
    roi_head = _htc_roi_head(
        roi_head=roi_head, num_classes=num_classes, channels=fpn_channels, rcnn_cfg=rcnn_cfg,
        fc_channels=fc_channels, stage_ious=stage_ious, stage_stds=stage_stds,
        stage_loss_weights=stage_loss_weights, box_loss_beta=box_loss_beta,
        mask_upsampler=mask_upsampler, interleaved=interleaved, mask_info_flow=mask_info_flow)
    if semantic:
        check_part("semantic_head", semantic_head, semantic_classes=semantic_classes)
        if semantic_head is None:
            semantic_head = FusedSemanticHead(
                in_channels=fpn_channels, conv_channels=fpn_channels,
                num_classes=183 if semantic_classes is None else semantic_classes)
    preprocessor = DetectionPreprocessor(image_scale=image_scale, size_divisor=size_divisor)
    return TwoStageDetector(backbone, neck, rpn_head, roi_head, preprocessor,
                            semantic_head=semantic_head)


def htc_without_semantic(backbone: nn.Module, num_classes: int = 80, **kwargs: Any
                         ) -> TwoStageDetector:
    """HTC without the semantic branch (mmdet ``htc-without-semantic_r50_fpn_1x``), for data
    without semantic maps: :func:`htc` with ``semantic=False``; the same keywords otherwise."""
    return htc(backbone, num_classes, semantic=False, **kwargs)
