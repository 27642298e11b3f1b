"""Losses as plain functions, with mmdetection v2's weighting and reduction semantics.

Every loss computes an element-wise loss, multiplies it by an optional ``weight`` (broadcast to
the element shape) and reduces it (:func:`weight_reduce`):

* ``reduction="mean"`` without ``avg_factor``: mean over all elements;
* ``reduction="mean"`` with ``avg_factor``: ``sum / (avg_factor + eps)``; the detectors use this
  to normalise by the number of sampled anchors / RoIs, not by the number of elements;
* ``reduction="sum"``: sum (an ``avg_factor`` is an error);
* ``reduction="none"``: the weighted element-wise loss.

Empty inputs give an exact, differentiable zero (``pred.sum() * 0``), so images without ground
truth train with regression losses that are exactly 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

__all__ = [
    "weight_reduce",
    "smooth_l1_loss",
    "l1_loss",
    "cross_entropy",
    "binary_cross_entropy",
    "sigmoid_focal_loss",
    "mask_cross_entropy",
    "accuracy",
    "bounded_iou_loss",
    "masked_l1_loss",
    "masked_tv_loss",
    "gram_matrix",
]

Reduction = Literal["mean", "sum", "none"]

# mmdet >= 2.18 adds float32 eps to avg_factor so that a zero factor gives 0 instead of nan
_EPS = torch.finfo(torch.float32).eps


def weight_reduce(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Weight an element-wise loss and reduce it (mmdet ``weight_reduce_loss``)."""
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if avg_factor is None:
        return loss.sum() if reduction == "sum" else loss.mean() if loss.numel() else loss.sum()
    if reduction == "sum":
        raise ValueError('avg_factor cannot be used with reduction="sum"')
    return loss.sum() / (avg_factor + _EPS)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Smooth L1 (Huber / beta): ``0.5 d^2 / beta`` below ``beta``, ``d - 0.5 beta`` above.

    ``beta = 0`` is exactly the L1 loss (mmdet v2's Faster R-CNN configs use L1 for both RPN
    and R-CNN regression, its Cascade configs SmoothL1 with beta 1/9 and 1).

    Args:
        pred: [N, 4] (any shape) predictions.
        target: same shape as ``pred``.
        beta: transition point, >= 0.
        weight: broadcastable element weights.
        reduction: "mean", "sum" or "none".
        avg_factor: normaliser replacing the element count of "mean".
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if target.numel() == 0:
        return pred.sum() * 0
    diff = (pred - target).abs()
    if beta == 0:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return weight_reduce(loss, weight, reduction, avg_factor)


def l1_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``|pred - target|`` with mmdet weighting (see :func:`smooth_l1_loss`)."""
    return smooth_l1_loss(pred, target, 0.0, weight, reduction, avg_factor)


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
    class_weight: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Softmax cross-entropy per sample, then mmdet weighting.

    Args:
        logits: [N, C] class logits.
        labels: int64[N] in 0..C-1 (``ignore_index`` entries contribute 0).
        weight: [N] per-sample weights.
        reduction: "mean", "sum" or "none".
        avg_factor: normaliser (R-CNN: the number of sampled RoIs).
        class_weight: [C] per-class weights (``F.cross_entropy``'s ``weight``).
        ignore_index: label value that is skipped.
    """
    if labels.numel() == 0:
        return logits.sum() * 0
    loss = F.cross_entropy(logits, labels, weight=class_weight, reduction="none",
                           ignore_index=ignore_index)
    return weight_reduce(loss, None if weight is None else weight.float(), reduction, avg_factor)


def binary_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Sigmoid binary cross-entropy with logits, element-wise, then mmdet weighting.

    Args:
        logits: any shape.
        targets: same shape, values in [0, 1] (e.g. one-hot foreground for the RPN).
        weight: broadcastable element weights (0 for anchors that were not sampled).
        reduction: "mean", "sum" or "none".
        avg_factor: normaliser (RPN: the number of sampled anchors in the batch).
    """
    if logits.numel() == 0:
        return logits.sum() * 0
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return weight_reduce(loss, None if weight is None else weight.float(), reduction, avg_factor)


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Focal loss (Lin et al., ICCV 2017) via ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        logits: [N, C] (any shape) logits.
        targets: same shape, one-hot targets in {0, 1} (all-zero rows are background).
        alpha: positive-class balance (0.25 in RetinaNet / GA's location branch).
        gamma: focusing exponent (2.0).
        weight: broadcastable element weights.
        reduction: "mean", "sum" or "none".
        avg_factor: normaliser (RetinaNet: the number of positive anchors).
    """
    if logits.numel() == 0:
        return logits.sum() * 0
    loss = _tv_sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma,
                                  reduction="none")
    return weight_reduce(loss, None if weight is None else weight.float(), reduction, avg_factor)


def mask_cross_entropy(
    mask_logits: Tensor,
    mask_targets: Tensor,
    labels: Tensor,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Per-pixel sigmoid cross-entropy on each RoI's own class channel (Mask R-CNN).

    Args:
        mask_logits: [R, K, M, M] logits, one channel per class (K = 1 for class-agnostic).
        mask_targets: [R, M, M] binary targets.
        labels: int64[R] channel of each RoI, 0-based (class label - 1; 0 if class-agnostic).
        reduction: "mean" (over all R * M * M pixels, mmdet's default), "sum" or "none".
        avg_factor: normaliser replacing the pixel count.
    """
    if mask_targets.numel() == 0 or mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(mask_logits.shape[0], device=labels.device), labels]
    loss = F.binary_cross_entropy_with_logits(picked, mask_targets.to(picked.dtype),
                                              reduction="none")  # [R, M, M]
    return weight_reduce(loss, None, reduction, avg_factor)


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in percent (mmdet's ``acc`` diagnostic); 0 for no samples."""
    if labels.numel() == 0:
        return logits.new_zeros(())
    return (logits.argmax(dim=1) == labels).float().mean() * 100.0


def bounded_iou_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 0.2,
    eps: float = 1e-3,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Bounded IoU loss (Tychsen-Smith & Petersson, CVPR 2018; Guided Anchoring's shape loss),
    as mmdet's ``bounded_iou_loss``.

    Per box, four bounds on the IoU with the target, each ``1 - bound`` smoothed like SmoothL1
    with ``beta`` (``0.5 x^2 / beta`` below ``beta``, ``x - 0.5 beta`` above)::

        dx: 1 - max((w_t - 2|dx|) / (w_t + 2|dx| + eps), 0)     (dy alike, with h_t)
        dw: 1 - min(w_t / (w_p + eps), w_p / (w_t + eps))       (dh alike)

    with ``dx`` the centre offset. The target's centre and size carry no gradient.

    Args:
        pred: [N, 4] xyxy predicted boxes.
        target: [N, 4] xyxy target boxes.
        beta: smoothing threshold (0.2 in GA).
        eps: keeps the ratios finite (1e-3).
        weight: [N, 4] (or broadcastable) element weights.
        reduction: "mean", "sum" or "none" (of the [N, 4] element losses).
        avg_factor: normaliser replacing the element count of "mean".
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if pred.shape != target.shape or (pred.dim() == 2 and pred.shape[-1] != 4):
        raise ValueError(f"bounded_iou_loss needs [N, 4] pred and target, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if target.numel() == 0:
        return pred.sum() * 0
    pred_w = pred[:, 2] - pred[:, 0]
    pred_h = pred[:, 3] - pred[:, 1]
    pred_cx = (pred[:, 0] + pred[:, 2]) * 0.5
    pred_cy = (pred[:, 1] + pred[:, 3]) * 0.5
    target = target.detach()
    target_w = target[:, 2] - target[:, 0]
    target_h = target[:, 3] - target[:, 1]
    dx = ((target[:, 0] + target[:, 2]) * 0.5 - pred_cx).abs()
    dy = ((target[:, 1] + target[:, 3]) * 0.5 - pred_cy).abs()
    loss_dx = 1 - ((target_w - 2 * dx) / (target_w + 2 * dx + eps)).clamp(min=0)
    loss_dy = 1 - ((target_h - 2 * dy) / (target_h + 2 * dy + eps)).clamp(min=0)
    loss_dw = 1 - torch.min(target_w / (pred_w + eps), pred_w / (target_w + eps))
    loss_dh = 1 - torch.min(target_h / (pred_h + eps), pred_h / (target_h + eps))
    loss = torch.stack((loss_dx, loss_dy, loss_dw, loss_dh), dim=-1)  # [N, 4]
    loss = torch.where(loss < beta, 0.5 * loss * loss / beta, loss - 0.5 * beta)
    return weight_reduce(loss, weight, reduction, avg_factor)


# ---------------------------------------------------------------- inpainting (mmediting semantics)


def masked_l1_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """L1 averaged over the pixels where ``mask`` is 1 (mmediting ``L1Loss`` with a weight):
    ``sum(|pred - target| * mask) / (sum of mask over the broadcast shape)``.

    Shapes: pred, target [B, C, H, W]; mask [B, 1 or C, H, W] in {0, 1}. Zero when the mask is
    empty.
    """
    weight = mask.to(pred.dtype).expand_as(pred)
    return ((pred - target).abs() * weight).sum() / (weight.sum() + 1e-12)


def masked_tv_loss(image: Tensor, mask: Tensor) -> Tensor:
    """Total variation inside ``mask`` (mmediting ``MaskedTVLoss``): mean L1 of vertical and
    horizontal neighbour differences where the first pixel of the pair is masked.

    Shapes: image [B, C, H, W]; mask [B, 1, H, W].
    """
    dy = masked_l1_loss(image[..., :-1, :], image[..., 1:, :], mask[..., :-1, :])
    dx = masked_l1_loss(image[..., :, :-1], image[..., :, 1:], mask[..., :, :-1])
    return dx + dy


def gram_matrix(features: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, C] Gram matrices normalised by ``C * H * W`` (the style loss of
    Gatys et al. as Partial Conv uses it)."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)
