"""RPN head: anchor targets on hand-made cases, loss against a slow loop, empty ground truth,
border / padding handling and proposal post-processing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from glimpse.assign import (
    AnchorGenerator,
    DeltaXYWHBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    anchor_targets,
)
from glimpse.heads.rpn import ProposalConfig, RPNHead, RPNTrainConfig, select_proposals


def _take_all_sampler() -> RandomSampler:
    return RandomSampler(100_000, 0.5, add_gt_as_proposals=False)


def test_anchor_targets_hand_made():
    # one level, stride 16, 32x32 square anchors centred on (16x, 16y)
    gen = AnchorGenerator(strides=[16], ratios=(1.0,), scales=(2,))
    (anchors,) = gen.grid_anchors([(3, 3)])
    valid = torch.ones(9, dtype=torch.bool)
    target = {"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([1])}
    t = anchor_targets(anchors, valid, target, MaxIoUAssigner(0.7, 0.3, 0.3),
                       DeltaXYWHBoxCoder(), sampler=_take_all_sampler(), class_agnostic=True)
    lab, lw, bt, bw, npos, nneg = (t.labels, t.label_weights, t.box_targets, t.box_weights,
                                   t.num_pos, t.num_neg)
    # anchor (y=1, x=1) is the gt itself; (0, 1), (1, 0) overlap 1/3 -> ignored; (1, 2), (2, 1)
    # touch it with IoU 1/3 as well; (0, 0) 1/7 and the far corners negative.
    iou = box_iou(target["boxes"], anchors)[0]
    assert lab.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert npos == 1 and nneg == int((iou < 0.3).sum())
    torch.testing.assert_close(lw, ((iou < 0.3) | (iou >= 0.7)).float())
    torch.testing.assert_close(bt[4], torch.zeros(4))
    assert bw[4].tolist() == [1, 1, 1, 1] and bw.sum() == 4


def test_allowed_border_and_valid_flags():
    gen = AnchorGenerator(strides=[16], ratios=(1.0,), scales=(2,))
    (anchors,) = gen.grid_anchors([(3, 3)])
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    args = (MaxIoUAssigner(0.7, 0.3, 0.3), DeltaXYWHBoxCoder())
    kwargs = {"sampler": _take_all_sampler(), "class_agnostic": True, "image_size": (48, 48)}
    valid = torch.ones(9, dtype=torch.bool)
    lw = anchor_targets(anchors, valid, target, *args, **kwargs, allowed_border=0).label_weights
    # only anchors fully inside [0, 48): the one at (1, 1) ([0, 0, 32, 32]) -> 1 sampled
    assert lw.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    lw = anchor_targets(anchors, valid, target, *args, **kwargs, allowed_border=-1).label_weights
    assert lw.sum() == 9
    valid = gen.valid_flags([(3, 3)], pad_size=(32, 48))[0]
    lw = anchor_targets(anchors, valid, target, *args, **kwargs).label_weights
    assert lw.view(3, 3)[2].sum() == 0 and lw.view(3, 3)[:2].sum() == 6
    with pytest.raises(ValueError, match="image_size"):
        anchor_targets(anchors, valid, target, *args, allowed_border=0)


def _feats(b=2, c=8, size=16, levels=(4, 8, 16, 32, 64)):
    return [torch.randn(b, c, max(size * 4 // s, 1), max(size * 4 // s, 1)) for s in levels]


def test_rpn_loss_matches_slow_loop():
    torch.manual_seed(0)
    head = RPNHead(8, 8, train_cfg=RPNTrainConfig(num_samples=100_000), box_loss_beta=1 / 9)
    feats = _feats()
    raw = head(feats)
    anchors = head.get_anchors(raw, [(64, 64), (64, 64)], [(64, 64), (64, 64)])
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 2.0, 60.0, 20.0]]),
         "labels": torch.tensor([1, 1])},
        {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([1])},
    ]
    losses = head.loss(raw, anchors, targets, [(64, 64), (64, 64)], [(64, 64), (64, 64)])

    # slow reference: loop over anchors, level-by-level layout (y, x, a)
    all_anchors = torch.cat(anchors[0].anchors)
    coder = DeltaXYWHBoxCoder()
    cls_terms, box_terms, count = [], [], 0
    for i, t in enumerate(targets):
        logits = torch.cat([x[i].permute(1, 2, 0).reshape(-1) for x in raw[0]])
        deltas = torch.cat([x[i].permute(1, 2, 0).reshape(-1, 4) for x in raw[1]])
        iou = box_iou(all_anchors, t["boxes"])  # [N, G]
        best, arg = iou.max(1)
        label = torch.full((len(all_anchors),), -1)
        label[best < 0.3] = 0
        label[best >= 0.7] = arg[best >= 0.7] + 1
        for g in range(len(t["boxes"])):
            col = iou[:, g]
            if col.max() >= 0.3:
                label[col == col.max()] = g + 1
        for n in range(len(all_anchors)):
            if label[n] < 0:
                continue
            count += 1
            y = float(label[n] > 0)
            cls_terms.append(F.binary_cross_entropy_with_logits(logits[n], torch.tensor(y)))
            if label[n] > 0:
                tgt = coder.encode(all_anchors[n:n + 1], t["boxes"][label[n] - 1][None])[0]
                box_terms.append(F.smooth_l1_loss(deltas[n], tgt, beta=1 / 9, reduction="sum"))
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.stack(cls_terms).sum() / count)
    torch.testing.assert_close(losses["loss_rpn_box"], torch.stack(box_terms).sum() / count)


def test_rpn_empty_gt():
    head = RPNHead(8, 8)
    raw = head(_feats())
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    sizes = [(64, 64), (60, 50)]
    losses = head.loss(raw, head.get_anchors(raw, sizes, sizes), [empty, empty], sizes, sizes)
    assert losses["loss_rpn_cls"] > 0
    assert losses["loss_rpn_box"].item() == 0.0
    sum(losses[k] for k in ("loss_rpn_cls", "loss_rpn_box")).backward()
    assert head.cls.weight.grad.abs().sum() > 0


def test_select_proposals_per_level_nms_and_order():
    coder = DeltaXYWHBoxCoder()
    a0 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    a1 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [-5.0, -5.0, 3.0, 0.0]])
    scores = [torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.7, 0.95])]
    deltas = [torch.zeros(3, 4), torch.zeros(2, 4)]
    boxes, s = select_proposals(scores, deltas, [a0, a1], (50, 50), coder,
                                ProposalConfig(nms_pre=1000, max_per_image=10, nms_iou=0.7))
    # level 0: box 1 suppressed by box 0 (IoU 0.82); level 1 keeps its copy of box 0 (NMS is
    # per level); the clipped [0, 0, 3, 0] box has no height -> dropped by min_box_size 0
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.3])
    torch.testing.assert_close(boxes, torch.stack((a0[0], a1[0], a0[2])))
    boxes, s = select_proposals(scores, deltas, [a0, a1], (50, 50), coder,
                                ProposalConfig(nms_pre=1, max_per_image=10))
    assert s.tolist() == pytest.approx([0.9])
    boxes, s = select_proposals([torch.zeros(0)], [torch.zeros(0, 4)], [torch.zeros(0, 4)],
                                (50, 50), coder, ProposalConfig())
    assert boxes.shape == (0, 4) and s.shape == (0,)


def test_rpn_predict_inside_image_sorted():
    torch.manual_seed(0)
    head = RPNHead(8, 8).eval()
    raw = head(_feats())
    sizes = [(64, 60), (40, 64)]
    out = head.predict(raw, head.get_anchors(raw, sizes, sizes), sizes)
    for det, (h, w) in zip(out, sizes):
        boxes, scores = det["boxes"], det["scores"]
        assert 0 < len(boxes) <= 1000 and (det["labels"] == 1).all()
        assert (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all() and (boxes >= 0).all()
        assert torch.equal(scores, scores.sort(descending=True).values)
    with pytest.raises(ValueError, match="levels"):
        head(_feats()[:4])


def test_rpn_param_count_mmdet():
    # mmdet rpn_head at 256 channels and 3 anchors: 590,080 + 771 + 3,084
    assert sum(p.numel() for p in RPNHead().parameters()) == 593_935
