"""RetinaNet head and detector: losses against a slow reference, degenerate targets, the eval
contract, mmdet's parameter count and a pinned loss value (``GLIMPSE_ACCEPT=1`` rewrites it)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from glimpse.assign import AnchorGenerator
from glimpse.heads.base import flatten_levels
from glimpse.heads.retina import RetinaHead, RetinaTestConfig, retina_anchor_generator

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "losses_retinanet.json"


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small_head(num_classes=3, **kwargs) -> RetinaHead:
    return RetinaHead(num_classes, in_channels=8, feat_channels=8, stacked_convs=1, **kwargs)


def _features(batch=1, size=64, strides=(8, 16, 32, 64, 128), channels=8):
    return [torch.randn(batch, channels, -(-size // s), -(-size // s)) for s in strides]


def _loss(head, cls, reg, targets, pad_sizes):
    """The head's loss through the protocol (image sizes = padded sizes: unused by RetinaNet)."""
    anchors = head.get_anchors((cls, reg), pad_sizes, pad_sizes)
    return head.loss((cls, reg), anchors, targets, pad_sizes, pad_sizes)


def _predict(head, cls, reg, image_sizes):
    return head.predict((cls, reg), head.get_anchors((cls, reg), image_sizes, image_sizes),
                        image_sizes)


def _grid(head, cls, reg):
    """Per-level grid anchors (the same for every image)."""
    return head.get_anchors((cls, reg), [(1, 1)], [(1, 1)])[0].anchors


# ------------------------------------------------------------------------------ construction
def test_head_parameter_count_and_init():
    head = RetinaHead(80)
    tower = 8 * (9 * 256 * 256 + 256)
    cls = 9 * 256 * 720 + 720
    reg = 9 * 256 * 36 + 36
    assert _count(head) == tower + cls + reg == 6_463_220
    torch.testing.assert_close(head.retina_cls.bias, torch.full((720,), -math.log(99.0)))
    assert head.retina_reg.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_anchor_sizes_follow_octave_scales():
    gen = retina_anchor_generator()
    assert gen.num_base_anchors == 9
    base = gen.base_anchors[0]  # stride 8
    sides = (base[:, 2] - base[:, 0]) * (base[:, 3] - base[:, 1])
    expected = sorted(32 * 2 ** (i / 3) for i in range(3))
    square = sorted(float(s) ** 0.5 for s in sides[3:6])  # ratio 1 anchors
    assert square == pytest.approx(expected, rel=1e-5)


def test_forward_shapes():
    head = _small_head(num_classes=5)
    cls, reg = head(_features(batch=2))
    assert [tuple(c.shape) for c in cls][:2] == [(2, 45, 8, 8), (2, 45, 4, 4)]
    assert [tuple(r.shape) for r in reg][:2] == [(2, 36, 8, 8), (2, 36, 4, 4)]


# ------------------------------------------------------------------------------------- losses
def test_empty_targets_give_cls_loss_and_zero_box_loss():
    head = _small_head()
    cls, reg = head(_features())
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = _loss(head, cls, reg, [target], [(64, 64)])
    assert losses["loss_cls"] > 0
    assert losses["loss_box"] == 0
    assert losses["stats_pos"] == 0
    (losses["loss_cls"] + losses["loss_box"]).backward()  # differentiable with no positives
    assert head.retina_reg.weight.grad is not None


def test_one_gt_gives_both_losses():
    # mmdet tests/test_heads.py::test_anchor_head_loss ground truth
    head = _small_head()
    cls, reg = head(_features(size=256))
    target = {"boxes": torch.tensor([[23.6667, 23.8757, 238.6326, 151.8874]]),
              "labels": torch.tensor([2])}
    losses = _loss(head, cls, reg, [target], [(256, 256)])
    assert losses["loss_cls"] > 0 and losses["loss_box"] > 0
    assert losses["stats_pos"] >= 1


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _reference_losses(logits, deltas, anchors, valid, gts, labels, num_classes):
    """Loop reference of mmdet v2 RetinaNet losses for one image (float64 python math)."""
    n = len(anchors)
    state = [-1] * n  # -1 ignore, 0 negative, k > 0 positive for gt k - 1
    ious = [[_iou(anchors[j], g) for g in gts] for j in range(n)]
    for j in range(n):
        if not valid[j]:
            continue
        best = max(ious[j]) if gts else 0.0
        if best < 0.4:
            state[j] = 0
        if gts and best >= 0.5:
            state[j] = ious[j].index(best) + 1
    for k in range(len(gts)):  # every gt claims its best valid anchors (min_pos_iou = 0)
        best = max(ious[j][k] for j in range(n) if valid[j])
        for j in range(n):
            if valid[j] and ious[j][k] == best:
                state[j] = k + 1
    num_pos = sum(1 for s in state if s > 0)
    cls_sum, box_sum = 0.0, 0.0
    for j in range(n):
        if state[j] < 0:
            continue
        for c in range(num_classes):
            t = 1.0 if state[j] > 0 and labels[state[j] - 1] == c + 1 else 0.0
            p = 1 / (1 + math.exp(-logits[j][c]))
            ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
            p_t = p * t + (1 - p) * (1 - t)
            cls_sum += ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))
        if state[j] > 0:
            a, g = anchors[j], gts[state[j] - 1]
            aw, ah = a[2] - a[0], a[3] - a[1]
            gw, gh = g[2] - g[0], g[3] - g[1]
            enc = [((g[0] + g[2]) / 2 - (a[0] + a[2]) / 2) / aw,
                   ((g[1] + g[3]) / 2 - (a[1] + a[3]) / 2) / ah,
                   math.log(gw / aw), math.log(gh / ah)]
            box_sum += sum(abs(deltas[j][i] - enc[i]) for i in range(4))
    return cls_sum, box_sum, num_pos, state


def test_hand_made_assignment_matches_loop_reference():
    torch.manual_seed(0)
    num_classes = 3
    gen = AnchorGenerator(strides=[8], ratios=[1.0], scales=[2.0])  # 16 px squares
    head = _small_head(num_classes, anchor_generator=gen)
    h = w = 4  # a 32 x 32 padded batch
    cls = [torch.randn(2, num_classes, h, w, dtype=torch.float64)]
    reg = [torch.randn(2, 4, h, w, dtype=torch.float64)]
    targets = [
        {"boxes": torch.tensor([[2.0, 0.0, 18.0, 16.0], [13.0, 3.0, 29.0, 19.0]]),
         "labels": torch.tensor([2, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    pad_sizes = [(32, 32), (16, 32)]  # second image: rows 2..3 lie in the batch padding
    losses = _loss(head, cls, reg, targets, pad_sizes)

    anchors = gen.grid_anchors([(h, w)])[0].double().tolist()
    cls_total, box_total, avg = 0.0, 0.0, 0
    states = []
    for i, t in enumerate(targets):
        logits = cls[0][i].permute(1, 2, 0).reshape(-1, num_classes).tolist()
        deltas = reg[0][i].permute(1, 2, 0).reshape(-1, 4).tolist()
        valid = [j // w < pad_sizes[i][0] / 8 for j in range(h * w)]
        c, b, p, state = _reference_losses(logits, deltas, anchors, valid,
                                           t["boxes"].tolist(), t["labels"].tolist(),
                                           num_classes)
        cls_total, box_total, avg = cls_total + c, box_total + b, avg + max(p, 1)
        states.append(state)
    # the case covers positives, negatives, ignored anchors and invalid (padding) anchors
    assert {-1, 0, 1, 2} <= set(states[0]) and states[1].count(-1) == 8
    assert losses["stats_pos"] == sum(s > 0 for s in states[0]) / 2  # per image
    torch.testing.assert_close(losses["loss_cls"].item(), cls_total / avg, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_box"].item(), box_total / avg, rtol=1e-6, atol=0)


def test_loss_equals_torchvision_retinanet_loss():
    """Single image, no padding: mmdet v2's normalisation equals torchvision's per-image one."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops import box_iou

    torch.manual_seed(0)
    num_classes = 5
    head = _small_head(num_classes)
    cls, reg = head(_features(size=128))
    target = {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [60.0, 5.0, 120.0, 40.0],
                                     [30.0, 30.0, 45.0, 50.0]]),
              "labels": torch.tensor([1, 4, 5])}
    ours = _loss(head, cls, reg, [target], [(128, 128)])

    anchors = torch.cat(_grid(head, cls, reg))
    outputs = {"cls_logits": flatten_levels(cls, num_classes),
               "bbox_regression": flatten_levels(reg, 4)}
    matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    matched = [matcher(box_iou(target["boxes"], anchors))]
    tv_targets = [{"boxes": target["boxes"], "labels": target["labels"] - 1}]  # 0-based columns
    theirs = RetinaNetHead(8, 9, num_classes).compute_loss(tv_targets, outputs, [anchors], matched)
    assert ours["stats_pos"] == int((matched[0] >= 0).sum())
    torch.testing.assert_close(ours["loss_cls"], theirs["classification"])
    torch.testing.assert_close(ours["loss_box"], theirs["bbox_regression"])


def test_ignore_regions_remove_anchors_from_training():
    from glimpse.assign import MaxIoUAssigner

    torch.manual_seed(0)
    gen = AnchorGenerator(strides=[8], ratios=[1.0], scales=[2.0])
    head = _small_head(3, anchor_generator=gen)
    head_ign = _small_head(3, anchor_generator=gen, assigner=MaxIoUAssigner(
        0.5, 0.4, min_pos_iou=0.0, ignore_iof_thr=0.5))
    cls = [torch.randn(1, 3, 4, 4)]
    reg = [torch.randn(1, 4, 4, 4)]
    target = {"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([1]),
              "boxes_ignore": torch.tensor([[16.0, 16.0, 40.0, 40.0]])}
    with_ignore = _loss(head_ign, cls, reg, [target], [(32, 32)])
    without = _loss(head, cls, reg, [target], [(32, 32)])
    # negatives inside the crowd region drop out of the (positive-normalised) focal sum
    assert with_ignore["loss_cls"] < without["loss_cls"]
    torch.testing.assert_close(with_ignore["loss_box"], without["loss_box"])


# ----------------------------------------------------------------------------------- predict
def test_predict_contract():
    torch.manual_seed(0)
    head = _small_head(num_classes=4, test_cfg=RetinaTestConfig(score_thr=0.0, max_per_image=50))
    cls, reg = head(_features(batch=2, size=64))
    dets = _predict(head, cls, reg, [(64, 48), (40, 64)])
    assert len(dets) == 2
    for det, (h, w) in zip(dets, [(64, 48), (40, 64)]):
        assert set(det) == {"boxes", "scores", "labels"}
        assert 0 < det["boxes"].shape[0] <= 50
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        assert det["labels"].dtype == torch.long
        assert det["labels"].min() >= 1 and det["labels"].max() <= 4
        assert det["boxes"][:, [0, 2]].max() <= w and det["boxes"][:, [1, 3]].max() <= h
        assert det["boxes"].min() >= 0


def _reference_predict(head, cls_logits, box_deltas, shape):
    """Threshold, then per-level top-k over (anchor, class) pairs in anchor order, then NMS."""
    from torchvision.ops import batched_nms

    cfg, k = head.test_cfg, head.num_classes
    boxes, scores, labels = [], [], []
    for logit, delta, anchor in zip(cls_logits, box_deltas, _grid(head, cls_logits, box_deltas)):
        prob = logit[0].permute(1, 2, 0).reshape(-1, k).sigmoid()  # [H*W*A, K]
        deltas = delta[0].permute(1, 2, 0).reshape(-1, 4)
        cand = [(float(prob[j, c]), j, c) for j in range(prob.shape[0]) for c in range(k)
                if prob[j, c] > cfg.score_thr]
        cand = sorted(cand, reverse=True)[: cfg.nms_pre]
        for p, j, c in cand:
            boxes.append(head.box_coder.decode(anchor[j:j + 1], deltas[j:j + 1], shape)[0])
            scores.append(p)
            labels.append(c + 1)
    boxes, scores = torch.stack(boxes), torch.tensor(scores)
    labels = torch.tensor(labels)
    keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.max_per_image]
    return boxes[keep], scores[keep], labels[keep]


def test_predict_matches_threshold_then_topk_reference():
    torch.manual_seed(0)
    head = _small_head(num_classes=3,
                       test_cfg=RetinaTestConfig(nms_pre=40, score_thr=0.3, max_per_image=25))
    cls = [torch.randn(1, 27, 8, 6), torch.randn(1, 27, 4, 3)]
    reg = [torch.randn(1, 36, 8, 6) * 0.3, torch.randn(1, 36, 4, 3) * 0.3]
    head.anchor_generator = AnchorGenerator(strides=[8, 16], ratios=(0.5, 1.0, 2.0),
                                            scales=(4.0, 5.0, 6.0))
    det = _predict(head, cls, reg, [(60, 44)])[0]
    boxes, scores, labels = _reference_predict(head, cls, reg, (60, 44))
    assert det["boxes"].shape[0] == 25
    torch.testing.assert_close(det["scores"], scores)
    torch.testing.assert_close(det["labels"], labels)
    torch.testing.assert_close(det["boxes"], boxes)


def test_predict_decodes_a_confident_anchor():
    gen = AnchorGenerator(strides=[8], ratios=[1.0], scales=[2.0])
    head = _small_head(2, anchor_generator=gen)
    cls = [torch.full((1, 2, 4, 4), -10.0)]
    cls[0][0, 1, 2, 1] = 5.0  # class 2 at row 2, column 1: anchor centred at (8, 16)
    reg = [torch.zeros(1, 4, 4, 4)]
    det = _predict(head, cls, reg, [(32, 32)])[0]
    assert det["labels"].tolist() == [2]
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 8.0, 16.0, 24.0]]))
    assert det["scores"].item() == pytest.approx(1 / (1 + math.exp(-5.0)))


def test_predict_empty_when_nothing_passes_threshold():
    head = _small_head(2)
    cls = [torch.full((1, 18, 2, 2), -20.0)]
    reg = [torch.zeros(1, 36, 2, 2)]
    head.anchor_generator = AnchorGenerator(strides=[8], ratios=(0.5, 1.0, 2.0),
                                            scales=(4.0, 5.0, 6.0))
    det = _predict(head, cls, reg, [(16, 16)])[0]
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,)


# --------------------------------------------------------------------------------- golden
def test_loss_regression_golden():
    torch.manual_seed(1234)
    head = RetinaHead(4, in_channels=16, feat_channels=16, stacked_convs=2)
    feats = _features(batch=2, size=96, channels=16)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 5.0, 90.0, 40.0]]),
         "labels": torch.tensor([1, 4])},
        {"boxes": torch.tensor([[0.0, 30.0, 33.0, 95.0]]), "labels": torch.tensor([3])},
    ]
    cls, reg = head(feats)
    losses = _loss(head, cls, reg, targets, [(96, 96), (96, 64)])
    got = {k: round(float(v.detach()), 6) for k, v in sorted(losses.items())}
    if os.environ.get("GLIMPSE_ACCEPT") == "1" or not GOLDEN.exists():
        if os.environ.get("GLIMPSE_ACCEPT") != "1":
            pytest.fail(f"{GOLDEN} is missing; run with GLIMPSE_ACCEPT=1 to write it")
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), k


# ---------------------------------------------------------------------------------- detector
def test_retinanet_r50_parameter_count_matches_mmdet():
    from glimpse.backbones import resnet50
    from glimpse.detectors.retinanet import retinanet

    assert _count(retinanet(resnet50(), 80)) == 37_968_692


def _slim_retinanet(num_classes=3):
    from glimpse.backbones import resnet_slim
    from glimpse.detectors.retinanet import retinanet

    return retinanet(resnet_slim(), num_classes, image_scale=(96, 96), fpn_channels=16)


def test_detector_train_contract_and_empty_images():
    torch.manual_seed(0)
    model = _slim_retinanet().train()
    images = [torch.rand(3, 80, 120), torch.rand(3, 60, 60)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = model(images, targets)
    assert {"loss_cls", "loss_box"} <= set(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    assert model.head.retina_cls.weight.grad is not None

    empty = model(images[1:], targets[1:])
    assert empty["loss_cls"] > 0 and empty["loss_box"] == 0
    with pytest.raises(ValueError, match="needs targets"):
        model(images)


def test_detector_eval_contract_original_pixels():
    torch.manual_seed(0)
    model = _slim_retinanet(num_classes=2)
    model.head.test_cfg = RetinaTestConfig(score_thr=0.0, max_per_image=20)
    model.eval()
    images = [torch.rand(3, 50, 200), torch.rand(3, 120, 90)]
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2
    for det, img in zip(dets, images):
        assert set(det) >= {"boxes", "scores", "labels"}
        assert det["boxes"].shape[0] == 20
        assert det["boxes"][:, [0, 2]].max() <= img.shape[2]
        assert det["boxes"][:, [1, 3]].max() <= img.shape[1]
        assert det["labels"].min() >= 1 and det["labels"].max() <= 2


def test_kaiming_tower_init_keeps_the_signal_of_narrow_heads():
    torch.manual_seed(0)
    feats = _features(size=128, channels=64)
    for init, low, high in (("normal", 0.0, 1e-2), ("kaiming", 0.1, 10.0)):
        head = RetinaHead(3, in_channels=64, feat_channels=64, tower_init=init)
        std = head.cls_convs(feats[0]).std().item() / feats[0].std().item()
        assert low < std < high, (init, std)
    with pytest.raises(ValueError, match="tower_init"):
        RetinaHead(3, tower_init="xavier")
    from glimpse import zoo

    assert zoo.build("retinanet_slim_fpn", 3).head.tower_init == "kaiming"
    assert zoo.build("retinanet_r50_fpn", 3).head.tower_init == "normal"
