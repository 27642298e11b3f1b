"""Plain metrics of the later papers, free of COCO: top-k accuracy (classification), mIoU and
pixel accuracy (semantic segmentation), L1 and PSNR (inpainting).

Segmentation metrics are accumulated over a dataset, as mmsegmentation does: per-image
confusion matrices are summed (equivalently: intersections and unions per class are summed over
all images) and the ratio is taken once at the end, never averaged per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "topk_accuracy",
    "confusion_matrix",
    "mean_iou",
    "pixel_accuracy",
    "SegmentationMeter",
    "l1_error",
    "psnr",
]


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of samples whose label is among the ``k`` highest logits.

    Args:
        logits: [N, C] scores.
        labels: int64[N] in 0..C-1.
        ks: the k values (clamped to C).

    Returns:
        ``{"top1": ..., "top5": ...}`` in [0, 1] (0 for N = 0).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    n, c = logits.shape
    out: dict[str, float] = {}
    if n == 0:
        return {f"top{k}": 0.0 for k in ks}
    top = logits.topk(min(max(ks), c), dim=1).indices  # [N, max k]
    hits = top == labels[:, None]
    for k in ks:
        out[f"top{k}"] = hits[:, : min(k, c)].any(dim=1).float().mean().item()
    return out


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255
) -> Tensor:
    """Pixel confusion matrix: entry [t, p] counts pixels of class t predicted as p.

    Args:
        pred: int[...] predicted classes in 0..num_classes-1.
        target: int[...] same shape; ``ignore_index`` pixels are skipped.

    Returns:
        int64[num_classes, num_classes]; sum them over a dataset before :func:`mean_iou`.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if ((target < 0) | (target >= num_classes)).any() or ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError(f"class ids must lie in 0..{num_classes - 1} (or be {ignore_index})")
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> float:
    """Mean over classes of ``TP / (TP + FP + FN)``, skipping classes absent from both the
    prediction and the ground truth (mmsegmentation's nan-mean)."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    if not present.any():
        return math.nan
    return (tp[present] / union[present]).mean().item()


def pixel_accuracy(confusion: Tensor) -> float:
    """Correct pixels / labelled pixels (ignored pixels are not in the matrix)."""
    total = confusion.sum()
    return (confusion.diagonal().sum().double() / total).item() if total > 0 else math.nan


class SegmentationMeter:
    """mIoU and pixel accuracy over a dataset: sums each image's confusion matrix, so classes'
    intersections and unions are summed over all images before any ratio is taken.

    Args:
        num_classes: number of classes (ids 0..num_classes-1).
        ignore_index: label of unlabelled pixels (255, as in ADE20K / COCO-stuff maps).
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one image (or a batch): ``pred`` and ``target`` int[...] of the same shape."""
        self.confusion += confusion_matrix(pred, target, self.num_classes,
                                           ignore_index=self.ignore_index).cpu()

    def compute(self) -> dict[str, float]:
        """``{"mIoU": ..., "aAcc": ...}`` in [0, 1]; nan before any labelled pixel."""
        return {"mIoU": mean_iou(self.confusion), "aAcc": pixel_accuracy(self.confusion)}


def l1_error(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Mean absolute error; with ``mask`` (broadcastable, nonzero = counted) only there."""
    diff = (pred.double() - target.double()).abs()
    if mask is None:
        return diff.mean().item()
    weight = mask.to(diff.dtype).expand_as(diff)
    return (diff * weight).sum().item() / max(weight.sum().item(), 1.0)


def psnr(pred: Tensor, target: Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB.

    Args:
        pred, target: [C,H,W] (one image) or [B,C,H,W] (PSNR per image, then averaged).
        data_range: the value range (1 for images in [0, 1], 255 for uint8).

    Returns:
        dB; ``inf`` for identical images.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    batch = pred.reshape(1, -1) if pred.dim() == 3 else pred.reshape(pred.shape[0], -1)
    ref = target.reshape(batch.shape)
    mse = ((batch.double() - ref.double()) ** 2).mean(dim=1)
    values = 10.0 * torch.log10(data_range**2 / mse)
    return values.mean().item()
