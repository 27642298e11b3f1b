"""Max-IoU assignment of candidate boxes (anchors, proposals) to ground truth, as mmdetection v2's
``MaxIoUAssigner``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["AssignResult", "MaxIoUAssigner", "box_iof"]


@dataclass
class AssignResult:
    """Outcome of assigning N candidate boxes to G ground-truth boxes.

    Attributes:
        num_gts: G.
        gt_inds: int64[N]; ``0`` negative (background), ``-1`` ignored (neither positive nor
            negative), ``k > 0`` positive for ground truth ``k - 1`` (1-based, as mmdet).
        max_overlaps: float[N], each candidate's best IoU with any ground truth (``-1`` where
            an ignore region covered it).
        labels: int64[N], the assigned ground truth's label for positives, 0 elsewhere
            (or everywhere when no labels were given).
    """

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    @property
    def num_boxes(self) -> int:
        return int(self.gt_inds.numel())

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the ground truths themselves as perfect positives (sampler's add-gt)."""
        device = self.gt_inds.device
        self_inds = torch.arange(1, self.num_gts + 1, dtype=torch.long, device=device)
        self.gt_inds = torch.cat((self_inds, self.gt_inds))
        self.max_overlaps = torch.cat((self.max_overlaps.new_ones(self.num_gts),
                                       self.max_overlaps))
        self.labels = torch.cat((gt_labels.to(self.labels), self.labels))


def box_iof(boxes: Tensor, regions: Tensor) -> Tensor:
    """Intersection over the *first* box's area (mmdet ``mode='iof'``).

    Args:
        boxes: [N, 4] xyxy.
        regions: [M, 4] xyxy.

    Returns:
        [N, M] area(boxes_i & regions_j) / area(boxes_i) (0 where boxes_i has no area).
    """
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])  # [N, M, 2]
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # [N, M]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    return inter / area.clamp(min=torch.finfo(inter.dtype).eps)


class MaxIoUAssigner:
    """Assign each candidate to the ground truth it overlaps most.

    Rules, applied in order (mmdet v2 ``assign_wrt_overlaps``):

    1. every candidate starts ignored (``-1``);
    2. candidates whose best IoU lies in ``[0, neg_iou_thr)`` (or in ``[lo, hi)`` when
       ``neg_iou_thr`` is a pair) become negative (``0``);
    3. candidates whose best IoU is ``>= pos_iou_thr`` become positive for that ground truth;
    4. with ``match_low_quality``, each ground truth whose best IoU is ``>= min_pos_iou`` also
       claims its best candidate (all tied candidates with ``gt_max_assign_all``), even if
       below ``pos_iou_thr``; later ground truths win ties, as in mmdet.

    Candidates covered by an ignore region (intersection over the candidate's area above
    ``ignore_iof_thr``, when that is positive) get IoU ``-1`` with every ground truth, so they
    stay ignored. With no ground truth at all every candidate is negative (mmdet does the same,
    ignore regions included).

    Args:
        pos_iou_thr: IoU at or above which a candidate is positive (0.7 RPN, 0.5 R-CNN).
        neg_iou_thr: IoU below which a candidate is negative, or a ``(lo, hi)`` interval.
        min_pos_iou: lowest IoU a low-quality match may have (0.3 RPN).
        gt_max_assign_all: give a ground truth every candidate tied at its best IoU.
        ignore_iof_thr: ignore-region threshold; ``<= 0`` disables ignore regions.
        match_low_quality: enable rule 4 (True for the RPN, False for mmdet v2's R-CNN stages).
    """

    def __init__(
        self,
        pos_iou_thr: float,
        neg_iou_thr: float | tuple[float, float],
        min_pos_iou: float = 0.0,
        gt_max_assign_all: bool = True,
        ignore_iof_thr: float = -1.0,
        match_low_quality: bool = True,
    ) -> None:
        if isinstance(neg_iou_thr, (tuple, list)):
            if len(neg_iou_thr) != 2:
                raise ValueError(f"neg_iou_thr pair must have 2 values, got {neg_iou_thr}")
            neg_iou_thr = (float(neg_iou_thr[0]), float(neg_iou_thr[1]))
        else:
            neg_iou_thr = float(neg_iou_thr)
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = float(min_pos_iou)
        self.gt_max_assign_all = gt_max_assign_all
        self.ignore_iof_thr = float(ignore_iof_thr)
        self.match_low_quality = match_low_quality

    def assign(
        self,
        boxes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor | None = None,
        gt_ignore: Tensor | None = None,
    ) -> AssignResult:
        """Assign candidates to ground truth.

        Args:
            boxes: [N, 4] xyxy candidates (extra columns such as scores are dropped).
            gt_boxes: [G, 4] xyxy ground truth.
            gt_labels: int64[G] labels 1..K, or None (RPN).
            gt_ignore: [M, 4] xyxy ignore regions (COCO crowd boxes), or None.

        Returns:
            :class:`AssignResult` over the N candidates.
        """
        boxes = boxes[:, :4]
        overlaps = box_iou(gt_boxes.float(), boxes.float())  # [G, N]
        if (self.ignore_iof_thr > 0 and gt_ignore is not None and gt_ignore.numel() > 0
                and boxes.numel() > 0 and gt_boxes.numel() > 0):
            ignore_max = box_iof(boxes.float(), gt_ignore.float()).max(dim=1).values  # [N]
            overlaps[:, ignore_max > self.ignore_iof_thr] = -1
        return self.assign_wrt_overlaps(overlaps, gt_labels)

    def assign_wrt_overlaps(self, overlaps: Tensor, gt_labels: Tensor | None = None
                            ) -> AssignResult:
        """Apply the assignment rules to a precomputed [G, N] IoU matrix."""
        num_gts, num_boxes = overlaps.shape
        device = overlaps.device
        gt_inds = torch.full((num_boxes,), -1, dtype=torch.long, device=device)
        labels = torch.zeros(num_boxes, dtype=torch.long, device=device)
        if num_gts == 0 or num_boxes == 0:
            max_overlaps = overlaps.new_zeros(num_boxes)
            if num_gts == 0:
                gt_inds.zero_()
            return AssignResult(num_gts, gt_inds, max_overlaps, labels)

        max_overlaps, argmax = overlaps.max(dim=0)  # best gt per candidate, [N]
        gt_max, gt_argmax = overlaps.max(dim=1)  # best candidate per gt, [G]

        if isinstance(self.neg_iou_thr, tuple):
            lo, hi = self.neg_iou_thr
            gt_inds[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
        else:
            gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0

        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax[pos] + 1

        if self.match_low_quality:
            # sequential on purpose: a later gt overwrites an earlier one on ties (mmdet)
            for i in range(num_gts):
                if gt_max[i] >= self.min_pos_iou:
                    if self.gt_max_assign_all:
                        gt_inds[overlaps[i] == gt_max[i]] = i + 1
                    else:
                        gt_inds[gt_argmax[i]] = i + 1

        if gt_labels is not None:
            pos = gt_inds > 0
            labels[pos] = gt_labels.to(device=device, dtype=torch.long)[gt_inds[pos] - 1]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pos_iou_thr={self.pos_iou_thr}, "
            f"neg_iou_thr={self.neg_iou_thr}, min_pos_iou={self.min_pos_iou}, "
            f"match_low_quality={self.match_low_quality}, ignore_iof_thr={self.ignore_iof_thr})"
        )
