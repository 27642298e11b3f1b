"""The shared anchor-target function on a hand-made 3x3 grid: which anchors become positive,
negative, ignored or stay untrained (padding), their labels and their encoded deltas."""

from __future__ import annotations

import math

import pytest
import torch

from glimpse.assign import (
    AnchorGenerator,
    DeltaXYWHBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    anchor_targets,
)

# One level, stride 16: 32x32 anchors centred on (16x, 16y), index = 3y + x:
#   0 [-16,-16,16,16]  1 [0,-16,32,16]  2 [16,-16,48,16]
#   3 [-16,0,16,32]    4 [0,0,32,32]    5 [16,0,48,32]
#   6 [-16,16,16,48]   7 [0,16,32,48]   8 [16,16,48,48]
# Ground truth A = [18, 16, 50, 48] (label 3) is anchor 8 moved 2 px right: IoU 30*32 / 1088
# = 0.882. B = [0, 0, 24, 32] (label 2) is anchor 4 cut to 24 px wide: IoU 768 / 1024 = 0.75.
# Best IoUs of the others: 0: 1/6, 1: 3/11, 2: 1/13, 3: 0.4 (B), 5: 0.306 (A), 6: 1/6,
# 7: 0.28 (A). With negatives below 0.3 and positives from 0.5, anchors 3 and 5 fall between
# (ignored). The crowd region [24, -20, 60, 20] covers 75% of anchor 2 (ignored with
# ignore_iof_thr 0.5), and anchor 6 is marked invalid (padding).
GEN = AnchorGenerator(strides=[16], ratios=(1.0,), scales=(2,))
ANCHORS = GEN.grid_anchors([(3, 3)])[0]
VALID = torch.tensor([True] * 6 + [False] + [True] * 2)
TARGET = {"boxes": torch.tensor([[18.0, 16.0, 50.0, 48.0], [0.0, 0.0, 24.0, 32.0]]),
          "labels": torch.tensor([3, 2]),
          "boxes_ignore": torch.tensor([[24.0, -20.0, 60.0, 20.0]])}
CODER = DeltaXYWHBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))


def _assigner(ignore_iof_thr: float = 0.5) -> MaxIoUAssigner:
    return MaxIoUAssigner(0.5, 0.3, min_pos_iou=0.0, ignore_iof_thr=ignore_iof_thr)


def test_hand_made_positives_negatives_ignored_and_deltas():
    t = anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER)
    assert t.labels.tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 3]
    # trained: negatives 0, 1, 7 and positives 4, 8; ignored 2 (crowd), 3, 5 (between the
    # thresholds); 6 invalid
    assert t.label_weights.tolist() == [1, 1, 0, 0, 1, 0, 0, 1, 1]
    assert (t.num_pos, t.num_neg) == (2, 3)
    expected = torch.zeros(9, 4)
    # B from anchor 4: dx = (12 - 16) / 32, dw = log(24 / 32); divided by the stds
    expected[4] = torch.tensor([-0.125 / 0.1, 0.0, math.log(0.75) / 0.2, 0.0])
    # A from anchor 8: dx = (34 - 32) / 32
    expected[8] = torch.tensor([0.0625 / 0.1, 0.0, 0.0, 0.0])
    torch.testing.assert_close(t.box_targets, expected)
    assert t.box_weights.sum(1).tolist() == [0, 0, 0, 0, 4, 0, 0, 0, 4]


def test_without_ignore_regions_the_crowd_anchor_is_negative():
    t = anchor_targets(ANCHORS, VALID, TARGET, _assigner(ignore_iof_thr=-1), CODER)
    assert t.label_weights.tolist() == [1, 1, 1, 0, 1, 0, 0, 1, 1]


def test_class_agnostic_labels_every_positive_one():
    t = anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER, class_agnostic=True)
    assert t.labels.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_sampler_draws_the_trained_anchors():
    torch.manual_seed(0)
    t = anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER,
                       sampler=RandomSampler(2, 0.5, add_gt_as_proposals=False))
    assert (t.num_pos, t.num_neg) == (1, 1) and t.label_weights.sum() == 2
    (pos,) = (t.labels > 0).nonzero().flatten().tolist()
    (neg,) = ((t.label_weights > 0) & (t.labels == 0)).nonzero().flatten().tolist()
    assert pos in (4, 8) and neg in (0, 1, 7)
    assert t.box_weights.sum(1).nonzero().flatten().tolist() == [pos]
    with pytest.raises(ValueError, match="add_gt_as_proposals"):
        anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER,
                       sampler=RandomSampler(2, 0.5, add_gt_as_proposals=True))


def test_image_without_ground_truth_is_all_negative():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "boxes_ignore": TARGET["boxes_ignore"]}
    t = anchor_targets(ANCHORS, VALID, empty, _assigner(), CODER)
    assert t.labels.sum() == 0 and t.num_pos == 0 and t.num_neg == 8
    assert t.label_weights.tolist() == VALID.float().tolist()
    assert t.box_targets.abs().sum() == 0 and t.box_weights.sum() == 0


def test_allowed_border_drops_anchors_crossing_the_image():
    # 0 px of slack: x1, y1 >= 0 and x2, y2 < 48 (strict, mmdet) in a 48x48 image leave
    # anchor 4 alone; both ground truths claim it as their best candidate, the later one wins
    t = anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER, image_size=(48, 48),
                       allowed_border=0)
    assert t.label_weights.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert t.labels.tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 0]
    # 1 px of slack also admits anchors 5, 7 and 8 (x2 or y2 = 48)
    t = anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER, image_size=(48, 48),
                       allowed_border=1)
    assert t.label_weights.tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="image_size"):
        anchor_targets(ANCHORS, VALID, TARGET, _assigner(), CODER, allowed_border=0)
