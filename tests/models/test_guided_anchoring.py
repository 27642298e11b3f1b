"""Guided Anchoring: exact mmdetection parameter counts, anchors and targets against hand-computed
examples, the bounded IoU loss by hand, masked inference against dense convolution at the kept
locations, skipped levels, empty ground truth, and a train step that reaches every branch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glimpse import zoo
from glimpse.assign import (
    ApproxMaxIoUAssigner,
    DeltaXYWHBoxCoder,
    RandomSampler,
    approx_anchor_generator,
    guided_anchors,
    location_targets,
    shape_targets,
    square_anchor_generator,
)
from glimpse.detectors.guided_anchoring import GA_RCNN
from glimpse.heads.base import DenseHead, ImageAnchors
from glimpse.heads.guided_anchor import (
    GAOutputs,
    GARetinaHead,
    GARPNHead,
    GuidedAnchoring,
)
from glimpse.heads.retina import RetinaTestConfig
from glimpse.layers import FeatureAdaption
from glimpse.losses import bounded_iou_loss

# mmdetection 3.3.0 (../shared/tools/mmdet-oracle/README.md; ga-fast-rcnn is the caffe config,
# whose parameters equal the pytorch-style one's)
MMDET_PARAMS = {
    "ga_rpn_r50_fpn": 28_034_520,
    "ga_faster_rcnn_r50_fpn": 42_341_225,
    "ga_fast_rcnn_r50_fpn": 41_159_121,
    "ga_retinanet_r50_fpn": 37_600_439,
}
C = 8
RPN_STRIDES = (4, 8, 16, 32, 64)
RETINA_STRIDES = (8, 16, 32, 64, 128)
WITH_GT = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 2.0, 60.0, 20.0]]),
           "labels": torch.tensor([1, 3])}
NO_GT = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
PAD_SIZES = [(64, 64), (32, 64)]
IMAGE_SIZES = [(60, 64), (30, 50)]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _features(strides, batch=2, size=64, channels=C, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(batch, channels, -(-size // s), -(-size // s)) for s in strides]


def _rpn_head(**kwargs):
    torch.manual_seed(0)
    return GARPNHead(C, **kwargs)


def _retina_head(**kwargs):
    torch.manual_seed(0)
    return GARetinaHead(3, C, C, 1, anchoring=GuidedAnchoring(
        strides=RETINA_STRIDES, octave_base_scale=4.0, anchor_stds=(1.0,) * 4,
        target_stds=(1.0,) * 4), test_cfg=RetinaTestConfig(score_thr=0.0), **kwargs)


HEADS = {"ga_rpn": (RPN_STRIDES, _rpn_head), "ga_retina": (RETINA_STRIDES, _retina_head)}


# ------------------------------------------------------------------------------ param counts
@pytest.mark.parametrize("name", sorted(MMDET_PARAMS))
def test_parameter_counts_match_mmdet(name):
    with torch.device("meta"):
        model = zoo.build(name, 80)
    assert _count(model) == MMDET_PARAMS[name]


def test_head_parameter_breakdown():
    with torch.device("meta"):
        assert _count(GARPNHead(256)) == 1_182_104
        assert _count(GARetinaHead(80)) == 6_094_967
        fa = FeatureAdaption(256, 256)
    assert _count(fa.conv_offset) == 144 and _count(fa.conv_adaption) == 589_824
    assert fa.conv_adaption.bias is None


def test_zoo_rows():
    for family in ("ga_rpn", "ga_faster_rcnn", "ga_fast_rcnn", "ga_retinanet"):
        for backbone in ("r50", "slim"):
            assert f"{family}_{backbone}_fpn" in zoo.names()
    assert zoo.base_lr("ga_retinanet_r50_fpn") == 0.01
    assert zoo.base_lr("ga_faster_rcnn_r50_fpn") == 0.02
    assert zoo.MODELS["ga_retinanet_slim_fpn"].defaults == {"fpn_channels": 64,
                                                            "tower_init": "kaiming"}


def test_ga_rcnn_settings():
    model = zoo.build("ga_faster_rcnn_slim_fpn", 3)
    assert model.rpn_head.train_proposals.max_per_image == 300
    assert model.rpn_head.test_proposals.max_per_image == 300
    roi = model.roi_head
    # the slim row samples the slim recipe's 128 RoIs; mmdet's GA configs (the R-50 rows) 256
    assert roi.train_cfgs[0].pos_iou_thr == 0.6 and roi.train_cfgs[0].num_samples == 128
    assert GA_RCNN.train.num_samples == 256
    assert zoo.MODELS["ga_faster_rcnn_r50_fpn"].defaults == {}
    assert roi.test_cfg.score_thr == 1e-3
    assert roi.box_heads[0].coder.stds == (0.05, 0.05, 0.1, 0.1)
    with pytest.raises(ValueError, match="anchoring"):
        zoo.build("ga_rpn_slim_fpn", rpn_head=GARPNHead(64), anchoring=GuidedAnchoring())


# ---------------------------------------------------------------------------------- anchors
def test_approx_and_square_anchor_grids_by_hand():
    approx = approx_anchor_generator((4,), octave_base_scale=8, scales_per_octave=3)
    assert approx.num_base_anchors == 9
    base = approx.base_anchors[0]
    # ratio 0.5 (h/w), scale 8: w = 4 * 8 * sqrt(2) = 45.255, h = 4 * 8 / sqrt(2) = 22.627
    assert torch.allclose(base[0], torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137]),
                          atol=1e-4)
    # ratio 1, third octave scale 8 * 2^(2/3) = 12.699: side 50.797
    assert torch.allclose(base[5], torch.tensor([-25.3984, -25.3984, 25.3984, 25.3984]),
                          atol=1e-4)
    square = square_anchor_generator((4, 8), octave_base_scale=8)
    grid = square.grid_anchors([(2, 3), (1, 2)])
    assert grid[0].shape == (6, 4) and grid[1].shape == (2, 4)
    # location (y=1, x=2) of stride 4: the 32-px square shifted by (8, 4)
    assert grid[0][5].tolist() == [-8.0, -12.0, 24.0, 20.0]
    assert grid[1][1].tolist() == [-24.0, -32.0, 40.0, 32.0]
    # a guided anchor keeps the square's centre: dw = log(2) / 0.14 doubles the width
    coder = DeltaXYWHBoxCoder(stds=(0.07, 0.07, 0.14, 0.14))
    anchor = guided_anchors(torch.tensor([[-16.0, -16.0, 16.0, 16.0]]),
                            torch.tensor([[math.log(2) / 0.14, 0.0]]), coder)
    assert torch.allclose(anchor, torch.tensor([[-32.0, -16.0, 32.0, 16.0]]), atol=1e-4)


def test_location_targets_by_hand():
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 64x64 batch on strides 4..64
    # sqrt(32 * 32) = 32 -> level 0; on it the box is (2, 2, 10, 10)
    t = location_targets([torch.tensor([[8.0, 8.0, 40.0, 40.0]])], sizes, RPN_STRIDES, 8.0)
    expected_t = torch.zeros(16, 16)
    expected_t[5:8, 5:8] = 1  # centre: round(0.6*2 + 0.4*10) = 5 .. round(0.4*2 + 0.6*10) = 7
    expected_w = torch.full((16, 16), 0.1)
    expected_w[4:9, 4:9] = 0  # ignore: round(0.75*2 + 0.25*10) = 4 .. 8
    expected_w[5:8, 5:8] = 1
    assert torch.equal(t.targets[0][0, 0], expected_t)
    assert torch.equal(t.weights[0][0, 0], expected_w)
    # the adjacent level ignores the ignore box: (1, 1, 5, 5) -> 2 .. 4
    expected_w1 = torch.full((8, 8), 0.1)
    expected_w1[2:5, 2:5] = 0
    assert torch.equal(t.weights[1][0, 0], expected_w1)
    assert all(float(x.sum()) == 0 for x in t.targets[1:])
    assert all(torch.all(w == 0.1) for w in t.weights[2:])
    assert t.avg_factor == pytest.approx((256 + 64 + 16 + 4 + 1) / 200)

    # sqrt(100 * 100) = 100 -> floor(log2(100 / 32) + 0.5) = 2; centre 3..4 on stride 16
    t = location_targets([torch.tensor([[10.0, 10.0, 110.0, 110.0]]), torch.zeros(0, 4)],
                         [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)], RPN_STRIDES, 8.0)
    assert [int(x[0].sum()) for x in t.targets] == [0, 0, 4, 0, 0]
    assert t.targets[2][0, 0, 3:5, 3:5].eq(1).all()
    # the image without ground truth: every location a down-weighted negative
    assert all(torch.all(w[1] == 0.1) and float(x[1].sum()) == 0
               for x, w in zip(t.targets, t.weights))


def test_approx_max_iou_assigner_and_shape_targets_by_hand():
    # two squares with two approxs each; the first square's second approx is the ground truth
    approxs = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0],
                            [50.0, 50.0, 60.0, 60.0], [40.0, 50.0, 70.0, 60.0]])
    squares = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 20.0, 10.0]])
    assigner = ApproxMaxIoUAssigner(0.7, 0.3, 0.3)
    result = assigner.assign_approxs(approxs, squares, 2, gt)
    assert result.gt_inds.tolist() == [1, 0]
    assert result.max_overlaps.tolist() == [1.0, 0.0]
    # the square alone has IoU 0.5 with the ground truth
    assert assigner.assign(squares, gt, None).max_overlaps.tolist() == [0.5, 0.0]
    st = shape_targets(approxs, squares, torch.tensor([True, True]), {"boxes": gt}, assigner,
                       RandomSampler(256, 0.5, add_gt_as_proposals=False))
    assert st.weights.tolist() == [1.0, 0.0] and (st.num_pos, st.num_neg) == (1, 1)
    assert st.gt_boxes[0].tolist() == gt[0].tolist()
    # an invalid location is never a target
    st = shape_targets(approxs, squares, torch.tensor([False, True]), {"boxes": gt}, assigner,
                       None)
    assert st.weights.tolist() == [0.0, 0.0] and st.num_neg == 1
    # no ground truth: every square negative (mmdet v2)
    none = assigner.assign_approxs(approxs, squares, 2, torch.zeros(0, 4))
    assert none.gt_inds.tolist() == [0, 0]


# ------------------------------------------------------------------------------------ loss
def test_bounded_iou_loss_by_hand():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 13.0, 10.0]])
    # target w 12, h 10, centre offset dx 2, dy 0; eps 1e-3, beta 0.2
    dx = 1 - 8 / 16.001  # 0.50003 >= beta: x - 0.1
    dy = 1 - 10 / 10.001  # < beta: 0.5 x^2 / 0.2
    dw = 1 - 10 / 12.001  # 0.16674 < beta
    dh = 1 - 10 / 10.001
    expected = [dx - 0.1, 2.5 * dy ** 2, 2.5 * dw ** 2, 2.5 * dh ** 2]
    got = bounded_iou_loss(pred, target, reduction="none")
    assert got[0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert float(bounded_iou_loss(pred, target, avg_factor=2.0).detach()) == pytest.approx(
        sum(expected) / 2, rel=1e-5)
    bounded_iou_loss(pred, target, reduction="sum").backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    empty = torch.zeros(0, 4, requires_grad=True)
    assert float(bounded_iou_loss(empty, torch.zeros(0, 4))) == 0.0
    with pytest.raises(ValueError, match="beta"):
        bounded_iou_loss(pred, target, beta=0.0)


# -------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("name", sorted(HEADS))
def test_protocol_and_per_image_guided_anchors(name):
    strides, make = HEADS[name]
    head = make()
    assert isinstance(head, DenseHead)
    raw = head(_features(strides))
    assert isinstance(raw, GAOutputs)
    anchors = head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES)
    assert len(anchors) == 2 and all(isinstance(a, ImageAnchors) for a in anchors)
    for i, (image_anchors, (pad_h, pad_w)) in enumerate(zip(anchors, PAD_SIZES)):
        for level, s in enumerate(strides):
            side = -(-64 // s)
            boxes, valid = image_anchors.anchors[level], image_anchors.valid[level]
            assert boxes.shape == (side * side, 4) and valid.shape == (side * side,)
            # training: every location inside the padded image
            assert int(valid.sum()) == min(-(-pad_h // s), side) * min(-(-pad_w // s), side)
            # guided anchors are centred on the squares, the shape from the prediction
            squares = head.square_generator.single_level_grid_anchors(level, (side, side))
            assert torch.allclose((boxes[:, :2] + boxes[:, 2:]) / 2,
                                  (squares[:, :2] + squares[:, 2:]) / 2, atol=1e-3)
            shape = raw.shape_preds[level][i].permute(1, 2, 0).reshape(-1, 2)
            std = head.anchoring.anchor_stds[2]
            width = (squares[:, 2] - squares[:, 0]) * torch.exp(std * shape[:, 0])
            assert torch.allclose(boxes[:, 2] - boxes[:, 0], width, rtol=1e-4)
    losses = head.loss(raw, anchors, [WITH_GT, NO_GT], IMAGE_SIZES, PAD_SIZES)
    assert set(k for k in losses if k.startswith("loss_")) == set(head.LOSS_KEYS)
    assert all(torch.isfinite(v) for v in losses.values())
    head.eval()
    with torch.no_grad():
        raw = head(_features(strides))
    found = head.predict(raw, head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES), IMAGE_SIZES)
    for det, (h, w) in zip(found, IMAGE_SIZES):
        assert det["boxes"].shape[1] == 4 and (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()


def _masked_conv_reference(conv: nn.Conv2d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Slow loop: the convolution evaluated pixel by pixel at the kept locations only."""
    p = conv.padding[0]
    k = conv.kernel_size[0]
    padded = F.pad(x, (p, p, p, p))
    out = x.new_zeros((x.shape[0], conv.out_channels, *mask.shape[1:]))
    for b, y, xx in mask.nonzero().tolist():
        patch = padded[b, :, y:y + k, xx:xx + k]
        out[b, :, y, xx] = (conv.weight * patch).sum(dim=(1, 2, 3)) + conv.bias
    return out


@pytest.mark.parametrize("name", sorted(HEADS))
def test_masked_inference_equals_dense_at_kept_locations(name):
    strides, make = HEADS[name]
    head = make()
    with torch.no_grad():  # a location map with kept and dropped locations; P3 kept nowhere
        nn.init.normal_(head.conv_loc.weight, std=100.0)
        head.conv_loc.bias.fill_(-5.0)  # sigmoid(-5) = 0.0067: zero features are dropped
    feats = _features(strides)
    feats[2] = torch.zeros_like(feats[2])
    head.train()
    with torch.no_grad():
        dense = head(feats)
    head.eval()
    with torch.no_grad():
        masked = head(feats)
    cls_conv = head.conv_cls if name == "ga_rpn" else head.retina_cls
    kept_any = []
    for level in range(len(strides)):
        keep = masked.loc_preds[level][:, 0].sigmoid() >= 0.01
        kept_any.append(bool(keep.any()))
        for got, ref in ((masked.cls_scores[level], dense.cls_scores[level]),
                         (masked.box_deltas[level], dense.box_deltas[level])):
            m = keep[:, None].expand_as(got)
            assert torch.allclose(got[m], ref[m], atol=1e-5)
            assert (got[~m] == 0).all()
    assert kept_any[2] is False and any(kept_any) and not all(
        bool((m.sigmoid() >= 0.01).all()) for m in masked.loc_preds)
    # the slow loop agrees on the classifier of one level
    level = kept_any.index(True)
    keep = masked.loc_preds[level][:, 0].sigmoid() >= 0.01
    with torch.no_grad():
        x = feats[level]
        if name == "ga_rpn":
            x = head.feature_adaption(torch.relu(head.rpn_conv(x)), masked.shape_preds[level])
        else:
            x = head.feature_adaption_cls(head.cls_convs(x), masked.shape_preds[level])
        ref = _masked_conv_reference(cls_conv, x, keep)
    assert torch.allclose(masked.cls_scores[level], ref, atol=1e-5)
    # only kept locations are valid anchors, and the empty level is skipped by predict
    anchors = head.get_anchors(masked, [(64, 64)] * 2, [(64, 64)] * 2)
    assert not anchors[0].valid[2].any()
    assert int(anchors[0].valid[level].sum()) == int(keep[0].sum())
    found = head.predict(masked, anchors, [(64, 64)] * 2)
    assert len(found) == 2


def test_no_kept_location_anywhere_gives_empty_proposals():
    head = _rpn_head()
    with torch.no_grad():
        head.conv_loc.weight.zero_()
        head.conv_loc.bias.fill_(-10.0)
    head.eval()
    with torch.no_grad():
        raw = head(_features(RPN_STRIDES))
    assert all((c == 0).all() for c in raw.cls_scores)
    anchors = head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES)
    found = head.predict(raw, anchors, IMAGE_SIZES)
    assert [d["boxes"].shape for d in found] == [(0, 4), (0, 4)]


def test_rpn_proposal_limits():
    head = _rpn_head()
    head.eval()
    with torch.no_grad():
        raw = head(_features(RPN_STRIDES))
        anchors = head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES)
        from glimpse.heads.guided_anchor import GAProposalConfig

        found = head.predict(raw, anchors, IMAGE_SIZES,
                             GAProposalConfig(nms_pre=20, nms_post=3, max_per_image=10,
                                              nms_iou=1.0))
    # 5 levels x at most 3 per level, then the 10 best
    assert all(d["boxes"].shape[0] == 10 for d in found)
    assert all(torch.all(d["labels"] == 1) for d in found)


# --------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["ga_rpn_slim_fpn", "ga_faster_rcnn_slim_fpn",
                                  "ga_retinanet_slim_fpn"])
def test_train_step_reaches_every_branch(name):
    torch.manual_seed(0)
    model = zoo.build(name, num_classes=3, image_scale=(64, 64))
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 2.0, 62.0, 22.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]
    model.train()
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_anchor_shape"]) > 0 and float(losses["loss_anchor_loc"]) > 0
    total.backward()
    head = model.rpn_head if hasattr(model, "rpn_head") else model.head
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["ga_rpn_slim_fpn", "ga_retinanet_slim_fpn"])
def test_empty_ground_truth(name):
    torch.manual_seed(0)
    model = zoo.build(name, num_classes=3, image_scale=(64, 64))
    model.train()
    losses = model([torch.rand(3, 64, 64)], [dict(NO_GT)])
    assert all(torch.isfinite(v) for v in losses.values())
    box_key = "loss_rpn_box" if name.startswith("ga_rpn") else "loss_box"
    assert float(losses[box_key]) == 0.0 and float(losses["loss_anchor_shape"]) == 0.0
    assert float(losses["loss_anchor_loc"]) > 0  # every location is a weighted negative
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
