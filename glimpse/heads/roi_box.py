"""R-CNN box head (mmdetection's ``Shared2FCBBoxHead``): targets, losses, refinement and
detection post-processing, kept apart so that cascade stages reuse them.

Class indices follow glimpse's labels: classifier output 0 is background and 1..K are the
foreground classes (mmdet v2 puts background last; the parameter count is the same). A
class-specific regressor has ``4K`` outputs, class ``k`` at columns ``4(k-1) .. 4k-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from glimpse.assign import DeltaXYWHBoxCoder, SamplingResult
from glimpse.losses import accuracy, cross_entropy, smooth_l1_loss

__all__ = ["RCNNTrainConfig", "RCNNTestConfig", "BoxHead", "multiclass_nms"]


@dataclass(frozen=True)
class RCNNTrainConfig:
    """Proposal assignment and sampling of one R-CNN stage (mmdet v2 ``train_cfg.rcnn``).

    Defaults: Faster / Mask R-CNN (IoU 0.5, 512 RoIs, a quarter positive, ground truths added
    as proposals; ``match_low_quality=False`` as in the v2 configs). Cascade stages raise the
    three IoU thresholds to 0.6 and 0.7.
    """

    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.5
    min_pos_iou: float = 0.5
    match_low_quality: bool = False
    ignore_iof_thr: float = -1.0
    num_samples: int = 512
    pos_fraction: float = 0.25
    neg_pos_ub: float = -1
    add_gt_as_proposals: bool = True
    mask_size: int = 28


@dataclass(frozen=True)
class RCNNTestConfig:
    """Detection post-processing (mmdet v2 ``test_cfg.rcnn``): score threshold 0.05 (HTC and
    GA-Faster use 0.001), class-wise NMS at IoU 0.5, 100 detections per image, masks
    binarised at 0.5."""

    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_image: int = 100
    mask_threshold: float = 0.5


def multiclass_nms(
    boxes: Tensor, scores: Tensor, score_thr: float, nms_iou: float, max_num: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise NMS over per-class boxes (mmdet ``multiclass_nms``).

    Args:
        boxes: [R, 4K] class-specific or [R, 4] shared xyxy boxes.
        scores: [R, K + 1] probabilities, column 0 background.
        score_thr: keep (box, class) pairs scoring strictly above this.
        nms_iou: IoU threshold of the per-class NMS.
        max_num: keep at most this many detections (<= 0: all).

    Returns:
        ``(boxes [D, 4], scores [D], labels int64[D] in 1..K)``, by decreasing score.
    """
    r, num_classes = scores.shape[0], scores.shape[1] - 1
    if boxes.shape[1] == 4:
        boxes = boxes[:, None].expand(r, num_classes, 4)
    else:
        boxes = boxes.view(r, num_classes, 4)
    fg = scores[:, 1:]
    labels = torch.arange(1, num_classes + 1, device=scores.device).expand(r, num_classes)
    keep = fg > score_thr
    boxes, fg, labels = boxes[keep], fg[keep], labels[keep]
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), fg, labels
    order = batched_nms(boxes, fg, labels, nms_iou)
    if max_num > 0:
        order = order[:max_num]
    return boxes[order], fg[order], labels[order]


class BoxHead(nn.Module):
    """Flatten, ``num_fcs`` x (FC + ReLU), then a softmax classifier (K + 1) and a regressor.

    Args:
        num_classes: K foreground classes.
        in_channels: channels of the pooled RoI features.
        roi_size: side of the pooled RoI features (7).
        fc_channels: width of the shared FCs (1024).
        num_fcs: number of shared FCs (2, mmdet ``Shared2FCBBoxHead``).
        class_agnostic: one box per RoI (4 outputs, cascade stages) instead of one per class.
        target_stds: stds of the box coder (0.1, 0.1, 0.2, 0.2 for a single-stage R-CNN;
            cascade stages shrink them as their proposals get better).
        target_means: means of the box coder.
        box_loss_beta: SmoothL1 beta; 0 is exactly L1 (mmdet v2/v3 Faster / Mask R-CNN use
            L1, Cascade R-CNN and HTC SmoothL1 with beta 1).
        loss_cls_weight: weight of the classification loss.
        loss_box_weight: weight of the regression loss.
    """

    def __init__(
        self,
        num_classes: int = 80,
        in_channels: int = 256,
        roi_size: int = 7,
        fc_channels: int = 1024,
        num_fcs: int = 2,
        class_agnostic: bool = False,
        target_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        box_loss_beta: float = 0.0,
        loss_cls_weight: float = 1.0,
        loss_box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1 or num_fcs < 1:
            raise ValueError(f"need num_classes >= 1 and num_fcs >= 1, got {num_classes}, "
                             f"{num_fcs}")
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.coder = DeltaXYWHBoxCoder(target_means, target_stds)
        self.box_loss_beta = box_loss_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_box_weight = loss_box_weight
        dims = [in_channels * roi_size * roi_size] + [fc_channels] * num_fcs
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.cls = nn.Linear(fc_channels, num_classes + 1)
        self.reg = nn.Linear(fc_channels, 4 if class_agnostic else 4 * num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform shared FCs, Normal(0, 0.01) classifier, Normal(0, 0.001) regressor,
        zero biases (mmdet v2 ``ConvFCBBoxHead`` / ``BBoxHead`` init)."""
        for fc in self.fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """[R, C, S, S] RoI features -> (logits [R, K + 1], deltas [R, 4K] or [R, 4])."""
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.cls(x), self.reg(x)

    def get_targets(self, samples: Sequence[SamplingResult]) -> tuple[Tensor, Tensor]:
        """Targets of the sampled RoIs, in the order of ``SamplingResult.boxes`` per image.

        Returns:
            ``(labels int64[R], box_targets [R, 4])``: labels 1..K on positives and 0 on
            negatives; encoded deltas on positives and 0 elsewhere.
        """
        labels, targets = [], []
        for s in samples:
            lab = s.pos_boxes.new_zeros(s.num_pos + s.num_neg, dtype=torch.long)
            tgt = s.pos_boxes.new_zeros((s.num_pos + s.num_neg, 4))
            if s.num_pos:
                lab[: s.num_pos] = s.pos_gt_labels
                tgt[: s.num_pos] = self.coder.encode(s.pos_boxes, s.pos_gt_boxes)
            labels.append(lab)
            targets.append(tgt)
        return torch.cat(labels), torch.cat(targets)

    def select_deltas(self, deltas: Tensor, labels: Tensor) -> Tensor:
        """[R, 4] deltas of each RoI's class (labels 1..K); class-agnostic heads pass through."""
        if self.class_agnostic:
            return deltas
        per_class = deltas.view(deltas.shape[0], self.num_classes, 4)
        idx = (labels - 1).clamp(min=0)
        return per_class[torch.arange(deltas.shape[0], device=deltas.device), idx]

    def loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, box_targets: Tensor
             ) -> dict[str, Tensor]:
        """Cross-entropy over all sampled RoIs and box regression on the positives.

        Both are normalised by the number of sampled RoIs (mmdet v2 ``BBoxHead.loss``: the
        regression's ``avg_factor`` is the RoI count, not the positive count).

        Returns:
            ``loss_cls``, ``loss_box`` (exactly 0 without positives) and ``stats_acc``.
        """
        num = max(labels.numel(), 1)
        loss_cls = cross_entropy(logits, labels, avg_factor=num)
        pos = labels > 0
        if pos.any():
            pred = self.select_deltas(deltas[pos], labels[pos])
            loss_box = smooth_l1_loss(pred, box_targets[pos], self.box_loss_beta,
                                      avg_factor=num)
        else:
            loss_box = deltas.sum() * 0
        return {
            "loss_cls": loss_cls * self.loss_cls_weight,
            "loss_box": loss_box * self.loss_box_weight,
            "stats_acc": accuracy(logits.detach(), labels),
        }

    def refine(self, boxes: Tensor, deltas: Tensor, labels: Tensor,
               image_size: tuple[int, int]) -> Tensor:
        """Regress RoIs by their (predicted or assigned) class: [R, 4] -> [R, 4], clipped
        (mmdet ``regress_by_class``)."""
        return self.coder.decode(boxes, self.select_deltas(deltas, labels), max_shape=image_size)

    @torch.no_grad()
    def predict(
        self,
        boxes: Sequence[Tensor],
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        cfg: RCNNTestConfig,
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Final detections per image: softmax, decode every class, class-wise NMS.

        Args:
            boxes: per image, [R_i, 4] xyxy RoIs.
            logits: per image, [R_i, K + 1] class logits (cascades pass the stage average).
            deltas: per image, [R_i, 4K] or [R_i, 4] deltas.
            image_sizes: per image, (height, width) to clip to.
            cfg: thresholds.

        Returns:
            Per image ``(boxes [D, 4], scores [D], labels int64[D])``.
        """
        out = []
        for b, lg, d, size in zip(boxes, logits, deltas, image_sizes):
            scores = F.softmax(lg, dim=-1)
            decoded = self.coder.decode(b, d, max_shape=size)
            out.append(multiclass_nms(decoded, scores, cfg.score_thr, cfg.nms_iou,
                                      cfg.max_per_image))
        return out
