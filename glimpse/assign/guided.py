"""Anchors and targets of Guided Anchoring (Wang et al., CVPR 2019), as mmdetection v2's
``GuidedAnchorHead``.

Guided anchoring predicts one anchor per feature location. Three anchor sets take part:

* **approximate anchors** (approxs): ``scales_per_octave`` octave scales x the ratios per
  location (9 for GA-RPN), used only to pick each location's shape target;
* **square anchors** (squares): one square of side ``octave_base_scale * stride`` per location,
  the centre and reference size of the guided anchor;
* **guided anchors**: the squares with width and height from the shape branch
  (:func:`guided_anchors`).

Training targets: :func:`location_targets` for the location branch (centre / ignore / outside
regions over the FPN levels) and :func:`shape_targets` for the shape branch (the ground truth
of each sampled square, assigned by :class:`ApproxMaxIoUAssigner`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from glimpse.assign.anchors import AnchorGenerator
from glimpse.assign.assigner import AssignResult, MaxIoUAssigner, box_iof
from glimpse.assign.box_coder import DeltaXYWHBoxCoder
from glimpse.assign.sampler import RandomSampler
from glimpse.structures import Target

__all__ = [
    "ApproxMaxIoUAssigner",
    "LocationTargets",
    "ShapeTargets",
    "approx_anchor_generator",
    "guided_anchors",
    "location_targets",
    "shape_targets",
    "square_anchor_generator",
]


def approx_anchor_generator(
    strides: Sequence[int],
    octave_base_scale: float = 8.0,
    scales_per_octave: int = 3,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> AnchorGenerator:
    """Octave anchors: scales ``octave_base_scale * 2**(i / scales_per_octave)`` x ``ratios``
    per location (mmdet ``approx_anchor_generator``; RetinaNet's anchors are the same grid).

    GA-RPN: base 8 on strides 4..64 (9 approxs per location, 32 to 1290 px at ratio 1);
    GA-RetinaNet: base 4 on strides 8..128.
    """
    if scales_per_octave < 1:
        raise ValueError(f"scales_per_octave must be >= 1, got {scales_per_octave}")
    scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
    return AnchorGenerator(strides=strides, ratios=ratios, scales=scales)


def square_anchor_generator(strides: Sequence[int], octave_base_scale: float = 8.0
                            ) -> AnchorGenerator:
    """One square per location, side ``octave_base_scale * stride`` (mmdet
    ``square_anchor_generator``: 32..512 px for both GA-RPN and GA-RetinaNet)."""
    return AnchorGenerator(strides=strides, ratios=(1.0,), scales=(octave_base_scale,))


def guided_anchors(squares: Tensor, shape_deltas: Tensor, anchor_coder: DeltaXYWHBoxCoder
                   ) -> Tensor:
    """Guided anchors: each square keeps its centre, its width and height become
    ``side * exp(std_w * dw)`` and ``side * exp(std_h * dh)`` (no clipping).

    Args:
        squares: [N, 4] xyxy squares.
        shape_deltas: [N, 2] (dw, dh) from the shape branch.
        anchor_coder: coder with GA's anchoring stds (GA-RPN 0.14 on w and h).

    Returns:
        [N, 4] xyxy anchors.
    """
    deltas = torch.cat((shape_deltas.new_zeros((shape_deltas.shape[0], 2)), shape_deltas), 1)
    # mmdet decodes with wh_ratio_clip=1e-6: |std * dw| up to 13.8 before exp
    return anchor_coder.decode(squares, deltas, wh_ratio_clip=1e-6)


# ------------------------------------------------------------------------- location targets
@dataclass(frozen=True)
class LocationTargets:
    """Targets of the location branch of a batch.

    Attributes:
        targets: per level float[B, 1, H_l, W_l], 1 in the centre regions, 0 elsewhere.
        weights: per level float[B, 1, H_l, W_l]: 1 in centre regions, 0 in ignore regions
            (the central ``ignore_ratio`` box minus the centre, on the ground truth's level,
            and the whole ignore box on the two adjacent levels), 0.1 everywhere else.
        avg_factor: loss normaliser, ``sum_l B * H_l * W_l / 200`` (mmdet).
    """

    targets: tuple[Tensor, ...]
    weights: tuple[Tensor, ...]
    avg_factor: float


def _region(box: Tensor, ratio: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Inclusive feature-grid corners of the box shrunk by ``ratio`` on each side (mmdet
    ``calc_region``: round half to even, clamped to [0, W] / [0, H])."""
    x1, y1, x2, y2 = box.unbind()
    corners = torch.stack(((1 - ratio) * x1 + ratio * x2, (1 - ratio) * y1 + ratio * y2,
                           ratio * x1 + (1 - ratio) * x2, ratio * y1 + (1 - ratio) * y2))
    h, w = size
    cx1, cy1, cx2, cy2 = corners.round().long().tolist()
    return min(max(cx1, 0), w), min(max(cy1, 0), h), min(max(cx2, 0), w), min(max(cy2, 0), h)


@torch.no_grad()
def location_targets(
    gt_boxes: Sequence[Tensor],
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float,
    center_ratio: float = 0.2,
    ignore_ratio: float = 0.5,
) -> LocationTargets:
    """Location-branch targets over FPN levels (mmdet v2 ``ga_loc_targets``).

    Each ground truth of scale ``s = sqrt(w h)`` goes to level
    ``floor(log2(s / (octave_base_scale * strides[0])) + 0.5)`` clamped to the levels (with
    32-px base squares: < 45 px on level 0, 45-91 on 1, ...). On that level, in the box divided
    by the stride, the central ``center_ratio`` box is positive and the central
    ``ignore_ratio`` box around it ignored; the ignore box also ignores the adjacent levels where
    no ground truth set a weight. Ground truths are written in order, so a later ground truth's
    ignore box can zero an earlier one's centre (mmdet's behaviour, kept).

    Args:
        gt_boxes: per image [G_i, 4] xyxy ground truth in padded-batch pixels.
        feature_sizes: (H_l, W_l) of each level's batch feature map.
        strides: stride of each level.
        octave_base_scale: square side in strides (8 GA-RPN, 4 GA-RetinaNet).
        center_ratio: side fraction of the positive centre (0.2).
        ignore_ratio: side fraction of the ignore box (0.5).

    Returns:
        :class:`LocationTargets`.
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(f"location_targets got {len(feature_sizes)} feature sizes for "
                         f"{len(strides)} strides")
    if not 0 < center_ratio <= ignore_ratio <= 1:
        raise ValueError(f"need 0 < center_ratio <= ignore_ratio <= 1, got {center_ratio} and "
                         f"{ignore_ratio}")
    num_images, num_levels = len(gt_boxes), len(feature_sizes)
    device = gt_boxes[0].device if num_images else torch.device("cpu")
    r_center = (1 - center_ratio) / 2
    r_ignore = (1 - ignore_ratio) / 2
    targets = [torch.zeros(num_images, 1, h, w, device=device) for h, w in feature_sizes]
    weights = [torch.full((num_images, 1, h, w), -1.0, device=device) for h, w in feature_sizes]
    ignore = [torch.zeros(num_images, 1, h, w, dtype=torch.bool, device=device)
              for h, w in feature_sizes]
    min_size = math.log2(octave_base_scale * strides[0])
    for i, boxes in enumerate(gt_boxes):
        boxes = boxes[:, :4].float()
        scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
        levels = (scale.log2() - min_size + 0.5).floor().clamp(0, num_levels - 1).long()
        for box, level in zip(boxes, levels.tolist()):
            ix1, iy1, ix2, iy2 = _region(box / strides[level], r_ignore, feature_sizes[level])
            cx1, cy1, cx2, cy2 = _region(box / strides[level], r_center, feature_sizes[level])
            targets[level][i, 0, cy1:cy2 + 1, cx1:cx2 + 1] = 1
            weights[level][i, 0, iy1:iy2 + 1, ix1:ix2 + 1] = 0
            weights[level][i, 0, cy1:cy2 + 1, cx1:cx2 + 1] = 1
            for near in (level - 1, level + 1):
                if 0 <= near < num_levels:
                    x1, y1, x2, y2 = _region(box / strides[near], r_ignore, feature_sizes[near])
                    ignore[near][i, 0, y1:y2 + 1, x1:x2 + 1] = True
    for w, ign in zip(weights, ignore):
        w[(w < 0) & ign] = 0
        w[w < 0] = 0.1
    avg_factor = sum(num_images * h * w for h, w in feature_sizes) / 200
    return LocationTargets(tuple(targets), tuple(weights), avg_factor)


# ---------------------------------------------------------------------------- shape targets
class ApproxMaxIoUAssigner(MaxIoUAssigner):
    """Max-IoU assignment of squares where a square's IoU with a ground truth is the best IoU of
    its approximate anchors (mmdet ``ApproxMaxIoUAssigner``); then the rules of
    :class:`MaxIoUAssigner`. GA-RPN: 0.7 / 0.3 / 0.3; GA-RetinaNet: 0.5 / 0.4 / 0.4.

    With no ground truth every square is negative (mmdet v2; v1 raised).
    """

    def assign_approxs(
        self,
        approxs: Tensor,
        squares: Tensor,
        approxs_per_square: int,
        gt_boxes: Tensor,
        gt_ignore: Tensor | None = None,
    ) -> AssignResult:
        """Assign squares through their approximate anchors.

        Args:
            approxs: [N * A, 4] xyxy, the A approxs of each square contiguous.
            squares: [N, 4] xyxy squares (for ignore regions).
            approxs_per_square: A.
            gt_boxes: [G, 4] xyxy ground truth.
            gt_ignore: [M, 4] xyxy ignore regions, or None.

        Returns:
            :class:`AssignResult` over the N squares (no labels).
        """
        n = squares.shape[0]
        if approxs.shape[0] != n * approxs_per_square:
            raise ValueError(f"assign_approxs got {approxs.shape[0]} approxs for {n} squares "
                             f"of {approxs_per_square}")
        if n == 0 or gt_boxes.numel() == 0:
            return self.assign_wrt_overlaps(squares.new_zeros((gt_boxes.shape[0], n)))
        ious = box_iou(gt_boxes[:, :4].float(), approxs.float())  # [G, N*A]
        overlaps = ious.view(-1, n, approxs_per_square).max(dim=2).values  # [G, N]
        if (self.ignore_iof_thr > 0 and gt_ignore is not None and gt_ignore.numel() > 0):
            ignore_max = box_iof(squares.float(), gt_ignore.float()).max(dim=1).values
            overlaps[:, ignore_max > self.ignore_iof_thr] = -1
        return self.assign_wrt_overlaps(overlaps)


@dataclass(frozen=True)
class ShapeTargets:
    """Shape-branch targets of N squares of one image.

    Attributes:
        gt_boxes: float[N, 4] xyxy ground truth of each sampled positive square, 0 elsewhere.
        weights: float[N], 1 on sampled positive squares (the only ones the shape loss sees).
        num_pos: sampled positives.
        num_neg: sampled negatives (they count in the loss normaliser only).
    """

    gt_boxes: Tensor
    weights: Tensor
    num_pos: int
    num_neg: int


@torch.no_grad()
def shape_targets(
    approxs: Tensor,
    squares: Tensor,
    valid: Tensor,
    target: Target,
    assigner: ApproxMaxIoUAssigner,
    sampler: RandomSampler | None,
) -> ShapeTargets:
    """Shape targets of one image (mmdet v2 ``_ga_shape_target_single``).

    Args:
        approxs: [N * A, 4] xyxy approximate anchors, A per square, all levels.
        squares: [N, 4] xyxy squares, all levels.
        valid: bool[N] squares that may be trained (a location is valid if any approx is).
        target: ground truth (``boxes``, optional ``boxes_ignore``).
        assigner: approx max-IoU assigner.
        sampler: draws the trained squares (GA: 256, half positive); None keeps all.

    Returns:
        :class:`ShapeTargets` over the N squares.
    """
    n = squares.shape[0]
    a = approxs.shape[0] // max(n, 1)
    inside = valid.nonzero().flatten()
    inside_approxs = approxs.view(n, a, 4)[inside].reshape(-1, 4)
    gt = target["boxes"][:, :4].to(squares)
    ignore = target.get("boxes_ignore")
    assign = assigner.assign_approxs(inside_approxs, squares[inside], a, gt,
                                     None if ignore is None else ignore.to(squares))
    if sampler is None:
        pos_idx = (assign.gt_inds > 0).nonzero().flatten()
        neg_idx = (assign.gt_inds == 0).nonzero().flatten()
    else:
        if sampler.add_gt_as_proposals:
            raise ValueError("shape_targets needs a sampler with add_gt_as_proposals=False")
        sample = sampler.sample(assign, squares[inside], gt)
        pos_idx, neg_idx = sample.pos_inds, sample.neg_inds
    gt_boxes = squares.new_zeros((n, 4))
    weights = squares.new_zeros(n)
    pos = inside[pos_idx]
    if pos.numel():
        gt_boxes[pos] = gt[assign.gt_inds[pos_idx] - 1]
        weights[pos] = 1.0
    return ShapeTargets(gt_boxes, weights, int(pos.numel()), int(neg_idx.numel()))
