"""RoI heads as a loop over stages: Faster / Mask R-CNN (one stage) and Cascade (Mask) R-CNN
(Cai & Vasconcelos, CVPR 2018), with mmdetection v2's training and test flow.

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

HTC (Chen et al., CVPR 2019) subclasses :class:`CascadeRoIHead`: the extension points are
:meth:`~CascadeRoIHead.box_forward` / :meth:`~CascadeRoIHead.mask_forward` (add semantic
features to the RoI features), :meth:`~CascadeRoIHead.stage_loss` (interleaved execution:
refine before the mask branch), :meth:`~CascadeRoIHead.mask_loss` (mask information flow from
the earlier stages' :meth:`FCNMaskHead.features`) and
:meth:`~CascadeRoIHead.predict_mask_probs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from glimpse.assign import MaxIoUAssigner, RandomSampler, SamplingResult
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_extractor import RoIExtractor, boxes_to_rois
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.structures import Target

__all__ = ["CascadeRoIHead", "StandardRoIHead", "CASCADE_STDS", "CASCADE_IOUS"]

# Cascade R-CNN / HTC stage settings (mmdet cascade_rcnn_r50_fpn configs)
CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_STDS = (
    (0.1, 0.1, 0.2, 0.2),
    (0.05, 0.05, 0.1, 0.1),
    (0.033, 0.033, 0.067, 0.067),
)


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

    # ------------------------------------------------------------------ overridable pieces
    def box_forward(self, stage: int, feats: Sequence[Tensor], rois: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Box head ``stage`` on [R, 5] RoIs -> (logits, deltas, pooled RoI features)."""
        roi_feats = self.box_extractor(feats, rois)
        logits, deltas = self.box_heads[stage](roi_feats)
        return logits, deltas, roi_feats

    def mask_forward(self, stage: int, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Mask head ``stage`` on [R, 5] RoIs -> [R, K, 28, 28] logits."""
        return self.mask_heads[stage](self.mask_extractor(feats, rois))

    def sample(self, stage: int, proposals: Sequence[Tensor], targets: Sequence[Target]
               ) -> list[SamplingResult]:
        """Assign and sample each image's proposals with stage ``stage``'s settings."""
        out = []
        for props, t in zip(proposals, targets):
            gt_boxes, gt_labels = t["boxes"].to(props), t["labels"]
            assign = self.assigners[stage].assign(props, gt_boxes, gt_labels, t.get("boxes_ignore"))
            out.append(self.samplers[stage].sample(assign, props, gt_boxes, gt_labels))
        return out

    def mask_loss(self, stage: int, feats: Sequence[Tensor], samples: Sequence[SamplingResult],
                  targets: Sequence[Target]) -> dict[str, Tensor]:
        """Mask loss of stage ``stage`` on the positives of ``samples`` (unweighted)."""
        head = self.mask_heads[stage]
        for i, t in enumerate(targets):
            if "masks" not in t or t["masks"].shape[0] != t["boxes"].shape[0]:
                raise ValueError(f"target {i} (image_id {t.get('image_id', '?')}): mask models "
                                 "need 'masks' with one mask per box")
        rois = boxes_to_rois([s.pos_boxes for s in samples])
        logits = self.mask_forward(stage, feats, rois)
        size = logits.shape[-1]
        mask_t = head.targets([s.pos_boxes for s in samples],
                              [s.pos_assigned_gt_inds for s in samples],
                              [t["masks"] for t in targets], size)
        labels = torch.cat([s.pos_gt_labels for s in samples])
        return head.loss(logits, mask_t, labels)

    def stage_loss(self, stage: int, feats: Sequence[Tensor], proposals: Sequence[Tensor],
                   targets: Sequence[Target], image_sizes: Sequence[tuple[int, int]]
                   ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Losses of one stage (unweighted) and the next stage's proposals.

        Returns:
            ``(losses, next_proposals)``; ``next_proposals`` are the sampled RoIs regressed by
            this stage, without the ground-truth RoIs (empty list after the last stage).
        """
        samples = self.sample(stage, proposals, targets)
        rois = boxes_to_rois([s.boxes for s in samples])
        logits, deltas, _ = self.box_forward(stage, feats, rois)
        head = self.box_heads[stage]
        labels, box_targets = head.get_targets(samples)
        losses = head.loss(logits, deltas, labels, box_targets)
        if self.with_mask:
            losses.update(self.mask_loss(stage, feats, samples, targets))
        next_props: list[Tensor] = []
        if stage < self.num_stages - 1:
            next_props = self.refine_samples(stage, samples, logits, deltas, labels, image_sizes)
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
             targets: Sequence[Target], image_sizes: Sequence[tuple[int, int]]
             ) -> dict[str, Tensor]:
        """Weighted losses of all stages.

        Args:
            feats: pyramid maps [B, C, H_l, W_l], finest first.
            proposals: per image, [P_i, >=4] xyxy proposals in the network's input frame.
            targets: per image, ground truth in the same frame.
            image_sizes: per image, (height, width) before padding.

        Returns:
            Loss dict (see the class docstring); ``stats_*`` entries are not weighted.
        """
        proposals = [p[:, :4].detach() for p in proposals]
        losses: dict[str, Tensor] = {}
        for stage in range(self.num_stages):
            stage_losses, proposals = self.stage_loss(stage, feats, proposals, targets,
                                                      image_sizes)
            w = self.stage_loss_weights[stage]
            for name, value in stage_losses.items():
                losses[self._key(name, stage)] = value * w if name.startswith("loss_") else value
        return losses

    @torch.no_grad()
    def predict_boxes(self, feats: Sequence[Tensor], proposals: Sequence[Tensor],
                      image_sizes: Sequence[tuple[int, int]]
                      ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Cascade inference of boxes: per image ``(boxes [D, 4], scores [D], labels [D])``."""
        counts = [p.shape[0] for p in proposals]
        boxes = [p[:, :4] for p in proposals]
        stage_logits = []
        for stage in range(self.num_stages):
            logits, deltas, _ = self.box_forward(stage, feats, boxes_to_rois(boxes).to(feats[0]))
            stage_logits.append(logits)
            if stage < self.num_stages - 1:
                labels = logits[:, 1:].argmax(1) + 1
                head = self.box_heads[stage]
                boxes = [head.refine(b, d, lab, size) for b, d, lab, size in zip(
                    boxes, deltas.split(counts), labels.split(counts), image_sizes)]
        # mmdet averages the stages' logits (softmax comes after, in the last head)
        mean_logits = torch.stack(stage_logits).mean(0)
        return self.box_heads[-1].predict(boxes, mean_logits.split(counts), deltas.split(counts),
                                          image_sizes, self.test_cfg)

    @torch.no_grad()
    def predict_mask_probs(self, feats: Sequence[Tensor], boxes: Sequence[Tensor],
                           labels: Sequence[Tensor]) -> list[Tensor]:
        """Per image [D, 28, 28] mask probabilities of the detections, averaged over stages."""
        rois = boxes_to_rois(boxes).to(feats[0])
        probs = sum(head.probabilities(self.mask_forward(t, feats, rois), torch.cat(labels))
                    for t, head in enumerate(self.mask_heads)) / self.num_stages
        return list(probs.split([b.shape[0] for b in boxes]))

    @torch.no_grad()
    def predict(self, feats: Sequence[Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image in the network's input frame.

        Returns:
            Per image a dict with ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D] and, with
            masks, ``mask_probs`` [D, 28, 28] (probabilities inside each box).
        """
        dets = self.predict_boxes(feats, proposals, image_sizes)
        out = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in dets]
        if self.with_mask:
            probs = self.predict_mask_probs(feats, [d["boxes"] for d in out],
                                            [d["labels"] for d in out])
            for d, p in zip(out, probs):
                d["mask_probs"] = p
        return out


class StandardRoIHead(CascadeRoIHead):
    """Faster / Mask R-CNN's RoI head: the one-stage case of the cascade loop.

    Args:
        box_head: the :class:`BoxHead` (class-specific regression in mmdet's configs).
        train_cfg: proposal assignment and sampling.
        test_cfg: detection post-processing.
        box_extractor: 7x7 RoI extractor; default mmdet's.
        mask_head: :class:`FCNMaskHead` for Mask R-CNN, else None.
        mask_extractor: 14x14 RoI extractor; default mmdet's.
    """

    def __init__(
        self,
        box_head: BoxHead,
        train_cfg: RCNNTrainConfig = RCNNTrainConfig(),
        test_cfg: RCNNTestConfig = RCNNTestConfig(),
        box_extractor: RoIExtractor | None = None,
        mask_head: FCNMaskHead | None = None,
        mask_extractor: RoIExtractor | None = None,
    ) -> None:
        super().__init__([box_head], [train_cfg], [1.0], box_extractor,
                         None if mask_head is None else [mask_head], mask_extractor, test_cfg)
