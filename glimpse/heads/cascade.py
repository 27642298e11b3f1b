"""RoI heads as a loop over stages: Cascade (Mask) R-CNN (Cai & Vasconcelos, CVPR 2018) and,
as its one-stage case, Faster / Mask R-CNN (:mod:`glimpse.heads.standard`), with mmdetection
v2's training and test flow.

Training, per stage ``t`` (mmdet ``CascadeRoIHead.forward_train``):

1. assign and sample the current proposals with stage ``t``'s IoU threshold (ground truths are
   added as proposals);
2. box head ``t`` on the sampled RoIs; its losses are multiplied by ``stage_loss_weights[t]``;
3. mask head ``t`` on the positive RoIs (Cascade Mask R-CNN; the pre-regression RoIs);
4. without gradient, the sampled RoIs are regressed by head ``t`` (ground-truth RoIs dropped)
   and become stage ``t + 1``'s proposals.

Inference runs the box heads in sequence on the regressed RoIs, averages the stages' class
logits, takes the boxes of the last stage, and averages the stages' sigmoid masks computed on
the final boxes.

Every call of :meth:`~CascadeRoIHead.loss` / :meth:`~CascadeRoIHead.predict` has one
:class:`CascadeContext` (the pyramid, the image sizes, an optional semantic feature map and a
place where stages leave features for later stages), built from its arguments or passed in with
``context=``, and hands it to every stage method, so a subclass keeps its per-batch state there
and never on ``self`` (re-entrant, ``torch.compile`` friendly).

HTC (Chen et al., CVPR 2019) subclasses :class:`CascadeRoIHead`; its extension points are
:meth:`~CascadeRoIHead.box_forward` / :meth:`~CascadeRoIHead.mask_forward` (add
``context.semantic_feat`` to the RoI features; chain the mask heads' features through
``context.mask_feats``), :meth:`~CascadeRoIHead.stage_loss` (interleaved execution: refine and
re-sample before the mask branch), :meth:`~CascadeRoIHead.mask_loss` (mask information flow:
run the earlier mask heads on this stage's RoIs first) and the ``context`` keyword of
:meth:`~CascadeRoIHead.loss` / :meth:`~CascadeRoIHead.predict` (a head that owns a semantic
branch computes its feature map once and passes it in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from glimpse.assign import MaxIoUAssigner, RandomSampler, SamplingResult
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_extractor import RoIExtractor, boxes_to_rois
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.structures import Target

__all__ = ["CascadeContext", "CascadeRoIHead", "StagePredictions", "CASCADE_STDS",
           "CASCADE_IOUS"]

# Cascade R-CNN / HTC stage settings (mmdet cascade_rcnn_r50_fpn configs)
CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_STDS = (
    (0.1, 0.1, 0.2, 0.2),
    (0.05, 0.05, 0.1, 0.1),
    (0.033, 0.033, 0.067, 0.067),
)

# per stage, per image: (boxes [P_i, 4] regressed by that stage, class probabilities
# [P_i, K + 1] of that stage alone); see CascadeRoIHead.predict_boxes
StagePredictions = list[list[tuple[Tensor, Tensor]]]


@dataclass
class CascadeContext:
    """What the stages of one :meth:`CascadeRoIHead.loss` / :meth:`~CascadeRoIHead.predict`
    call share. One per call, dropped after it, so stages keep per-batch state here, never on
    the module. Callers with more to hand the stages (HTC's semantic map) build it themselves
    and pass it as ``context=``.

    Attributes:
        feats: pyramid maps [B, C, H_l, W_l], finest first.
        image_sizes: per image, (height, width) before padding.
        semantic_feat: optional [B, C_s, H_s, W_s] semantic feature map (HTC's fused semantic
            branch, stride 8); the base heads ignore it, HTC adds its RoI features to the box
            and mask RoI features.
        mask_feats: stage -> [R, C, S, S] mask-head conv features
            (:meth:`FCNMaskHead.features`) of the RoIs that stage's mask branch last ran on.
            The base heads neither read nor write it; HTC's mask information flow writes stage
            ``t``'s features and reads them in stage ``t + 1`` (same RoIs: inference runs the
            mask stages in order on one set of boxes, training re-runs the earlier stages on
            the current stage's RoIs).
    """

    feats: Sequence[Tensor]
    image_sizes: Sequence[tuple[int, int]]
    semantic_feat: Tensor | None = None
    mask_feats: dict[int, Tensor] = field(default_factory=dict)


class CascadeRoIHead(nn.Module):
    """Box (and optionally mask) heads run as a cascade of stages.

    Args:
        box_heads: one :class:`BoxHead` per stage.
        train_cfgs: one :class:`RCNNTrainConfig` per stage.
        stage_loss_weights: loss multiplier of each stage (1, 0.5, 0.25 in Cascade R-CNN).
        box_extractor: RoI feature extractor of the box heads (7x7); default mmdet's.
        mask_heads: one :class:`FCNMaskHead` per stage, or None for box-only models.
        mask_extractor: RoI extractor of the mask heads (14x14); default mmdet's.
        test_cfg: detection post-processing.

    Loss keys are ``loss_cls``, ``loss_box``, ``loss_mask`` (and ``stats_acc``) with one stage,
    and ``loss_cls_s{t}`` etc. (``t`` from 0, as mmdet's ``s{t}.`` prefixes) with several.
    """

    def __init__(
        self,
        box_heads: Sequence[BoxHead],
        train_cfgs: Sequence[RCNNTrainConfig],
        stage_loss_weights: Sequence[float],
        box_extractor: RoIExtractor | None = None,
        mask_heads: Sequence[FCNMaskHead] | None = None,
        mask_extractor: RoIExtractor | None = None,
        test_cfg: RCNNTestConfig = RCNNTestConfig(),
    ) -> None:
        super().__init__()
        n = len(box_heads)
        if n == 0 or len(train_cfgs) != n or len(stage_loss_weights) != n:
            raise ValueError(f"need one train config and loss weight per stage: {n} box heads, "
                             f"{len(train_cfgs)} configs, {len(stage_loss_weights)} weights")
        if mask_heads is not None and len(mask_heads) != n:
            raise ValueError(f"{len(mask_heads)} mask heads for {n} stages")
        self.box_heads = nn.ModuleList(box_heads)
        self.mask_heads = nn.ModuleList(mask_heads) if mask_heads is not None else None
        self.box_extractor = box_extractor or RoIExtractor(output_size=7)
        self.mask_extractor = (mask_extractor or RoIExtractor(output_size=14)
                               if mask_heads is not None else None)
        self.train_cfgs = list(train_cfgs)
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.test_cfg = test_cfg
        self.assigners = [
            MaxIoUAssigner(c.pos_iou_thr, c.neg_iou_thr, c.min_pos_iou,
                           ignore_iof_thr=c.ignore_iof_thr, match_low_quality=c.match_low_quality)
            for c in self.train_cfgs
        ]
        self.samplers = [
            RandomSampler(c.num_samples, c.pos_fraction, c.neg_pos_ub, c.add_gt_as_proposals)
            for c in self.train_cfgs
        ]

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    @property
    def with_mask(self) -> bool:
        return self.mask_heads is not None

    def _key(self, name: str, stage: int) -> str:
        return name if self.num_stages == 1 else f"{name}_s{stage}"

    @staticmethod
    def _context(feats: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                 context: CascadeContext | None) -> CascadeContext:
        """The caller's context, checked against ``feats`` / ``image_sizes``, or a new one."""
        if context is None:
            return CascadeContext(feats, image_sizes)
        same_feats = (len(context.feats) == len(feats)
                      and all(a is b for a, b in zip(context.feats, feats)))
        if not same_feats or list(context.image_sizes) != list(image_sizes):
            raise ValueError("context: its feats and image_sizes must be the ones passed "
                             "alongside it")
        return context

    # ------------------------------------------------------------------ overridable pieces
    def box_forward(self, stage: int, context: CascadeContext, rois: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Box head ``stage`` on [R, 5] RoIs -> (logits, deltas, pooled RoI features)."""
        roi_feats = self.box_extractor(context.feats, rois)
        logits, deltas = self.box_heads[stage](roi_feats)
        return logits, deltas, roi_feats

    def mask_forward(self, stage: int, context: CascadeContext, rois: Tensor) -> Tensor:
        """Mask head ``stage`` on [R, 5] RoIs -> [R, K, 28, 28] logits."""
        return self.mask_heads[stage](self.mask_extractor(context.feats, rois))

    def sample(self, stage: int, proposals: Sequence[Tensor], targets: Sequence[Target]
               ) -> list[SamplingResult]:
        """Assign and sample each image's proposals with stage ``stage``'s settings."""
        out = []
        for props, t in zip(proposals, targets):
            gt_boxes, gt_labels = t["boxes"].to(props), t["labels"]
            assign = self.assigners[stage].assign(props, gt_boxes, gt_labels, t.get("boxes_ignore"))
            out.append(self.samplers[stage].sample(assign, props, gt_boxes, gt_labels))
        return out

    def mask_loss(self, stage: int, context: CascadeContext, samples: Sequence[SamplingResult],
                  targets: Sequence[Target]) -> dict[str, Tensor]:
        """Mask loss of stage ``stage`` on the positives of ``samples`` (unweighted)."""
        head = self.mask_heads[stage]
        for i, t in enumerate(targets):
            if "masks" not in t or t["masks"].shape[0] != t["boxes"].shape[0]:
                raise ValueError(f"target {i} (image_id {t.get('image_id', '?')}): mask models "
                                 "need 'masks' with one mask per box")
        rois = boxes_to_rois([s.pos_boxes for s in samples])
        logits = self.mask_forward(stage, context, rois)
        size = logits.shape[-1]
        mask_t = head.targets([s.pos_boxes for s in samples],
                              [s.pos_assigned_gt_inds for s in samples],
                              [t["masks"] for t in targets], size)
        labels = torch.cat([s.pos_gt_labels for s in samples])
        return head.loss(logits, mask_t, labels)

    def stage_loss(self, stage: int, context: CascadeContext, proposals: Sequence[Tensor],
                   targets: Sequence[Target]) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Losses of one stage (unweighted) and the next stage's proposals.

        Returns:
            ``(losses, next_proposals)``; ``next_proposals`` are the sampled RoIs regressed by
            this stage, without the ground-truth RoIs (empty list after the last stage).
        """
        samples = self.sample(stage, proposals, targets)
        rois = boxes_to_rois([s.boxes for s in samples])
        logits, deltas, _ = self.box_forward(stage, context, rois)
        head = self.box_heads[stage]
        labels, box_targets = head.get_targets(samples)
        losses = head.loss(logits, deltas, labels, box_targets)
        if self.with_mask:
            losses.update(self.mask_loss(stage, context, samples, targets))
        next_props: list[Tensor] = []
        if stage < self.num_stages - 1:
            next_props = self.refine_samples(stage, samples, logits, deltas, labels,
                                             context.image_sizes)
        return losses, next_props

    @torch.no_grad()
    def refine_samples(self, stage: int, samples: Sequence[SamplingResult], logits: Tensor,
                       deltas: Tensor, labels: Tensor, image_sizes: Sequence[tuple[int, int]]
                       ) -> list[Tensor]:
        """Regress the sampled RoIs by stage ``stage`` and drop the ground-truth ones
        (mmdet ``refine_bboxes``); negatives use the predicted foreground class."""
        head = self.box_heads[stage]
        labels = torch.where(labels == 0, logits[:, 1:].argmax(1) + 1, labels)
        out, start = [], 0
        for s, size in zip(samples, image_sizes):
            n = s.num_pos + s.num_neg
            sl = slice(start, start + n)
            refined = head.refine(s.boxes, deltas[sl], labels[sl], size)
            keep = torch.ones(n, dtype=torch.bool, device=refined.device)
            keep[: s.num_pos] = ~s.pos_is_gt
            out.append(refined[keep].detach())
            start += n
        return out

    # ----------------------------------------------------------------------- public API
    def loss(self, feats: Sequence[Tensor], proposals: Sequence[Tensor],
             targets: Sequence[Target], image_sizes: Sequence[tuple[int, int]],
             *, context: CascadeContext | None = None) -> dict[str, Tensor]:
        """Weighted losses of all stages.

        Args:
            feats: pyramid maps [B, C, H_l, W_l], finest first.
            proposals: per image, [P_i, >=4] xyxy proposals in the network's input frame.
            targets: per image, ground truth in the same frame.
            image_sizes: per image, (height, width) before padding.
            context: the call's :class:`CascadeContext` when the caller has more to put in it
                (HTC: ``semantic_feat``); built from ``feats`` and ``image_sizes`` otherwise
                (and then it must hold those same ones).

        Returns:
            Loss dict (see the class docstring); ``stats_*`` entries are not weighted.
        """
        context = self._context(feats, image_sizes, context)
        proposals = [p[:, :4].detach() for p in proposals]
        losses: dict[str, Tensor] = {}
        for stage in range(self.num_stages):
            stage_losses, proposals = self.stage_loss(stage, context, proposals, targets)
            w = self.stage_loss_weights[stage]
            for name, value in stage_losses.items():
                losses[self._key(name, stage)] = value * w if name.startswith("loss_") else value
        return losses

    @torch.no_grad()
    def predict_boxes(self, context: CascadeContext, proposals: Sequence[Tensor], *,
                      return_stages: bool = False
                      ) -> (list[tuple[Tensor, Tensor, Tensor]]
                            | tuple[list[tuple[Tensor, Tensor, Tensor]], StagePredictions]):
        """Cascade inference of boxes.

        Args:
            context: the call's context (feats, image_sizes, ...).
            proposals: per image, [P_i, >=4] xyxy proposals in the network's input frame.
            return_stages: also return what every stage produced, before NMS.

        Returns:
            Per image ``(boxes [D, 4], scores [D], labels [D])``; with ``return_stages``,
            ``(detections, stages)`` where ``stages[t][i]`` is ``(boxes [P_i, 4],
            probs [P_i, K + 1])``: image ``i``'s proposals after stage ``t``'s regression (by
            its most likely foreground class, clipped to the image) and stage ``t``'s own
            softmax class probabilities (column 0 background) of the RoIs it was given (the
            proposals for stage 0, stage ``t - 1``'s boxes after). Row ``j`` is proposal ``j``
            in every stage. The detections instead use the stages' mean logits and decode the
            last stage's deltas of every class.
        """
        counts = [p.shape[0] for p in proposals]
        boxes = [p[:, :4] for p in proposals]
        stage_logits = []
        stages: StagePredictions = []
        for stage in range(self.num_stages):
            rois = boxes_to_rois(boxes).to(context.feats[0])
            logits, deltas, _ = self.box_forward(stage, context, rois)
            stage_logits.append(logits)
            if stage < self.num_stages - 1 or return_stages:
                labels = logits[:, 1:].argmax(1) + 1
                head = self.box_heads[stage]
                refined = [head.refine(b, d, lab, size) for b, d, lab, size in zip(
                    boxes, deltas.split(counts), labels.split(counts), context.image_sizes)]
                if return_stages:
                    stages.append(list(zip(refined, logits.softmax(-1).split(counts))))
                if stage < self.num_stages - 1:
                    boxes = refined
        # mmdet averages the stages' logits (softmax comes after, in the last head)
        mean_logits = torch.stack(stage_logits).mean(0)
        dets = self.box_heads[-1].predict(boxes, mean_logits.split(counts), deltas.split(counts),
                                          context.image_sizes, self.test_cfg)
        return (dets, stages) if return_stages else dets

    @torch.no_grad()
    def predict_mask_probs(self, context: CascadeContext, boxes: Sequence[Tensor],
                           labels: Sequence[Tensor]) -> list[Tensor]:
        """Per image [D, 28, 28] mask probabilities of the detections, averaged over stages.

        The mask stages run in order 0, 1, ... on the same RoIs (what HTC's mask information
        flow relies on).
        """
        rois = boxes_to_rois(boxes).to(context.feats[0])
        flat_labels = torch.cat(labels)
        probs = sum(head.probabilities(self.mask_forward(t, context, rois), flat_labels)
                    for t, head in enumerate(self.mask_heads)) / self.num_stages
        return list(probs.split([b.shape[0] for b in boxes]))

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]], *,
                context: CascadeContext | None = None) -> list[dict[str, Tensor]]:
        """Detections per image in the network's input frame.

        Args:
            feats, proposals, image_sizes, context: as in :meth:`loss`.

        Returns:
            Per image a dict with ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D] and, with
            masks, ``mask_probs`` [D, 28, 28] (probabilities inside each box).
        """
        context = self._context(feats, image_sizes, context)
        dets = self.predict_boxes(context, proposals)
        out = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in dets]
        if self.with_mask:
            probs = self.predict_mask_probs(context, [d["boxes"] for d in out],
                                            [d["labels"] for d in out])
            for d, p in zip(out, probs):
                d["mask_probs"] = p
        return out
