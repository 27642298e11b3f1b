"""Plain metrics against hand-computed values: top-k accuracy, mIoU / pixel accuracy summed
over a dataset, PSNR, L1; empty and malformed inputs."""

from __future__ import annotations

import math

import pytest
import torch

from glimpse.engine.metrics import (
    SegmentationMeter,
    confusion_matrix,
    l1_error,
    mean_iou,
    pixel_accuracy,
    psnr,
    topk_accuracy,
)


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3), "top5": 1.0}
    assert topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == {
        "top1": 0.0, "top5": 0.0}  # fmt: skip


def test_mean_iou_and_pixel_accuracy_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=4)
    # labelled (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0): 4 of 6 correct
    assert cm.sum() == 6 and pixel_accuracy(cm) == pytest.approx(4 / 6)
    # class 0: TP 1, FP 1 (pixel (1,1)), FN 1 (pixel (0,1)) -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 1, FP 0, FN 1 -> 1/2;  class 3: absent
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert mean_iou(cm + confusion_matrix(pred, target, 4)) == pytest.approx(mean_iou(cm))
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="0..3"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), num_classes=4)


def test_psnr_and_l1_by_hand():
    target = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-6)  # MSE 0.01
    assert psnr((target + 0.1)[0], target[0]) == pytest.approx(20.0, abs=1e-6)
    noisy = target.clone()
    noisy[1] += 0.01  # per-image PSNR 20 and 40 dB -> mean 30
    noisy[0] += 0.1
    assert psnr(noisy, target) == pytest.approx(30.0, abs=1e-6)
    assert psnr(target * 255, target * 255 + 25.5, data_range=255) == pytest.approx(20.0)
    assert psnr(target, target) == math.inf
    assert l1_error(target + 0.25, target) == pytest.approx(0.25)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    shifted = target.clone()
    shifted[..., :4, :] += 0.5
    assert l1_error(shifted, target, mask) == pytest.approx(0.5)
    assert l1_error(shifted, target) == pytest.approx(0.25)


def test_segmentation_meter_sums_intersections_and_unions_over_images():
    meter = SegmentationMeter(num_classes=2)
    assert math.isnan(meter.compute()["mIoU"])  # nothing seen yet
    # image A: class 0 only, all 4 pixels right.  image B: 4 pixels of class 1, 1 predicted.
    meter.update(torch.zeros(2, 2), torch.zeros(2, 2))
    meter.update(torch.tensor([[1, 0], [0, 0]]), torch.ones(2, 2))
    # summed: class 0 I=4, U=4+3=7 -> 4/7; class 1 I=1, U=4 -> 1/4; pixels 5 of 8 right.
    # (averaging per image would give ((1) + (0 + 1/4) / 2) / 2 = 0.5625 instead)
    assert meter.compute() == {"mIoU": pytest.approx((4 / 7 + 1 / 4) / 2),
                               "aAcc": pytest.approx(5 / 8)}
    meter.update(torch.full((2, 2), 1), torch.full((2, 2), 255))  # unlabelled: no change
    assert meter.compute()["aAcc"] == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMeter(0)
