"""Guided-anchoring detectors (Wang et al., CVPR 2019): GA-RPN, GA-Faster R-CNN, GA-Fast R-CNN
and GA-RetinaNet, built by passing the GA heads and settings into the existing builders.

Settings are mmdetection v2/v3's ``configs/guided_anchoring`` (R-50 1x); with a ResNet-50 the
models have mmdet's parameter counts exactly (``ga_rpn`` 28,034,520; ``ga_faster_rcnn``
42,341,225; ``ga_fast_rcnn`` 41,159,121; ``ga_retinanet`` 37,600,439). The GA configs clip
gradients at an L2 norm of 35, which is :class:`glimpse.engine.train.TrainConfig`'s default.

glimpse departs from the GA configs in one place: the backbone is the zoo's (pytorch style,
RGB normalisation) where mmdet's GA configs use a caffe-style ResNet with BGR means and std 1;
pass ``style="caffe"`` to the zoo for the layout (parameters are identical).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from torch import nn

from glimpse.detectors.parts import check_part
from glimpse.detectors.retinanet import RetinaNet, retinanet
from glimpse.detectors.two_stage import (
    RCNNConfig,
    TwoStageDetector,
    fast_rcnn,
    faster_rcnn,
    rpn,
)
from glimpse.heads.guided_anchor import (
    GA_RETINA_ANCHORING,
    GA_RETINA_TRAIN,
    GA_RPN_ANCHORING,
    GA_RPN_TRAIN,
    GAProposalConfig,
    GARetinaHead,
    GARPNHead,
    GATrainConfig,
    GuidedAnchoring,
)
from glimpse.heads.retina import RetinaTestConfig
from glimpse.heads.roi_box import RCNNTestConfig, RCNNTrainConfig

__all__ = [
    "GA_FASTER_TEST_PROPOSALS",
    "GA_FASTER_TRAIN_PROPOSALS",
    "GA_RCNN",
    "GA_RCNN_STDS",
    "ga_fast_rcnn",
    "ga_faster_rcnn",
    "ga_retinanet",
    "ga_rpn",
]

# GA-Faster R-CNN feeds its R-CNN 300 proposals per image (mmdet v2/v3 ``rpn_proposal`` and
# ``test_cfg.rpn``: nms_post 1000 per level, max_per_img 300; paper and issue #2444).
GA_FASTER_TRAIN_PROPOSALS = GAProposalConfig(nms_pre=2000, nms_post=1000, max_per_image=300)
GA_FASTER_TEST_PROPOSALS = GAProposalConfig(nms_pre=1000, nms_post=1000, max_per_image=300)
# R-CNN on guided-anchor proposals: IoU 0.6, 256 RoIs, score threshold 1e-3.
GA_RCNN = RCNNConfig(train=RCNNTrainConfig(pos_iou_thr=0.6, neg_iou_thr=0.6, min_pos_iou=0.6,
                                           num_samples=256),
                     test=RCNNTestConfig(score_thr=1e-3))
GA_RCNN_STDS = (0.05, 0.05, 0.1, 0.1)


def _ga_rpn_head(rpn_head: nn.Module | None, channels: int, anchoring: GuidedAnchoring | None,
                 train_cfg: GATrainConfig | None, train_proposals: GAProposalConfig,
                 test_proposals: GAProposalConfig, feature_adaption: bool | None = None
                 ) -> nn.Module:
    check_part("rpn_head", rpn_head, anchoring=anchoring, train_cfg=train_cfg,
               feature_adaption=feature_adaption)
    if rpn_head is not None:
        return rpn_head
    return GARPNHead(channels, anchoring=anchoring or GA_RPN_ANCHORING,
                     train_cfg=train_cfg or GA_RPN_TRAIN, train_proposals=train_proposals,
                     test_proposals=test_proposals,
                     feature_adaption=True if feature_adaption is None else feature_adaption)


def ga_rpn(
    backbone: nn.Module,
    num_classes: int = 1,
    *,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    neck: nn.Module | None = None,
    upsampler: Callable[[int], nn.Module] | None = None,
    rpn_head: nn.Module | None = None,
    anchoring: GuidedAnchoring | None = None,
    train_cfg: GATrainConfig | None = None,
    feature_adaption: bool | None = None,
) -> TwoStageDetector:
    """GA-RPN alone (mmdet ``ga-rpn_r50-caffe_fpn_1x``): up to 1000 proposals per image.

    Args:
        backbone: module of the C2..C5 contract.
        num_classes: ignored (proposals are class-agnostic), as :func:`~glimpse.detectors.
            two_stage.rpn`.
        fpn_channels: FPN and head width.
        image_scale: (long, short) edge bound of the resize.
        size_divisor: padding multiple.
        neck: a ready neck (replaces the FPN).
        upsampler: FPN upsampler factory (neck setting).
        rpn_head: a ready head (replaces the GA-RPN head).
        anchoring: (head) :class:`~glimpse.heads.guided_anchor.GuidedAnchoring`.
        train_cfg: (head) :class:`~glimpse.heads.guided_anchor.GATrainConfig`.
        feature_adaption: (head) ``False`` for the paper's "GA-RPN w/o F.A." ablation.
    """
    head = _ga_rpn_head(rpn_head, fpn_channels, anchoring, train_cfg, GAProposalConfig(),
                        GAProposalConfig(), feature_adaption)
    return rpn(backbone, num_classes, fpn_channels=fpn_channels, image_scale=image_scale,
               size_divisor=size_divisor, neck=neck, upsampler=upsampler, rpn_head=head)


def ga_faster_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    neck: nn.Module | None = None,
    upsampler: Callable[[int], nn.Module] | None = None,
    rpn_head: nn.Module | None = None,
    anchoring: GuidedAnchoring | None = None,
    train_cfg: GATrainConfig | None = None,
    roi_head: nn.Module | None = None,
    rcnn_cfg: RCNNConfig | None = None,
    fc_channels: int | None = None,
    target_stds: Sequence[float] | None = None,
    box_loss_beta: float | None = None,
) -> TwoStageDetector:
    """GA-Faster R-CNN (mmdet ``ga-faster-rcnn_r50-caffe_fpn_1x``): GA-RPN feeding 300
    proposals to an R-CNN trained at IoU 0.6 on 256 RoIs with stds 0.05 / 0.1, tested at score
    threshold 1e-3.

    Args are those of :func:`ga_rpn` and of :func:`~glimpse.detectors.two_stage.faster_rcnn`'s
    R-CNN; ``rcnn_cfg`` defaults to :data:`GA_RCNN` and ``target_stds`` to
    :data:`GA_RCNN_STDS` when no ``roi_head`` is given.
    """
    head = _ga_rpn_head(rpn_head, fpn_channels, anchoring, train_cfg,
                        GA_FASTER_TRAIN_PROPOSALS, GA_FASTER_TEST_PROPOSALS)
    if roi_head is None:
        rcnn_cfg = rcnn_cfg or GA_RCNN
        target_stds = GA_RCNN_STDS if target_stds is None else target_stds
    return faster_rcnn(backbone, num_classes, fpn_channels=fpn_channels,
                       image_scale=image_scale, size_divisor=size_divisor, neck=neck,
                       upsampler=upsampler, rpn_head=head, roi_head=roi_head,
                       rcnn_cfg=rcnn_cfg, fc_channels=fc_channels, target_stds=target_stds,
                       box_loss_beta=box_loss_beta)


def ga_fast_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    neck: nn.Module | None = None,
    upsampler: Callable[[int], nn.Module] | None = None,
    roi_head: nn.Module | None = None,
    rcnn_cfg: RCNNConfig | None = None,
    fc_channels: int | None = None,
    target_stds: Sequence[float] | None = None,
    box_loss_beta: float | None = None,
) -> TwoStageDetector:
    """GA-Fast R-CNN (mmdet ``ga-fast-rcnn_r50-caffe_fpn_1x``): Fast R-CNN with the GA R-CNN
    settings (:data:`GA_RCNN`, :data:`GA_RCNN_STDS`), trained and tested on GA-RPN proposals
    given per image (mmdet loads 300 per image in training, all of them at test).

    Args are those of :func:`~glimpse.detectors.two_stage.fast_rcnn`.
    """
    if roi_head is None:
        rcnn_cfg = rcnn_cfg or GA_RCNN
        target_stds = GA_RCNN_STDS if target_stds is None else target_stds
    return fast_rcnn(backbone, num_classes, fpn_channels=fpn_channels, image_scale=image_scale,
                     size_divisor=size_divisor, neck=neck, upsampler=upsampler,
                     roi_head=roi_head, rcnn_cfg=rcnn_cfg, fc_channels=fc_channels,
                     target_stds=target_stds, box_loss_beta=box_loss_beta)


def ga_retinanet(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    fpn_channels: int = 256,
    upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    head: nn.Module | None = None,
    stacked_convs: int | None = None,
    anchoring: GuidedAnchoring | None = None,
    train_cfg: GATrainConfig | None = None,
    test_cfg: RetinaTestConfig | None = None,
    loss_weights: Mapping[str, float] | None = None,
    tower_init: Literal["normal", "kaiming"] | None = None,
) -> RetinaNet:
    """GA-RetinaNet (mmdet ``ga-retinanet_r50-caffe_fpn_1x``): RetinaNet's FPN (P3..P7) with a
    :class:`~glimpse.heads.guided_anchor.GARetinaHead`.

    Args are those of :func:`~glimpse.detectors.retinanet.retinanet`, with the head settings
    ``stacked_convs``, ``anchoring``, ``train_cfg``, ``test_cfg``, ``loss_weights`` and
    ``tower_init`` going to the GA head.
    """
    settings = {"stacked_convs": stacked_convs, "anchoring": anchoring, "train_cfg": train_cfg,
                "test_cfg": test_cfg, "loss_weights": loss_weights, "tower_init": tower_init}
    check_part("head", head, **settings)
    if head is None:
        head = GARetinaHead(num_classes, fpn_channels, fpn_channels,
                            stacked_convs=4 if stacked_convs is None else stacked_convs,
                            anchoring=anchoring or GA_RETINA_ANCHORING,
                            train_cfg=train_cfg or GA_RETINA_TRAIN,
                            test_cfg=test_cfg or RetinaTestConfig(), loss_weights=loss_weights,
                            tower_init=tower_init or "normal")
    return retinanet(backbone, num_classes, image_scale=image_scale, size_divisor=size_divisor,
                     fpn_channels=fpn_channels, upsampler=upsampler, neck=neck, head=head)
