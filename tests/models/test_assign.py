"""Anchors, box coder, assigner and sampler against hand-computed mmdetection v2 values."""

from __future__ import annotations

import math

import pytest
import torch

from glimpse.assign import (
    AnchorGenerator,
    AssignResult,
    DeltaXYWHBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    box_iof,
)

R2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------------- anchors
def test_base_anchors_stride4_scale8_three_ratios():
    gen = AnchorGenerator(strides=[4, 8, 16, 32, 64], ratios=(0.5, 1.0, 2.0), scales=(8,))
    # ratio 0.5: w = 4 * sqrt(2) * 8 = 45.2548, h = 4 / sqrt(2) * 8 = 22.6274 (mmdet v2 tests)
    expected = torch.tensor([
        [-16 * R2, -8 * R2, 16 * R2, 8 * R2],
        [-16.0, -16.0, 16.0, 16.0],
        [-8 * R2, -16 * R2, 8 * R2, 16 * R2],
    ])
    torch.testing.assert_close(gen.base_anchors[0], expected)
    torch.testing.assert_close(gen.base_anchors[0], torch.tensor([
        [-22.6274, -11.3137, 22.6274, 11.3137],
        [-16.0, -16.0, 16.0, 16.0],
        [-11.3137, -22.6274, 11.3137, 22.6274]]), atol=1e-4, rtol=0)
    assert gen.num_base_anchors == 3
    # level 4 (stride 64): 16x larger
    torch.testing.assert_close(gen.base_anchors[4], expected * 16)


def test_ratio_major_ordering_and_center_offset():
    gen = AnchorGenerator(strides=[8], ratios=(0.5, 2.0), scales=(1, 2), center_offset=0.5)
    a = gen.base_anchors[0]
    wh = torch.stack((a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]), 1)
    # for each ratio, all scales
    torch.testing.assert_close(wh, torch.tensor([[8 * R2, 8 / R2], [16 * R2, 16 / R2],
                                                 [8 / R2, 8 * R2], [16 / R2, 16 * R2]]))
    torch.testing.assert_close((a[:, 0] + a[:, 2]) / 2, torch.full((4,), 4.0))


def test_grid_anchor_ordering_y_x_anchor():
    gen = AnchorGenerator(strides=[4], ratios=(0.5, 1.0, 2.0), scales=(8,))
    (anchors,) = gen.grid_anchors([(2, 3)])
    assert anchors.shape == (2 * 3 * 3, 4)
    # location (y=1, x=2), anchor 1 (square 32x32) centred at (8, 4)
    torch.testing.assert_close(anchors[(1 * 3 + 2) * 3 + 1],
                               torch.tensor([-8.0, -12.0, 24.0, 20.0]))
    # a slow loop in the same order
    slow = [gen.base_anchors[0][k] + torch.tensor([x * 4.0, y * 4.0, x * 4.0, y * 4.0])
            for y in range(2) for x in range(3) for k in range(3)]
    torch.testing.assert_close(anchors, torch.stack(slow))


def test_valid_flags_cut_padding_of_smaller_image():
    gen = AnchorGenerator(strides=[4, 8], ratios=(1.0,), scales=(8,))
    flags = gen.valid_flags([(8, 8), (4, 4)], pad_size=(20, 32))
    # stride 4: ceil(20/4)=5 valid rows of 8; stride 8: ceil(20/8)=3 rows of 4
    assert flags[0].view(8, 8)[:5].all() and not flags[0].view(8, 8)[5:].any()
    assert flags[1].view(4, 4)[:3].all() and not flags[1].view(4, 4)[3:].any()
    with pytest.raises(ValueError, match="anchor levels"):
        gen.grid_anchors([(8, 8)])


# ---------------------------------------------------------------------------------- box coder
def test_encode_known_deltas_and_stds():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    d = DeltaXYWHBoxCoder().encode(boxes, gt)
    torch.testing.assert_close(d, torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))
    d = DeltaXYWHBoxCoder(stds=(0.1, 0.1, 0.2, 0.2)).encode(boxes, gt)
    torch.testing.assert_close(d, torch.tensor([[5.0, 10.0, 0.0, math.log(2.0) / 0.2]]))


def test_encode_decode_round_trip_and_class_specific():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=g) * 50), 1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=g) * 50), 1)
    coder = DeltaXYWHBoxCoder(means=(0.01, -0.02, 0.0, 0.03), stds=(0.1, 0.1, 0.2, 0.2))
    deltas = coder.encode(boxes, gt)
    torch.testing.assert_close(coder.decode(boxes, deltas), gt, atol=1e-4, rtol=1e-5)
    # [N, 4k] deltas decode group-wise against the same box
    multi = coder.decode(boxes, torch.cat((deltas, torch.zeros_like(deltas)), 1))
    torch.testing.assert_close(multi[:, :4], gt, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(multi[:, 4:], coder.decode(boxes, torch.zeros_like(deltas)))


def test_decode_clips_and_clamps():
    coder = DeltaXYWHBoxCoder()
    box = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    out = coder.decode(box, torch.tensor([[0.0, 0.0, 100.0, 0.0]]), max_shape=(30, 40))
    # dw clamped to log(1000/16): width 10 * 62.5 = 625, clipped to [0, 40]
    torch.testing.assert_close(out, torch.tensor([[0.0, 10.0, 40.0, 20.0]]))
    out = coder.decode(box, torch.tensor([[0.0, 0.0, 100.0, 0.0]]))
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(625.0))
    assert coder.decode(box[:0], torch.zeros(0, 4)).shape == (0, 4)


# ---------------------------------------------------------------------------------- assigner
OVERLAPS = torch.tensor([
    [0.80, 0.40, 0.10, 0.00, 0.35],
    [0.20, 0.50, 0.25, 0.60, 0.36],
])


def test_assigner_rules_with_low_quality_matches():
    a = MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3)
    r = a.assign_wrt_overlaps(OVERLAPS, torch.tensor([3, 7]))
    # box0 >= 0.7 -> gt0; box2 < 0.3 -> neg; box3 is gt1's best match (0.6 >= 0.3) -> gt1;
    # box1 (0.5) and box4 (0.36) fall between the thresholds -> ignored
    assert r.gt_inds.tolist() == [1, -1, 0, 2, -1]
    assert r.labels.tolist() == [3, 0, 0, 7, 0]
    torch.testing.assert_close(r.max_overlaps, torch.tensor([0.8, 0.5, 0.25, 0.6, 0.36]))
    r = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=False).assign_wrt_overlaps(OVERLAPS)
    assert r.gt_inds.tolist() == [1, -1, 0, -1, -1]
    # min_pos_iou above gt1's best IoU: no low-quality match
    r = MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.65).assign_wrt_overlaps(OVERLAPS)
    assert r.gt_inds.tolist() == [1, -1, 0, -1, -1]
    # negative interval: only IoU in [0.1, 0.3) is negative
    r = MaxIoUAssigner(0.7, (0.26, 0.3), min_pos_iou=0.3).assign_wrt_overlaps(OVERLAPS)
    assert r.gt_inds.tolist() == [1, -1, -1, 2, -1]


def test_assigner_ties_assign_all_and_later_gt_wins():
    ov = torch.tensor([[0.6, 0.2, 0.6], [0.1, 0.4, 0.6]])
    r = MaxIoUAssigner(0.7, 0.3, 0.3, gt_max_assign_all=True).assign_wrt_overlaps(ov)
    # gt0 claims both boxes tied at its best 0.6 (0 and 2); gt1's best is also box 2, and the
    # later gt wins; box 1 (best IoU 0.4) is between the thresholds -> ignored
    assert r.gt_inds.tolist() == [1, -1, 2]
    ov = torch.tensor([[0.6, 0.2, 0.5], [0.1, 0.4, 0.55]])
    r = MaxIoUAssigner(0.7, 0.3, 0.3, gt_max_assign_all=False).assign_wrt_overlaps(ov)
    assert r.gt_inds.tolist() == [1, -1, 2]


def test_assigner_boxes_and_ignore_regions():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                          [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 9.0]])
    ignore = torch.tensor([[18.0, 18.0, 40.0, 40.0]])
    a = MaxIoUAssigner(0.5, 0.5, 0.5, ignore_iof_thr=0.5)
    r = a.assign(boxes, gt, torch.tensor([4]), ignore)
    assert r.gt_inds.tolist() == [1, -1, 0]
    assert r.labels.tolist() == [4, 0, 0]
    # ignore disabled (default -1): box 1 is an ordinary negative
    r = MaxIoUAssigner(0.5, 0.5, 0.5).assign(boxes, gt, None, ignore)
    assert r.gt_inds.tolist() == [1, 0, 0]
    torch.testing.assert_close(box_iof(boxes[1:2], ignore), torch.tensor([[1.0]]))


def test_assigner_empty_cases():
    a = MaxIoUAssigner(0.7, 0.3, 0.3)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 8.0, 9.0]])
    r = a.assign(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert r.gt_inds.tolist() == [0, 0] and r.labels.tolist() == [0, 0] and r.num_gts == 0
    r = a.assign(torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 5.0, 5.0]]))
    assert r.gt_inds.numel() == 0 and r.max_overlaps.numel() == 0


# ----------------------------------------------------------------------------------- sampler
def _assigned(num_boxes: int, num_pos: int, num_ignored: int = 0):
    gt_inds = torch.zeros(num_boxes, dtype=torch.long)
    gt_inds[:num_pos] = 1
    gt_inds[num_pos:num_pos + num_ignored] = -1
    labels = (gt_inds > 0).long() * 5
    return AssignResult(1, gt_inds, torch.zeros(num_boxes), labels)


@pytest.mark.parametrize("num_pos, exp_pos, exp_neg", [(30, 30, 226), (200, 128, 128), (0, 0, 256)])
def test_sampler_counts(num_pos, exp_pos, exp_neg):
    boxes = torch.rand(1000, 4) * 10
    gt = torch.tensor([[1.0, 1.0, 5.0, 5.0]])
    s = RandomSampler(256, 0.5, add_gt_as_proposals=False).sample(
        _assigned(1000, num_pos, 10), boxes, gt)
    assert s.num_pos == exp_pos and s.num_neg == exp_neg
    assert (s.pos_inds < num_pos).all() and (s.neg_inds >= num_pos + 10).all()
    assert torch.equal(s.pos_inds, s.pos_inds.sort().values)
    assert len(set(s.neg_inds.tolist())) == exp_neg
    torch.testing.assert_close(s.pos_boxes, boxes[s.pos_inds])
    assert (s.pos_gt_labels == 5).all() and (s.pos_assigned_gt_inds == 0).all()
    torch.testing.assert_close(s.pos_gt_boxes, gt.expand(exp_pos, 4))


def test_sampler_neg_pos_upper_bound_and_add_gt():
    boxes = torch.rand(100, 4) * 10
    gt = torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 9.0, 9.0]])
    s = RandomSampler(64, 0.25, neg_pos_ub=2, add_gt_as_proposals=False).sample(
        _assigned(100, 5), boxes, gt)
    assert s.num_pos == 5 and s.num_neg == 10
    assign = _assigned(100, 5)
    assign.num_gts = 2
    s = RandomSampler(64, 0.25).sample(assign, boxes, gt, torch.tensor([3, 4]))
    # the two gts are prepended as positives for themselves
    assert s.num_pos == 7 and s.num_neg == 57
    assert s.pos_is_gt.tolist() == [True, True] + [False] * 5
    torch.testing.assert_close(s.pos_boxes[:2], gt)
    assert s.pos_assigned_gt_inds[:2].tolist() == [0, 1]
    assert s.pos_gt_labels[:2].tolist() == [3, 4]
    assert s.boxes.shape == (64, 4)


def test_sampler_empty_gt_and_seeded():
    boxes = torch.rand(50, 4)
    r = MaxIoUAssigner(0.5, 0.5, 0.5).assign(boxes, torch.zeros(0, 4), torch.zeros(0).long())
    s = RandomSampler(32, 0.25).sample(r, boxes, torch.zeros(0, 4), torch.zeros(0).long())
    assert s.num_pos == 0 and s.num_neg == 32 and s.pos_gt_boxes.shape == (0, 4)
    torch.manual_seed(3)
    a = RandomSampler(32, 0.25).sample(_assigned(50, 0), boxes, torch.zeros(0, 4)).neg_inds
    torch.manual_seed(3)
    b = RandomSampler(32, 0.25).sample(_assigned(50, 0), boxes, torch.zeros(0, 4)).neg_inds
    assert torch.equal(a, b)
