"""Two-stage detectors: RPN, Fast / Faster / Mask R-CNN and Cascade (Mask) R-CNN, one class and
one builder per model, with mmdetection v2/v3's R-50-FPN 1x configurations as defaults.

Built on a ResNet-50 the models have exactly mmdet's parameter counts (``faster_rcnn``
41,753,056; ``mask_rcnn`` 44,396,336; ``fast_rcnn`` 41,159,121; ``rpn`` 27,446,351;
``cascade_rcnn`` 69,394,766; ``cascade_mask_rcnn`` 77,324,606).

Settings that differ between mmdet versions follow the v2/v3 configs:

* RPN anchors crossing the border are kept (``allowed_border=-1``; v1: 0);
* R-CNN training uses 2000 pre-NMS / 1000 post-NMS proposals per image for Faster / Mask
  R-CNN and 2000 / 2000 for the cascades; inference 1000 / 1000;
* Faster / Mask / Fast R-CNN and the RPN regress with L1 losses, the cascades with SmoothL1
  (beta 1/9 in the RPN, 1 in the R-CNN stages) as v1 did everywhere;
* RoIAlign samples adaptively (``sampling_ratio=0``; v1: 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from glimpse.heads.cascade import CASCADE_IOUS, CASCADE_STDS, CascadeRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.heads.rpn import ProposalConfig, RPNHead, RPNTrainConfig
from glimpse.heads.standard import StandardRoIHead
from glimpse.necks.fpn import FPN
from glimpse.preprocess import DetectionPreprocessor, ImageBatch
from glimpse.structures import Detection, Target

__all__ = [
    "TwoStageDetector",
    "faster_rcnn",
    "mask_rcnn",
    "fast_rcnn",
    "rpn",
    "cascade_rcnn",
    "cascade_mask_rcnn",
]


class TwoStageDetector(nn.Module):
    """Backbone + neck + (RPN) + (RoI head), following the glimpse model contract.

    * Faster / Mask / Cascade R-CNN: ``rpn_head`` and ``roi_head``;
    * Fast R-CNN: ``rpn_head=None``; proposals come from ``targets[i]["proposals"]`` in
      training and the ``proposals=`` keyword in evaluation (original pixels);
    * RPN: ``roi_head=None``; evaluation returns the proposals as detections with label 1.

    Args:
        backbone: module returning the ``c2..c5`` feature dict.
        neck: FPN (or any module mapping the backbone maps to a list of levels, finest first;
            the RPN uses all of them, the RoI extractors the first four).
        rpn_head: :class:`~glimpse.heads.rpn.RPNHead` or None. Any proposal head with the same
            four calls fits (guided anchoring's GA-RPN): ``raw = head(feats)``,
            ``anchors = head.get_anchors(raw)``, ``head.loss(raw, anchors, targets,
            image_sizes, pad_sizes) -> dict`` and ``head.predict(raw, anchors, image_sizes)
            -> list[(boxes, scores)]``.
        roi_head: :class:`~glimpse.heads.cascade.CascadeRoIHead` (or a subclass such as HTC's)
            or None; called as ``loss(feats, proposals, targets, image_sizes)`` and
            ``predict(feats, proposals, image_sizes)``.
        preprocessor: resize / normalise / pad and the inverse mapping.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn_head: RPNHead | None,
        roi_head: CascadeRoIHead | None,
        preprocessor: DetectionPreprocessor,
    ) -> None:
        super().__init__()
        if rpn_head is None and roi_head is None:
            raise ValueError("a two-stage detector needs an RPN head, a RoI head or both")
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head

    def features(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] normalised padded batch -> pyramid levels, finest first."""
        return self.neck(list(self.backbone(images).values()))

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Target] | None = None,
        *,
        proposals: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Detection]:
        """Losses in train mode, detections in eval mode.

        Args:
            images: ``B`` tensors [3, H_i, W_i] in [0, 1] at original resolution.
            targets: per-image targets in original pixels (train mode only): ``boxes`` xyxy,
                ``labels`` 1..K, ``masks`` (mask models), optional ``boxes_ignore`` and
                ``proposals`` (Fast R-CNN).
            proposals: per-image [P_i, 4] xyxy proposals in original pixels (Fast R-CNN, eval
                mode; in train mode they may come here instead of in the targets).

        Returns:
            Train: a loss dict (``loss_rpn_cls``, ``loss_rpn_box``, ``loss_cls``, ``loss_box``,
            ``loss_mask`` or per-stage ``loss_*_s{t}``, plus ``stats_*``). Eval: one
            :class:`~glimpse.structures.Detection` per image in original pixels.
        """
        if self.training and targets is None:
            raise ValueError("a detector in train mode needs targets (call model.eval() to "
                             "detect)")
        batch = self.preprocessor(images, targets if self.training else None, proposals)
        if self.rpn_head is None and batch.proposals is None:
            raise ValueError("Fast R-CNN needs proposals: targets[i]['proposals'] in training, "
                             "model(images, proposals=[...]) in evaluation")
        feats = self.features(batch.tensor)
        if self.training:
            return self._losses(feats, batch)
        return self.preprocessor.postprocess(self._detect(feats, batch), batch)

    def _proposals(self, feats: list[Tensor], batch: ImageBatch
                   ) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]]:
        """RPN losses (train mode) and per-image proposal boxes and scores."""
        if self.rpn_head is None:
            props = list(batch.proposals)
            return {}, props, [p.new_ones(p.shape[0]) for p in props]
        raw = self.rpn_head(feats)
        anchors = self.rpn_head.get_anchors(raw)
        losses = {}
        if self.training:
            losses = self.rpn_head.loss(raw, anchors, batch.targets, batch.image_sizes,
                                        batch.pad_sizes)
        if self.roi_head is None and self.training:
            return losses, [], []
        found = self.rpn_head.predict(raw, anchors, batch.image_sizes)
        return losses, [b for b, _ in found], [s for _, s in found]

    def _losses(self, feats: list[Tensor], batch: ImageBatch) -> dict[str, Tensor]:
        losses, props, _ = self._proposals(feats, batch)
        if self.roi_head is not None:
            losses.update(self.roi_head.loss(feats, props, batch.targets, batch.image_sizes))
        return losses

    @torch.no_grad()
    def _detect(self, feats: list[Tensor], batch: ImageBatch) -> list[dict[str, Tensor]]:
        _, props, scores = self._proposals(feats, batch)
        if self.roi_head is None:
            return [{"boxes": b, "scores": s, "labels": torch.ones_like(s, dtype=torch.long)}
                    for b, s in zip(props, scores)]
        return self.roi_head.predict(feats, props, batch.image_sizes)


# ------------------------------------------------------------------------------- builders
def _fpn(backbone: nn.Module, channels: int, upsampler: Callable[[int], nn.Module] | None
         ) -> FPN:
    """mmdet's Faster R-CNN FPN: C2..C5 -> P2..P6, P6 a stride-2 subsample of P5."""
    return FPN(list(backbone.out_channels.values()), channels, num_outs=5, add_extra="maxpool",
               upsampler=upsampler)


def _rpn_head(channels: int, box_loss_beta: float, train_proposals: ProposalConfig,
              test_proposals: ProposalConfig, train_cfg: RPNTrainConfig) -> RPNHead:
    return RPNHead(channels, channels, train_cfg=train_cfg, train_proposals=train_proposals,
                   test_proposals=test_proposals, box_loss_beta=box_loss_beta)


def _detector(backbone, neck, rpn_head, roi_head, image_scale, size_divisor) -> TwoStageDetector:
    return TwoStageDetector(backbone, neck, rpn_head, roi_head,
                            DetectionPreprocessor(image_scale=image_scale,
                                                  size_divisor=size_divisor))


def faster_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    fc_channels: int = 1024,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    rpn_train: RPNTrainConfig = RPNTrainConfig(),
    rpn_train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=1000),
    rpn_test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000),
    rcnn_train: RCNNTrainConfig = RCNNTrainConfig(),
    rcnn_test: RCNNTestConfig = RCNNTestConfig(),
    target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    rpn_box_loss_beta: float = 0.0,
    box_loss_beta: float = 0.0,
) -> TwoStageDetector:
    """Faster R-CNN with FPN (mmdet ``faster-rcnn_r50_fpn_1x``).

    Args:
        backbone: module of the C2..C5 contract (``out_channels`` dict).
        num_classes: K foreground classes.
        fpn_channels: FPN width, also the RPN and RoI feature width (256).
        fc_channels: width of the box head's two FCs (1024).
        image_scale: (long, short) edge bound of the internal resize.
        size_divisor: padding multiple of the batch (32; 64 with CARAFE's FPN).
        upsampler: FPN top-down upsampler factory (None: nearest).
        neck: a ready neck replacing the default FPN (e.g. mmdet's ``FPN_CARAFE`` layout); it
            must output ``fpn_channels`` channels on 5 levels of strides 4..64.
        rpn_train: RPN anchor assignment and sampling.
        rpn_train_proposals: proposals fed to the R-CNN in training.
        rpn_test_proposals: proposals at inference.
        rcnn_train: R-CNN proposal assignment and sampling.
        rcnn_test: detection post-processing.
        target_stds: R-CNN box coder stds (GA-Faster R-CNN uses 0.05, 0.05, 0.1, 0.1).
        rpn_box_loss_beta: RPN SmoothL1 beta (0 = L1, v2/v3; v1 used 1/9).
        box_loss_beta: R-CNN SmoothL1 beta (0 = L1, v2/v3; v1 used 1).
    """
    neck = neck or _fpn(backbone, fpn_channels, upsampler)
    rpn_head = _rpn_head(fpn_channels, rpn_box_loss_beta, rpn_train_proposals,
                         rpn_test_proposals, rpn_train)
    box_head = BoxHead(num_classes, fpn_channels, fc_channels=fc_channels,
                       target_stds=target_stds, box_loss_beta=box_loss_beta)
    roi_head = StandardRoIHead(box_head, rcnn_train, rcnn_test)
    return _detector(backbone, neck, rpn_head, roi_head, image_scale, size_divisor)


def mask_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    fc_channels: int = 1024,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    upsampler: Callable[[int], nn.Module] | None = None,
    mask_upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    rpn_train: RPNTrainConfig = RPNTrainConfig(),
    rpn_train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=1000),
    rpn_test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000),
    rcnn_train: RCNNTrainConfig = RCNNTrainConfig(),
    rcnn_test: RCNNTestConfig = RCNNTestConfig(),
    rpn_box_loss_beta: float = 0.0,
    box_loss_beta: float = 0.0,
) -> TwoStageDetector:
    """Mask R-CNN with FPN (mmdet ``mask-rcnn_r50_fpn_1x``): Faster R-CNN plus a 4-conv FCN
    mask head on 14x14 RoIAlign features, 28x28 masks.

    Args are those of :func:`faster_rcnn`, plus ``mask_upsampler``: the mask head's upsampler
    factory (None: deconv + ReLU; the CARAFE paper injects CARAFE here).
    """
    neck = neck or _fpn(backbone, fpn_channels, upsampler)
    rpn_head = _rpn_head(fpn_channels, rpn_box_loss_beta, rpn_train_proposals,
                         rpn_test_proposals, rpn_train)
    box_head = BoxHead(num_classes, fpn_channels, fc_channels=fc_channels,
                       box_loss_beta=box_loss_beta)
    mask_head = FCNMaskHead(num_classes, fpn_channels, fpn_channels, upsampler=mask_upsampler)
    roi_head = StandardRoIHead(box_head, rcnn_train, rcnn_test, mask_head=mask_head)
    return _detector(backbone, neck, rpn_head, roi_head, image_scale, size_divisor)


def fast_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    fc_channels: int = 1024,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    rcnn_train: RCNNTrainConfig = RCNNTrainConfig(),
    rcnn_test: RCNNTestConfig = RCNNTestConfig(),
    target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
    box_loss_beta: float = 0.0,
) -> TwoStageDetector:
    """Fast R-CNN with FPN on precomputed proposals (mmdet ``fast-rcnn_r50_fpn_1x``; GA-Fast
    R-CNN trains it on GA-RPN proposals with IoU 0.6, 256 RoIs and stds 0.05/0.1).

    Args are those of :func:`faster_rcnn` without the RPN settings.
    """
    neck = neck or _fpn(backbone, fpn_channels, upsampler)
    box_head = BoxHead(num_classes, fpn_channels, fc_channels=fc_channels,
                       target_stds=target_stds, box_loss_beta=box_loss_beta)
    roi_head = StandardRoIHead(box_head, rcnn_train, rcnn_test)
    return _detector(backbone, neck, None, roi_head, image_scale, size_divisor)


def rpn(
    backbone: nn.Module,
    num_classes: int = 1,
    *,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    rpn_train: RPNTrainConfig = RPNTrainConfig(),
    rpn_test_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=1000),
    rpn_box_loss_beta: float = 0.0,
) -> TwoStageDetector:
    """Region proposal network alone (mmdet ``rpn_r50_fpn_1x``): evaluation returns up to 1000
    proposals per image (labels 1) for average-recall measurements.

    Args:
        num_classes: ignored (proposals are class-agnostic); accepted so that every zoo
            builder has the same signature.
        rpn_test_proposals: proposal settings of the evaluation (mmdet v2: 2000 pre-NMS per
            level, 1000 kept; v1 and the GA-RPN configs keep 2000).

    Other args are those of :func:`faster_rcnn`.
    """
    neck = neck or _fpn(backbone, fpn_channels, upsampler)
    rpn_head = _rpn_head(fpn_channels, rpn_box_loss_beta, rpn_test_proposals, rpn_test_proposals,
                         rpn_train)
    return _detector(backbone, neck, rpn_head, None, image_scale, size_divisor)


def _cascade(
    backbone: nn.Module,
    num_classes: int,
    with_mask: bool,
    fpn_channels: int,
    fc_channels: int,
    image_scale: tuple[int, int],
    size_divisor: int,
    upsampler: Callable[[int], nn.Module] | None,
    mask_upsampler: Callable[[int], nn.Module] | None,
    neck: nn.Module | None,
    stage_ious: Sequence[float],
    stage_stds: Sequence[Sequence[float]],
    stage_loss_weights: Sequence[float],
    rpn_train: RPNTrainConfig,
    rpn_train_proposals: ProposalConfig,
    rpn_test_proposals: ProposalConfig,
    rcnn_train: RCNNTrainConfig,
    rcnn_test: RCNNTestConfig,
    rpn_box_loss_beta: float,
    box_loss_beta: float,
) -> TwoStageDetector:
    if not len(stage_ious) == len(stage_stds) == len(stage_loss_weights):
        raise ValueError("stage_ious, stage_stds and stage_loss_weights need one entry per stage")
    neck = neck or _fpn(backbone, fpn_channels, upsampler)
    rpn_head = _rpn_head(fpn_channels, rpn_box_loss_beta, rpn_train_proposals,
                         rpn_test_proposals, rpn_train)
    box_heads = [BoxHead(num_classes, fpn_channels, fc_channels=fc_channels, class_agnostic=True,
                         target_stds=stds, box_loss_beta=box_loss_beta) for stds in stage_stds]
    train_cfgs = [replace(rcnn_train, pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou)
                  for iou in stage_ious]
    mask_heads = None
    if with_mask:
        mask_heads = [FCNMaskHead(num_classes, fpn_channels, fpn_channels,
                                  upsampler=mask_upsampler) for _ in stage_ious]
    roi_head = CascadeRoIHead(box_heads, train_cfgs, stage_loss_weights, mask_heads=mask_heads,
                              test_cfg=rcnn_test)
    return _detector(backbone, neck, rpn_head, roi_head, image_scale, size_divisor)


def cascade_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    fc_channels: int = 1024,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    stage_ious: Sequence[float] = CASCADE_IOUS,
    stage_stds: Sequence[Sequence[float]] = CASCADE_STDS,
    stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
    rpn_train: RPNTrainConfig = RPNTrainConfig(),
    rpn_train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=2000),
    rpn_test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000),
    rcnn_train: RCNNTrainConfig = RCNNTrainConfig(),
    rcnn_test: RCNNTestConfig = RCNNTestConfig(),
    rpn_box_loss_beta: float = 1 / 9,
    box_loss_beta: float = 1.0,
) -> TwoStageDetector:
    """Cascade R-CNN with FPN (mmdet ``cascade-rcnn_r50_fpn_1x``): three class-agnostic box
    stages at IoU 0.5 / 0.6 / 0.7 with shrinking coder stds and loss weights 1 / 0.5 / 0.25.

    Args:
        stage_ious: positive = negative = min-positive IoU of each stage's assigner (the other
            assignment / sampling settings come from ``rcnn_train``).
        stage_stds: box coder stds of each stage.
        stage_loss_weights: loss multiplier of each stage.

    Other args are those of :func:`faster_rcnn`.
    """
    return _cascade(backbone, num_classes, False, fpn_channels, fc_channels, image_scale,
                    size_divisor, upsampler, None, neck, stage_ious, stage_stds,
                    stage_loss_weights, rpn_train, rpn_train_proposals, rpn_test_proposals,
                    rcnn_train, rcnn_test, rpn_box_loss_beta, box_loss_beta)


def cascade_mask_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    fc_channels: int = 1024,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    upsampler: Callable[[int], nn.Module] | None = None,
    mask_upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    stage_ious: Sequence[float] = CASCADE_IOUS,
    stage_stds: Sequence[Sequence[float]] = CASCADE_STDS,
    stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
    rpn_train: RPNTrainConfig = RPNTrainConfig(),
    rpn_train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=2000),
    rpn_test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000),
    rcnn_train: RCNNTrainConfig = RCNNTrainConfig(),
    rcnn_test: RCNNTestConfig = RCNNTestConfig(),
    rpn_box_loss_beta: float = 1 / 9,
    box_loss_beta: float = 1.0,
) -> TwoStageDetector:
    """Cascade Mask R-CNN (mmdet ``cascade-mask-rcnn_r50_fpn_1x``): :func:`cascade_rcnn` with a
    mask head per stage, trained on each stage's positives; test masks average the stages.

    Args are those of :func:`cascade_rcnn`, plus ``mask_upsampler`` (see :func:`mask_rcnn`).
    """
    return _cascade(backbone, num_classes, True, fpn_channels, fc_channels, image_scale,
                    size_divisor, upsampler, mask_upsampler, neck, stage_ious, stage_stds,
                    stage_loss_weights, rpn_train, rpn_train_proposals, rpn_test_proposals,
                    rcnn_train, rcnn_test, rpn_box_loss_beta, box_loss_beta)
