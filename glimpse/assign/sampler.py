"""Random positive / negative sampling of assigned candidates (mmdetection v2 ``RandomSampler``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glimpse.assign.assigner import AssignResult

__all__ = ["RandomSampler", "SamplingResult"]


@dataclass
class SamplingResult:
    """Sampled candidates of one image.

    When ground truths were added as proposals, they come first among the candidates, so
    ``pos_is_gt`` marks which positives are ground-truth boxes themselves (cascade stages drop
    those before refining).

    Attributes:
        pos_inds: int64[P] indices of the positives among the (possibly gt-augmented) boxes.
        neg_inds: int64[Q] indices of the negatives.
        pos_boxes: [P, 4] xyxy positive boxes.
        neg_boxes: [Q, 4] xyxy negative boxes.
        pos_gt_boxes: [P, 4] xyxy ground truth each positive is assigned to.
        pos_gt_labels: int64[P] its label (1..K; 0 when the assignment had no labels).
        pos_assigned_gt_inds: int64[P] 0-based ground-truth index of each positive.
        pos_is_gt: bool[P] whether the positive is an added ground-truth box.
    """

    pos_inds: Tensor
    neg_inds: Tensor
    pos_boxes: Tensor
    neg_boxes: Tensor
    pos_gt_boxes: Tensor
    pos_gt_labels: Tensor
    pos_assigned_gt_inds: Tensor
    pos_is_gt: Tensor

    @property
    def boxes(self) -> Tensor:
        """[P + Q, 4] positives then negatives, the order R-CNN targets use."""
        return torch.cat((self.pos_boxes, self.neg_boxes))

    @property
    def num_pos(self) -> int:
        return int(self.pos_inds.numel())

    @property
    def num_neg(self) -> int:
        return int(self.neg_inds.numel())


def _random_choice(gallery: Tensor, num: int) -> Tensor:
    """``num`` elements of ``gallery`` without replacement, drawn from torch's global RNG."""
    perm = torch.randperm(gallery.numel(), device=gallery.device)[:num]
    return gallery[perm]


class RandomSampler:
    """Draw up to ``num`` candidates, at most ``num * pos_fraction`` of them positive.

    As mmdet: positives are drawn first (all of them if there are few), negatives fill the rest
    (capped at ``neg_pos_ub * max(1, num_pos)`` when ``neg_pos_ub >= 0``); indices come back
    sorted. The draw uses ``torch.randperm`` on the global generator, which the engine seeds.

    Args:
        num: total samples per image (256 RPN, 512 R-CNN).
        pos_fraction: upper bound of the positive share (0.5 RPN, 0.25 R-CNN).
        neg_pos_ub: negatives per positive bound; ``-1`` disables it.
        add_gt_as_proposals: prepend the ground truths as candidates (R-CNN stages).
    """

    def __init__(
        self,
        num: int,
        pos_fraction: float,
        neg_pos_ub: float = -1,
        add_gt_as_proposals: bool = True,
    ) -> None:
        if num <= 0 or not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"bad sampler settings num={num}, pos_fraction={pos_fraction}")
        self.num = int(num)
        self.pos_fraction = float(pos_fraction)
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(
        self,
        assign_result: AssignResult,
        boxes: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor | None = None,
    ) -> SamplingResult:
        """Sample positives and negatives of one image.

        Args:
            assign_result: assignment of ``boxes`` (modified in place when gts are added).
            boxes: [N, 4] xyxy candidates (extra columns are dropped).
            gt_boxes: [G, 4] xyxy ground truth.
            gt_labels: int64[G] labels, needed with ``add_gt_as_proposals``.

        Returns:
            :class:`SamplingResult`.
        """
        boxes = boxes[:, :4]
        gt_flags = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
        if self.add_gt_as_proposals and gt_boxes.numel() > 0:
            if gt_labels is None:
                gt_labels = torch.zeros(gt_boxes.shape[0], dtype=torch.long,
                                        device=gt_boxes.device)
            boxes = torch.cat((gt_boxes.to(boxes), boxes))
            assign_result.add_gt_(gt_labels)
            gt_flags = torch.cat((torch.ones(gt_boxes.shape[0], dtype=torch.bool,
                                             device=boxes.device), gt_flags))

        num_expected_pos = int(self.num * self.pos_fraction)
        pos_inds = self._sample(assign_result.gt_inds > 0, num_expected_pos)
        num_expected_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_expected_neg = min(num_expected_neg,
                                   int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = self._sample(assign_result.gt_inds == 0, num_expected_neg)

        pos_assigned = assign_result.gt_inds[pos_inds] - 1
        if gt_boxes.numel() > 0:
            pos_gt_boxes = gt_boxes[:, :4].to(boxes)[pos_assigned]
        else:
            pos_gt_boxes = boxes.new_zeros((0, 4))
        return SamplingResult(
            pos_inds=pos_inds,
            neg_inds=neg_inds,
            pos_boxes=boxes[pos_inds],
            neg_boxes=boxes[neg_inds],
            pos_gt_boxes=pos_gt_boxes,
            pos_gt_labels=assign_result.labels[pos_inds],
            pos_assigned_gt_inds=pos_assigned,
            pos_is_gt=gt_flags[pos_inds],
        )

    @staticmethod
    def _sample(mask: Tensor, num: int) -> Tensor:
        """Sorted indices of at most ``num`` True entries of ``mask``, drawn at random."""
        inds = torch.nonzero(mask, as_tuple=False).flatten()
        if inds.numel() > num:
            inds = _random_choice(inds, num)
        return inds.unique()  # sorted, as mmdet's ``.unique()``

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num={self.num}, pos_fraction={self.pos_fraction}, "
            f"neg_pos_ub={self.neg_pos_ub}, add_gt_as_proposals={self.add_gt_as_proposals})"
        )
