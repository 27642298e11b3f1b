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
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from glimpse.detectors.parts import check_part
from glimpse.heads.base import DenseHead
from glimpse.heads.cascade import CASCADE_IOUS, CASCADE_STDS, CascadeContext, CascadeRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.heads.rpn import ProposalConfig, RPNHead, RPNTrainConfig
from glimpse.heads.standard import StandardRoIHead
from glimpse.necks.fpn import FPN
from glimpse.preprocess import DetectionPreprocessor, ImageBatch, pad_semantic_maps
from glimpse.structures import Detection, Target

__all__ = [
    "CASCADE_RPN",
    "RCNNConfig",
    "RPNConfig",
    "RPN_ALONE",
    "TwoStageDetector",
    "build_neck",
    "build_rpn_head",
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
        rpn_head: any :class:`~glimpse.heads.base.DenseHead` whose detections are proposals
            (:class:`~glimpse.heads.rpn.RPNHead`, guided anchoring's GA-RPN), or None.
        roi_head: :class:`~glimpse.heads.cascade.CascadeRoIHead` (or a subclass such as HTC's)
            or None; called as ``loss(feats, proposals, targets, image_sizes)`` and
            ``predict(feats, proposals, image_sizes)``.
        preprocessor: resize / normalise / pad and the inverse mapping.
        semantic_head: optional semantic branch over the whole pyramid (HTC's
            :class:`~glimpse.heads.semantic.FusedSemanticHead`): ``forward(feats) -> (logits,
            semantic_feat)`` and ``loss(logits, labels [B, H, W]) -> dict``. Its feature map
            goes to the RoI head as ``context.semantic_feat``; training needs
            ``targets[i]["sem_seg"]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn_head: DenseHead | None,
        roi_head: CascadeRoIHead | None,
        preprocessor: DetectionPreprocessor,
        semantic_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if rpn_head is None and roi_head is None:
            raise ValueError("a two-stage detector needs an RPN head, a RoI head or both")
        if semantic_head is not None and roi_head is None:
            raise ValueError("semantic_head feeds the RoI head: pass a roi_head too")
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head
        self.semantic_head = semantic_head

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
            ``loss_mask`` or per-stage ``loss_*_s{t}``, ``loss_semantic_seg`` with a semantic
            head, plus ``stats_*``). Eval: one
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
        anchors = self.rpn_head.get_anchors(raw, batch.image_sizes, batch.pad_sizes)
        losses = {}
        if self.training:
            losses = self.rpn_head.loss(raw, anchors, batch.targets, batch.image_sizes,
                                        batch.pad_sizes)
        if self.roi_head is None and self.training:
            return losses, [], []
        found = self.rpn_head.predict(raw, anchors, batch.image_sizes)
        return losses, [d["boxes"] for d in found], [d["scores"] for d in found]

    def _semantic(self, feats: list[Tensor], batch: ImageBatch
                  ) -> tuple[dict[str, Tensor], CascadeContext | None]:
        """The semantic branch's loss (train mode) and the RoI head's context holding its
        feature map; ``({}, None)`` without a semantic head."""
        if self.semantic_head is None:
            return {}, None
        logits, semantic_feat = self.semantic_head(feats)
        losses = {}
        if self.training:
            labels = pad_semantic_maps(batch.targets, tuple(batch.tensor.shape[-2:]))
            losses = self.semantic_head.loss(logits, labels.to(logits.device))
        return losses, CascadeContext(feats, batch.image_sizes, semantic_feat=semantic_feat)

    def _losses(self, feats: list[Tensor], batch: ImageBatch) -> dict[str, Tensor]:
        losses, props, _ = self._proposals(feats, batch)
        if self.roi_head is not None:
            semantic_losses, context = self._semantic(feats, batch)
            losses.update(semantic_losses)
            losses.update(self.roi_head.loss(feats, props, batch.targets, batch.image_sizes,
                                             context=context))
        return losses

    @torch.no_grad()
    def _detect(self, feats: list[Tensor], batch: ImageBatch) -> list[dict[str, Tensor]]:
        _, props, scores = self._proposals(feats, batch)
        if self.roi_head is None:
            return [{"boxes": b, "scores": s, "labels": torch.ones_like(s, dtype=torch.long)}
                    for b, s in zip(props, scores)]
        _, context = self._semantic(feats, batch)
        return self.roi_head.predict(feats, props, batch.image_sizes, context=context)


# ------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class RPNConfig:
    """The RPN settings of a two-stage builder (mmdet v2 ``train_cfg.rpn``, ``rpn_proposal``,
    ``test_cfg.rpn`` and the RPN's box loss).

    Attributes:
        train: anchor assignment and sampling.
        train_proposals: proposals fed to the R-CNN in training.
        test_proposals: proposals at inference.
        box_loss_beta: SmoothL1 beta of the RPN box loss (0 = L1, v2/v3; v1 used 1/9).
    """

    train: RPNTrainConfig = RPNTrainConfig()
    train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=1000)
    test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000)
    box_loss_beta: float = 0.0


@dataclass(frozen=True)
class RCNNConfig:
    """The R-CNN settings of a two-stage builder (mmdet v2 ``train_cfg.rcnn`` and
    ``test_cfg.rcnn``); cascades derive each stage's assigner IoUs from ``train``.

    Attributes:
        train: proposal assignment and sampling.
        test: detection post-processing.
    """

    train: RCNNTrainConfig = RCNNTrainConfig()
    test: RCNNTestConfig = RCNNTestConfig()


# Cascade R-CNN / HTC: the R-CNN trains on 2000 proposals, the RPN regresses with SmoothL1 1/9.
CASCADE_RPN = RPNConfig(train_proposals=ProposalConfig(nms_pre=2000, max_per_image=2000),
                        box_loss_beta=1 / 9)
# The RPN alone is evaluated on 1000 of 2000 pre-NMS proposals per level (mmdet v2 rpn config).
RPN_ALONE = RPNConfig(test_proposals=ProposalConfig(nms_pre=2000, max_per_image=1000))


# ------------------------------------------------------------------------------- builders
# A builder builds each part it is not given. Settings used only to build a part default to
# None (the documented value is filled in here), so that passing the part and its settings
# together is caught by :func:`check_part`.
def build_neck(*, neck: nn.Module | None, backbone: nn.Module, channels: int,
               upsampler: Callable[[int], nn.Module] | None) -> nn.Module:
    """The given neck, or mmdet's Faster R-CNN FPN: C2..C5 -> P2..P6, P6 a stride-2 subsample
    of P5."""
    check_part("neck", neck, upsampler=upsampler)
    if neck is not None:
        return neck
    return FPN(list(backbone.out_channels.values()), channels, num_outs=5, add_extra="maxpool",
               upsampler=upsampler)


def build_rpn_head(*, rpn_head: DenseHead | None, channels: int, rpn_cfg: RPNConfig | None,
                   default: RPNConfig) -> DenseHead:
    """The given proposal head, or an :class:`RPNHead` of ``rpn_cfg`` (else ``default``)."""
    check_part("rpn_head", rpn_head, rpn_cfg=rpn_cfg)
    if rpn_head is not None:
        return rpn_head
    cfg = rpn_cfg or default
    return RPNHead(channels, channels, train_cfg=cfg.train, train_proposals=cfg.train_proposals,
                   test_proposals=cfg.test_proposals, box_loss_beta=cfg.box_loss_beta)


def _standard_roi_head(
    *,
    roi_head: CascadeRoIHead | None,
    num_classes: int,
    channels: int,
    rcnn_cfg: RCNNConfig | None,
    fc_channels: int | None,
    target_stds: Sequence[float] | None,
    box_loss_beta: float | None,
    with_mask: bool,
    mask_upsampler: Callable[[int], nn.Module] | None,
) -> CascadeRoIHead:
    """The given RoI head, or Faster / Mask R-CNN's one-stage head."""
    check_part("roi_head", roi_head, rcnn_cfg=rcnn_cfg, fc_channels=fc_channels,
               target_stds=target_stds, box_loss_beta=box_loss_beta,
               mask_upsampler=mask_upsampler)
    if roi_head is not None:
        return roi_head
    cfg = rcnn_cfg or RCNNConfig()
    box_head = BoxHead(num_classes, channels,
                       fc_channels=1024 if fc_channels is None else fc_channels,
                       target_stds=(0.1, 0.1, 0.2, 0.2) if target_stds is None else target_stds,
                       box_loss_beta=0.0 if box_loss_beta is None else box_loss_beta)
    mask_head = (FCNMaskHead(num_classes, channels, channels, upsampler=mask_upsampler)
                 if with_mask else None)
    return StandardRoIHead(box_head, cfg.train, cfg.test, mask_head=mask_head)


def _cascade_roi_head(
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
    with_mask: bool,
    mask_upsampler: Callable[[int], nn.Module] | None,
) -> CascadeRoIHead:
    """The given RoI head, or Cascade (Mask) R-CNN's three class-agnostic stages."""
    check_part("roi_head", roi_head, rcnn_cfg=rcnn_cfg, fc_channels=fc_channels,
               stage_ious=stage_ious, stage_stds=stage_stds,
               stage_loss_weights=stage_loss_weights, box_loss_beta=box_loss_beta,
               mask_upsampler=mask_upsampler)
    if roi_head is not None:
        return roi_head
    cfg = rcnn_cfg or RCNNConfig()
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
    mask_heads = None
    if with_mask:
        mask_heads = [FCNMaskHead(num_classes, channels, channels, upsampler=mask_upsampler)
                      for _ in stage_ious]
    return CascadeRoIHead(box_heads, train_cfgs, stage_loss_weights, mask_heads=mask_heads,
                          test_cfg=cfg.test)


def _detector(*, backbone: nn.Module, neck: nn.Module, rpn_head: DenseHead | None,
              roi_head: CascadeRoIHead | None, image_scale: tuple[int, int],
              size_divisor: int) -> TwoStageDetector:
    return TwoStageDetector(backbone, neck, rpn_head, roi_head,
                            DetectionPreprocessor(image_scale=image_scale,
                                                  size_divisor=size_divisor))


def faster_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
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
    target_stds: Sequence[float] | None = None,
    box_loss_beta: float | None = None,
) -> TwoStageDetector:
    """Faster R-CNN with FPN (mmdet ``faster-rcnn_r50_fpn_1x``).

    Parts can be passed in ready-made, e.g. GA-Faster R-CNN passes its GA-RPN as ``rpn_head``,
    CARAFE its ``neck``, HTC its ``roi_head``. The settings of a part passed in are not used,
    and passing both raises ``ValueError``; settings marked (neck), (RPN) or (R-CNN) belong to
    that part.

    Args:
        backbone: module of the C2..C5 contract (``out_channels`` dict).
        num_classes: K foreground classes (of the default RoI head).
        fpn_channels: FPN width, also the RPN and RoI feature width (256).
        image_scale: (long, short) edge bound of the internal resize.
        size_divisor: padding multiple of the batch (32; 64 with CARAFE's FPN).
        neck: a ready neck replacing the default FPN (e.g. mmdet's ``FPN_CARAFE`` layout); it
            must output ``fpn_channels`` channels on 5 levels of strides 4..64.
        upsampler: (neck) FPN top-down upsampler factory, or a Table 2 upsampler name
            (:data:`glimpse.layers.UPSAMPLERS`, e.g. ``"carafe"``); None: nearest.
        rpn_head: a ready :class:`~glimpse.heads.base.DenseHead` proposing boxes.
        rpn_cfg: (RPN) :class:`RPNConfig`; default ``RPNConfig()``.
        roi_head: a ready RoI head (:class:`~glimpse.heads.cascade.CascadeRoIHead` or subclass).
        rcnn_cfg: (R-CNN) :class:`RCNNConfig`; default ``RCNNConfig()``.
        fc_channels: (R-CNN) width of the box head's two FCs (1024).
        target_stds: (R-CNN) box coder stds (0.1, 0.1, 0.2, 0.2; GA-Faster R-CNN uses 0.05,
            0.05, 0.1, 0.1).
        box_loss_beta: (R-CNN) SmoothL1 beta (0 = L1, v2/v3; v1 used 1).
    """
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    rpn_head = build_rpn_head(rpn_head=rpn_head, channels=fpn_channels, rpn_cfg=rpn_cfg,
                              default=RPNConfig())
    roi_head = _standard_roi_head(
        roi_head=roi_head, num_classes=num_classes, channels=fpn_channels, rcnn_cfg=rcnn_cfg,
        fc_channels=fc_channels, target_stds=target_stds, box_loss_beta=box_loss_beta,
        with_mask=False, mask_upsampler=None)
    return _detector(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                     image_scale=image_scale, size_divisor=size_divisor)


def mask_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
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
    target_stds: Sequence[float] | None = None,
    box_loss_beta: float | None = None,
    mask_upsampler: Callable[[int], nn.Module] | None = None,
) -> TwoStageDetector:
    """Mask R-CNN with FPN (mmdet ``mask-rcnn_r50_fpn_1x``): Faster R-CNN plus a 4-conv FCN
    mask head on 14x14 RoIAlign features, 28x28 masks.

    Ready-made parts replace their settings as in :func:`faster_rcnn`.

    Args are those of :func:`faster_rcnn`, plus ``mask_upsampler``: (R-CNN) the mask head's
    upsampler factory (None: deconv + ReLU; the CARAFE paper injects CARAFE here).
    """
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    rpn_head = build_rpn_head(rpn_head=rpn_head, channels=fpn_channels, rpn_cfg=rpn_cfg,
                              default=RPNConfig())
    roi_head = _standard_roi_head(
        roi_head=roi_head, num_classes=num_classes, channels=fpn_channels, rcnn_cfg=rcnn_cfg,
        fc_channels=fc_channels, target_stds=target_stds, box_loss_beta=box_loss_beta,
        with_mask=True, mask_upsampler=mask_upsampler)
    return _detector(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                     image_scale=image_scale, size_divisor=size_divisor)


def fast_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    neck: nn.Module | None = None,
    upsampler: Callable[[int], nn.Module] | None = None,
    roi_head: CascadeRoIHead | None = None,
    rcnn_cfg: RCNNConfig | None = None,
    fc_channels: int | None = None,
    target_stds: Sequence[float] | None = None,
    box_loss_beta: float | None = None,
) -> TwoStageDetector:
    """Fast R-CNN with FPN on precomputed proposals (mmdet ``fast-rcnn_r50_fpn_1x``; GA-Fast
    R-CNN trains it on GA-RPN proposals with IoU 0.6, 256 RoIs and stds 0.05/0.1).

    Ready-made parts replace their settings as in :func:`faster_rcnn`.

    Args are those of :func:`faster_rcnn` without the RPN ones.
    """
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    roi_head = _standard_roi_head(
        roi_head=roi_head, num_classes=num_classes, channels=fpn_channels, rcnn_cfg=rcnn_cfg,
        fc_channels=fc_channels, target_stds=target_stds, box_loss_beta=box_loss_beta,
        with_mask=False, mask_upsampler=None)
    return _detector(backbone=backbone, neck=neck, rpn_head=None, roi_head=roi_head,
                     image_scale=image_scale, size_divisor=size_divisor)


def rpn(
    backbone: nn.Module,
    num_classes: int = 1,
    *,
    fpn_channels: int = 256,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    neck: nn.Module | None = None,
    upsampler: Callable[[int], nn.Module] | None = None,
    rpn_head: DenseHead | None = None,
    rpn_cfg: RPNConfig | None = None,
) -> TwoStageDetector:
    """Region proposal network alone (mmdet ``rpn_r50_fpn_1x``): evaluation returns up to 1000
    proposals per image (labels 1) for average-recall measurements.

    Ready-made parts replace their settings as in :func:`faster_rcnn`.

    Args:
        num_classes: ignored (proposals are class-agnostic); accepted so that every zoo
            builder has the same signature.
        rpn_cfg: (RPN) default :data:`RPN_ALONE`: 2000 pre-NMS proposals per level, 1000 kept
            (mmdet v2; v1 and the GA-RPN configs keep 2000). ``train_proposals`` is unused
            (no R-CNN is fed).

    Other args are those of :func:`faster_rcnn`.
    """
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    rpn_head = build_rpn_head(rpn_head=rpn_head, channels=fpn_channels, rpn_cfg=rpn_cfg,
                              default=RPN_ALONE)
    return _detector(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=None,
                     image_scale=image_scale, size_divisor=size_divisor)


def cascade_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
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
) -> TwoStageDetector:
    """Cascade R-CNN with FPN (mmdet ``cascade-rcnn_r50_fpn_1x``): three class-agnostic box
    stages at IoU 0.5 / 0.6 / 0.7 with shrinking coder stds and loss weights 1 / 0.5 / 0.25.

    Ready-made parts replace their settings as in :func:`faster_rcnn`.

    Args:
        rpn_cfg: (RPN) default :data:`CASCADE_RPN` (2000 training proposals, SmoothL1 1/9).
        stage_ious: (R-CNN) positive = negative = min-positive IoU of each stage's assigner
            (the other assignment / sampling settings come from ``rcnn_cfg.train``); default
            :data:`~glimpse.heads.cascade.CASCADE_IOUS`.
        stage_stds: (R-CNN) box coder stds of each stage; default
            :data:`~glimpse.heads.cascade.CASCADE_STDS`.
        stage_loss_weights: (R-CNN) loss multiplier of each stage (1, 0.5, 0.25).
        box_loss_beta: (R-CNN) SmoothL1 beta of the stages (1).

    Other args are those of :func:`faster_rcnn`.
    """
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    rpn_head = build_rpn_head(rpn_head=rpn_head, channels=fpn_channels, rpn_cfg=rpn_cfg,
                              default=CASCADE_RPN)
    roi_head = _cascade_roi_head(
        roi_head=roi_head, num_classes=num_classes, channels=fpn_channels, rcnn_cfg=rcnn_cfg,
        fc_channels=fc_channels, stage_ious=stage_ious, stage_stds=stage_stds,
        stage_loss_weights=stage_loss_weights, box_loss_beta=box_loss_beta, with_mask=False,
        mask_upsampler=None)
    return _detector(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                     image_scale=image_scale, size_divisor=size_divisor)


def cascade_mask_rcnn(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
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
) -> TwoStageDetector:
    """Cascade Mask R-CNN (mmdet ``cascade-mask-rcnn_r50_fpn_1x``): :func:`cascade_rcnn` with a
    mask head per stage, trained on each stage's positives; test masks average the stages.

    Ready-made parts replace their settings as in :func:`faster_rcnn`.

    Args are those of :func:`cascade_rcnn`, plus ``mask_upsampler`` (see :func:`mask_rcnn`).
    """
    neck = build_neck(neck=neck, backbone=backbone, channels=fpn_channels, upsampler=upsampler)
    rpn_head = build_rpn_head(rpn_head=rpn_head, channels=fpn_channels, rpn_cfg=rpn_cfg,
                              default=CASCADE_RPN)
    roi_head = _cascade_roi_head(
        roi_head=roi_head, num_classes=num_classes, channels=fpn_channels, rcnn_cfg=rcnn_cfg,
        fc_channels=fc_channels, stage_ious=stage_ious, stage_stds=stage_stds,
        stage_loss_weights=stage_loss_weights, box_loss_beta=box_loss_beta, with_mask=True,
        mask_upsampler=mask_upsampler)
    return _detector(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                     image_scale=image_scale, size_divisor=size_divisor)

