"""Classification and regression targets of one image's anchors (mmdetection v2
``AnchorHead._get_targets_single``), shared by every dense head.

Steps: keep the valid anchors (inside the padded image and, with ``allowed_border >= 0``, not
crossing the image border by more than that), assign them to ground truth (ignore regions
included), optionally sample (the RPN draws 256; RetinaNet trains every assigned anchor),
scatter back to all anchors, and encode the positives' boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glimpse.assign.assigner import MaxIoUAssigner
from glimpse.assign.box_coder import DeltaXYWHBoxCoder
from glimpse.assign.sampler import RandomSampler
from glimpse.structures import Target

__all__ = ["AnchorTargets", "anchor_targets"]


@dataclass(frozen=True)
class AnchorTargets:
    """Targets of N anchors of one image.

    Attributes:
        labels: int64[N], the class 1..K of positives (1 for class-agnostic heads), 0 elsewhere.
        label_weights: float[N], 1 on the anchors trained by the classifier (sampled positives
            and negatives), 0 on ignored, unsampled and invalid anchors.
        box_targets: float[N, 4] encoded deltas on positives, 0 elsewhere.
        box_weights: float[N, 4], 1 on positives.
        num_pos: positives.
        num_neg: negatives trained.
    """

    labels: Tensor
    label_weights: Tensor
    box_targets: Tensor
    box_weights: Tensor
    num_pos: int
    num_neg: int


@torch.no_grad()
def anchor_targets(
    anchors: Tensor,
    valid: Tensor,
    target: Target,
    assigner: MaxIoUAssigner,
    box_coder: DeltaXYWHBoxCoder,
    *,
    sampler: RandomSampler | None = None,
    class_agnostic: bool = False,
    image_size: tuple[int, int] | None = None,
    allowed_border: float = -1,
) -> AnchorTargets:
    """Targets of one image's anchors.

    Args:
        anchors: [N, 4] xyxy anchors of all levels.
        valid: bool[N] anchors that may be trained (see :class:`~glimpse.heads.base.ImageAnchors`).
        target: ground truth in the anchors' frame: ``boxes``, ``labels`` 1..K (not read when
            ``class_agnostic``) and optional ``boxes_ignore``.
        assigner: anchor-to-ground-truth assigner (its ``ignore_iof_thr`` enables ignore
            regions).
        box_coder: coder of the regression targets.
        sampler: draws the trained anchors; None trains every assigned anchor. It must not add
            ground truths as candidates (they are no anchors).
        class_agnostic: label every positive 1 (the RPN's objectness).
        image_size: (height, width) before padding; needed with ``allowed_border >= 0``.
        allowed_border: anchors crossing the image by more than this many pixels are not
            trained; negative keeps all valid anchors (mmdet v2).

    Returns:
        :class:`AnchorTargets` over all N anchors.
    """
    n = anchors.shape[0]
    inside = valid
    if allowed_border >= 0:
        if image_size is None:
            raise ValueError("anchor_targets needs image_size when allowed_border >= 0")
        h, w = image_size
        inside = valid & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) \
            & (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border)
    inside_idx = inside.nonzero().flatten()
    candidates = anchors[inside_idx]
    gt_boxes = target["boxes"].to(anchors)
    gt_ignore = target.get("boxes_ignore")
    assign = assigner.assign(candidates, gt_boxes, None,
                             None if gt_ignore is None else gt_ignore.to(anchors))
    if sampler is None:
        pos_idx = (assign.gt_inds > 0).nonzero().flatten()
        neg_idx = (assign.gt_inds == 0).nonzero().flatten()
    else:
        if sampler.add_gt_as_proposals:
            raise ValueError("anchor_targets needs a sampler with add_gt_as_proposals=False")
        sample = sampler.sample(assign, candidates, gt_boxes)
        pos_idx, neg_idx = sample.pos_inds, sample.neg_inds
    pos_gt = assign.gt_inds[pos_idx] - 1  # 0-based ground truth of each positive

    labels = torch.zeros(n, dtype=torch.long, device=anchors.device)
    label_weights = anchors.new_zeros(n)
    box_targets = anchors.new_zeros((n, 4))
    box_weights = anchors.new_zeros((n, 4))
    pos = inside_idx[pos_idx]
    neg = inside_idx[neg_idx]
    if pos.numel():
        box_targets[pos] = box_coder.encode(candidates[pos_idx], gt_boxes[pos_gt]).to(anchors)
        box_weights[pos] = 1.0
        labels[pos] = 1 if class_agnostic else \
            target["labels"].to(device=anchors.device, dtype=torch.long)[pos_gt]
        label_weights[pos] = 1.0
    label_weights[neg] = 1.0
    return AnchorTargets(labels, label_weights, box_targets, box_weights, int(pos.numel()),
                         int(neg.numel()))
