"""Losses against torch / formula references, with mmdet's weighting and avg_factor rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glimpse import losses


def test_smooth_l1_matches_torch_and_formula():
    pred, target = torch.randn(20, 4), torch.randn(20, 4)
    for beta in (1.0, 1 / 9):
        torch.testing.assert_close(losses.smooth_l1_loss(pred, target, beta),
                                   F.smooth_l1_loss(pred, target, beta=beta))
    # hand value: d = 0.05 < beta=0.1 -> 0.5 * 0.0025 / 0.1; d = 2 -> 2 - 0.05
    got = losses.smooth_l1_loss(torch.tensor([0.05, 2.0]), torch.zeros(2), 0.1, reduction="none")
    torch.testing.assert_close(got, torch.tensor([0.0125, 1.95]))
    torch.testing.assert_close(losses.l1_loss(pred, target), (pred - target).abs().mean())
    with pytest.raises(ValueError):
        losses.smooth_l1_loss(pred, target, -1.0)


def test_weight_and_avg_factor():
    pred, target = torch.randn(10, 4), torch.randn(10, 4)
    w = torch.zeros(10, 4)
    w[:3] = 1
    got = losses.l1_loss(pred, target, weight=w, avg_factor=7)
    torch.testing.assert_close(got, (pred - target)[:3].abs().sum() / 7)
    assert losses.l1_loss(pred, target, weight=w, reduction="sum").item() == pytest.approx(
        (pred - target)[:3].abs().sum().item(), rel=1e-6)
    with pytest.raises(ValueError):
        losses.l1_loss(pred, target, avg_factor=2, reduction="sum")
    # a zero avg_factor with zero weights gives 0, not nan (mmdet's eps)
    assert losses.l1_loss(pred, target, weight=torch.zeros(10, 4), avg_factor=0).item() == 0


def test_empty_inputs_give_exact_zero_with_grad():
    pred = torch.zeros(0, 4, requires_grad=True)
    for loss in (losses.smooth_l1_loss(pred, torch.zeros(0, 4), 1.0),
                 losses.l1_loss(pred, torch.zeros(0, 4), avg_factor=5),
                 losses.binary_cross_entropy(pred, torch.zeros(0, 4)),
                 losses.sigmoid_focal_loss(pred, torch.zeros(0, 4)),
                 losses.cross_entropy(torch.zeros(0, 3, requires_grad=True),
                                      torch.zeros(0, dtype=torch.long)),
                 losses.mask_cross_entropy(torch.zeros(0, 2, 4, 4, requires_grad=True),
                                           torch.zeros(0, 4, 4), torch.zeros(0).long())):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


def test_cross_entropy_and_bce():
    logits, labels = torch.randn(12, 5), torch.randint(0, 5, (12,))
    torch.testing.assert_close(losses.cross_entropy(logits, labels),
                               F.cross_entropy(logits, labels))
    w = torch.ones(12)
    w[6:] = 0
    torch.testing.assert_close(losses.cross_entropy(logits, labels, w, avg_factor=6),
                               F.cross_entropy(logits[:6], labels[:6]), rtol=1e-5, atol=1e-6)
    x, t = torch.randn(30), (torch.rand(30) > 0.5).float()
    ref = -(t * torch.log(torch.sigmoid(x)) + (1 - t) * torch.log(1 - torch.sigmoid(x)))
    torch.testing.assert_close(losses.binary_cross_entropy(x, t, avg_factor=10), ref.sum() / 10)


def test_sigmoid_focal_formula():
    x = torch.tensor([2.0, -1.0])
    t = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(x)
    ref = torch.stack((-0.25 * (1 - p[0]) ** 2 * torch.log(p[0]),
                       -0.75 * p[1] ** 2 * torch.log(1 - p[1])))
    torch.testing.assert_close(losses.sigmoid_focal_loss(x, t, reduction="none"), ref)
    torch.testing.assert_close(losses.sigmoid_focal_loss(x, t, avg_factor=1), ref.sum())


def test_mask_cross_entropy_picks_label_channel():
    logits = torch.randn(3, 4, 5, 5)
    targets = (torch.rand(3, 5, 5) > 0.5).float()
    labels = torch.tensor([2, 0, 3])
    slow = sum(F.binary_cross_entropy_with_logits(logits[i, labels[i]], targets[i],
                                                  reduction="sum") for i in range(3)) / 75
    torch.testing.assert_close(losses.mask_cross_entropy(logits, targets, labels), slow)


def test_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert losses.accuracy(logits, torch.tensor([0, 1, 1, 1])).item() == pytest.approx(75.0)
    assert math.isfinite(losses.accuracy(logits[:0], torch.zeros(0).long()).item())
