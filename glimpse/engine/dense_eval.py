"""Evaluation of the dense-prediction models of the CARAFE paper over a dataset.

* :func:`evaluate_segmentation`: mIoU and pixel accuracy from one confusion matrix summed over
  every image (:class:`~glimpse.engine.metrics.SegmentationMeter`, mmseg / CSAIL semantics).
* :class:`InpaintingMeter` / :func:`evaluate_inpainting`: L1 (in %, mmediting
  ``MAE(scaling=100)``) and PSNR on the hole and on the whole completed image, and SSIM on the
  whole image (scikit-image ``structural_similarity``, Gaussian window, as Wang et al. 2004),
  each computed per image and averaged over images (mmediting's per-sample metrics).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glimpse.engine.metrics import SegmentationMeter, l1_error

__all__ = ["InpaintingMeter", "evaluate_inpainting", "evaluate_segmentation"]


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, *, batch_size: int = 1,
                          max_images: int | None = None) -> dict[str, float]:
    """``{"mIoU", "aAcc"}`` in [0, 1] of ``model`` (eval mode) over ``dataset`` items
    ``(image, {"sem_seg"})`` (images go to the model's device); the dataset gives
    ``num_classes`` and ``ignore_index``."""
    meter = SegmentationMeter(dataset.num_classes,
                              ignore_index=getattr(dataset, "ignore_index", 255))
    model.eval()
    device = _device_of(model)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        preds = model([im.to(device) for im, _ in items])
        for pred, (_, target) in zip(preds, items):
            meter.update(pred["labels"].cpu(), target["sem_seg"])
    return meter.compute()


class InpaintingMeter:
    """Per-image L1 (%), PSNR (dB) on the hole and the whole image, and whole-image SSIM,
    averaged over images. Images in [0, 1]; masks 1 = hole."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {k: [] for k in (
            "l1_hole", "l1_whole", "psnr_hole", "psnr_whole", "ssim")}

    def update(self, completed: Tensor, target: Tensor, masks: Tensor) -> None:
        """completed, target [B, 3, H, W]; masks [B, 1, H, W]."""
        from skimage.metrics import structural_similarity

        for c, t, m in zip(completed.double().cpu(), target.double().cpu(), masks.cpu()):
            hole = m.expand_as(c) > 0
            self.values["l1_whole"].append(100 * l1_error(c, t))
            self.values["l1_hole"].append(100 * l1_error(c, t, m))
            self.values["psnr_whole"].append(_psnr(c, t))
            self.values["psnr_hole"].append(_psnr(c[hole], t[hole]) if hole.any() else math.nan)
            self.values["ssim"].append(float(structural_similarity(
                c.permute(1, 2, 0).numpy(), t.permute(1, 2, 0).numpy(), channel_axis=2,
                data_range=1.0, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False)))

    def compute(self) -> dict[str, float]:
        """Means over images (nan before any image; hole metrics skip images without a hole)."""
        out = {}
        for key, vals in self.values.items():
            finite = [v for v in vals if not math.isnan(v)]
            out[key] = sum(finite) / len(finite) if finite else math.nan
        return out


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (CPU for a model without parameters)."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _psnr(pred: Tensor, target: Tensor) -> float:
    mse = ((pred - target) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.no_grad()
def evaluate_inpainting(model: nn.Module, dataset, *, batch_size: int = 8,
                        max_images: int | None = None) -> dict[str, float]:
    """:class:`InpaintingMeter` of ``model`` (eval mode) over ``(image, mask)`` items."""
    meter = InpaintingMeter()
    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        images = torch.stack([im for im, _ in items])
        masks = torch.stack([m for _, m in items])
        device = _device_of(model)
        completed = model(images.to(device), masks.to(device))["completed"]
        meter.update(completed, images, masks)
    return meter.compute()
