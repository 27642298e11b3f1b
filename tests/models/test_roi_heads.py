"""RoI extractor level mapping, box head targets / loss / NMS, FCN mask head targets / loss /
pasting, and the cascade loop on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glimpse.assign import SamplingResult
from glimpse.heads.cascade import CASCADE_STDS, CascadeContext, CascadeRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig, multiclass_nms
from glimpse.heads.roi_extractor import RoIExtractor, boxes_to_rois, map_roi_levels
from glimpse.heads.roi_mask import FCNMaskHead, mask_targets
from glimpse.heads.standard import StandardRoIHead
from glimpse.preprocess import paste_masks


# ---------------------------------------------------------------------------- RoI extractor
def test_map_roi_levels_mmdet_rule():
    sides = torch.tensor([20.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0])
    rois = torch.stack((torch.zeros(8), torch.zeros(8), torch.zeros(8), sides, sides), 1)
    assert map_roi_levels(rois, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # non-square: sqrt(w h) = sqrt(56 * 448) = 158 -> level 1
    assert map_roi_levels(torch.tensor([[0.0, 0.0, 0.0, 56.0, 448.0]]), 4).tolist() == [1]


def test_roi_extractor_pools_from_mapped_level():
    # level l is constant l + 1, so each pooled feature reveals its level
    feats = [torch.full((2, 3, 64 // 2**i, 64 // 2**i), float(i + 1)) for i in range(5)]
    boxes = [torch.tensor([[0.0, 0.0, 50.0, 50.0], [0.0, 0.0, 150.0, 150.0]]),
             torch.tensor([[0.0, 0.0, 250.0, 250.0], [10.0, 10.0, 600.0, 600.0]])]
    out = RoIExtractor(7)(feats, boxes_to_rois(boxes))
    assert out.shape == (4, 3, 7, 7)
    # interior bins only (bins near the map border of coarse levels mix in zero padding)
    assert out[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    empty = RoIExtractor(14)(feats, torch.zeros(0, 5))
    assert empty.shape == (0, 3, 14, 14)


def test_roi_extractor_matches_aligned_roi_align_on_level():
    from torchvision.ops import roi_align

    feats = [torch.randn(1, 2, 32 // 2**i, 32 // 2**i) for i in range(4)]
    rois = torch.tensor([[0.0, 3.3, 4.1, 60.2, 80.7]])  # sqrt(57*77)=66 -> level 0
    ref = roi_align(feats[0], rois, (7, 7), 0.25, 0, aligned=True)
    torch.testing.assert_close(RoIExtractor(7)(feats, rois), ref)


# ------------------------------------------------------------------------------- box head
def _sampling(pos_boxes, gt_boxes, gt_labels, neg_boxes, pos_is_gt=None) -> SamplingResult:
    p, q = len(pos_boxes), len(neg_boxes)
    return SamplingResult(
        pos_inds=torch.arange(p), neg_inds=torch.arange(p, p + q), pos_boxes=pos_boxes,
        neg_boxes=neg_boxes, pos_gt_boxes=gt_boxes, pos_gt_labels=gt_labels,
        pos_assigned_gt_inds=torch.arange(p),
        pos_is_gt=pos_is_gt if pos_is_gt is not None else torch.zeros(p, dtype=torch.bool))


def test_box_head_targets_and_loss_against_reference():
    torch.manual_seed(0)
    head = BoxHead(num_classes=3, in_channels=4, roi_size=2, fc_channels=8)
    s = _sampling(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]]),
                  torch.tensor([[1.0, 0.0, 11.0, 12.0], [5.0, 5.0, 25.0, 15.0]]),
                  torch.tensor([2, 3]), torch.tensor([[50.0, 50.0, 60.0, 60.0]]))
    labels, targets = head.get_targets([s])
    assert labels.tolist() == [2, 3, 0]
    # dx = 1/10 / 0.1, dh = log(12/10) / 0.2; the exact match and the negative have 0
    torch.testing.assert_close(targets[0], torch.tensor([1.0, 1.0, 0.0, math.log(1.2) / 0.2]))
    torch.testing.assert_close(targets[1:], torch.zeros(2, 4))
    logits, deltas = head(torch.randn(3, 4, 2, 2))
    assert logits.shape == (3, 4) and deltas.shape == (3, 12)
    losses = head.loss(logits, deltas, labels, targets)
    ref_cls = F.cross_entropy(logits, labels)
    # class-specific columns: label 2 -> 4..7, label 3 -> 8..11; L1, divided by all 3 RoIs
    ref_box = ((deltas[0, 4:8] - targets[0]).abs().sum()
               + (deltas[1, 8:12] - targets[1]).abs().sum()) / 3
    torch.testing.assert_close(losses["loss_cls"], ref_cls)
    torch.testing.assert_close(losses["loss_box"], ref_box)


def test_box_head_no_positives_exact_zero():
    head = BoxHead(num_classes=3, in_channels=4, roi_size=2, fc_channels=8)
    s = _sampling(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                  torch.tensor([[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 5.0, 5.0]]))
    labels, targets = head.get_targets([s])
    losses = head.loss(*head(torch.randn(2, 4, 2, 2)), labels, targets)
    assert losses["loss_cls"] > 0 and losses["loss_box"].item() == 0.0
    (losses["loss_cls"] + losses["loss_box"]).backward()


def test_box_head_param_counts_mmdet():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Shared2FCBBoxHead, 80 classes: 12,846,080 + 1,049,600 + 83,025 + 328,000
    assert count(BoxHead(80)) == 14_306_705
    assert count(BoxHead(80, class_agnostic=True)) == 13_982_805


def test_multiclass_nms_hand_case():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.5, 0.04, 0.46]])
    b, s, lab = multiclass_nms(boxes, scores, 0.05, 0.5, 100)
    # class 1: box 1 suppressed by box 0 (IoU 0.81); class 2: box 2 (0.46) kept, boxes 0/1
    # at 0.1 kept for class 2 except box 1 suppressed by box 0; box 2 class 1 under 0.05
    assert s.tolist() == pytest.approx([0.8, 0.46, 0.1])
    assert lab.tolist() == [1, 2, 2]
    torch.testing.assert_close(b, boxes[[0, 2, 0]])
    b, s, lab = multiclass_nms(boxes, scores, 0.05, 0.5, 2)
    assert len(s) == 2
    b, s, lab = multiclass_nms(boxes, scores, 0.9, 0.5, 100)
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)


# ------------------------------------------------------------------------------ mask head
def test_mask_targets_crop_gt_onto_box():
    gt = torch.zeros(2, 40, 40, dtype=torch.uint8)
    gt[0, 10:30, 10:20] = 1  # left half of the box [10, 10, 30, 30]
    gt[1] = 1
    pos = torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 8.0, 8.0]])
    t = mask_targets(pos, torch.tensor([0, 1]), gt, 28)
    assert t.shape == (2, 28, 28)
    assert t[0, :, :14].all() and not t[0, :, 14:].any()
    assert t[1].all()
    assert mask_targets(pos[:0], torch.zeros(0).long(), gt, 28).shape == (0, 28, 28)


def test_mask_head_shapes_loss_and_params():
    head = FCNMaskHead(num_classes=80)
    assert sum(p.numel() for p in head.parameters()) == 2_643_280  # mmdet FCNMaskHead
    small = FCNMaskHead(num_classes=3, in_channels=8, conv_channels=8)
    logits = small(torch.randn(2, 8, 14, 14))
    assert logits.shape == (2, 3, 28, 28)
    targets = (torch.rand(2, 28, 28) > 0.5).float()
    labels = torch.tensor([3, 1])
    ref = (F.binary_cross_entropy_with_logits(logits[0, 2], targets[0])
           + F.binary_cross_entropy_with_logits(logits[1, 0], targets[1])) / 2
    torch.testing.assert_close(small.loss(logits, targets, labels)["loss_mask"], ref)
    empty = small.loss(logits[:0], targets[:0], labels[:0])["loss_mask"]
    assert empty.item() == 0.0
    probs = small.probabilities(logits, labels)
    torch.testing.assert_close(probs, torch.stack((logits[0, 2], logits[1, 0])).sigmoid())


def test_mask_head_injected_upsampler():
    calls = []

    def up(channels):
        calls.append(channels)
        return torch.nn.Upsample(scale_factor=2, mode="nearest")

    head = FCNMaskHead(num_classes=2, in_channels=4, conv_channels=6, upsampler=up)
    assert calls == [6] and head(torch.randn(1, 4, 14, 14)).shape == (1, 2, 28, 28)


def test_paste_masks_exact_box_for_full_mask():
    out = paste_masks(torch.ones(2, 28, 28), torch.tensor([[10.0, 20.0, 30.0, 40.0],
                                                           [-5.0, -5.0, 3.0, 2.0]]), (50, 60))
    assert out.dtype == torch.uint8 and out.shape == (2, 50, 60)
    ref = torch.zeros(50, 60, dtype=torch.uint8)
    ref[20:40, 10:30] = 1
    assert torch.equal(out[0], ref)
    assert out[1, :2, :3].all() and out[1].sum() == 6
    # a left-half mask fills the left half of the box
    half = torch.zeros(1, 28, 28)
    half[:, :, :14] = 1
    out = paste_masks(half, torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (50, 60))
    assert out[0, 20:40, 10:20].all() and out[0].sum() == 200


# ------------------------------------------------------------------------------- cascade
def _feats(c=8):
    return [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i in range(5)]


def _cascade(with_mask=True, num_classes=3, c=8):
    heads = [BoxHead(num_classes, c, fc_channels=16, class_agnostic=True, target_stds=s,
                     box_loss_beta=1.0) for s in CASCADE_STDS]
    cfgs = [RCNNTrainConfig(pos_iou_thr=t, neg_iou_thr=t, min_pos_iou=t, num_samples=64)
            for t in (0.5, 0.6, 0.7)]
    masks = [FCNMaskHead(num_classes, c, c) for _ in range(3)] if with_mask else None
    return CascadeRoIHead(heads, cfgs, [1.0, 0.5, 0.25], mask_heads=masks,
                          test_cfg=RCNNTestConfig(score_thr=0.0))


def _targets():
    masks = torch.zeros(2, 256, 256, dtype=torch.uint8)
    masks[0, 10:60, 20:80] = 1
    masks[1, 100:200, 120:220] = 1
    return [{"boxes": torch.tensor([[20.0, 10.0, 80.0, 60.0], [120.0, 100.0, 220.0, 200.0]]),
             "labels": torch.tensor([1, 3]), "masks": masks},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 256, 256, dtype=torch.uint8)}]


def _proposals():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 30, 2, generator=g) * 180
    wh = 10 + torch.rand(2, 30, 2, generator=g) * 70
    return list(torch.cat((xy, xy + wh), -1))


def test_cascade_loss_keys_weights_and_empty_image():
    torch.manual_seed(0)
    head = _cascade()
    losses = head.loss(_feats(), _proposals(), _targets(), [(256, 256)] * 2)
    for t in range(3):
        for k in ("loss_cls", "loss_box", "loss_mask", "stats_acc"):
            assert f"{k}_s{t}" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    # all-empty batch: classification only
    empty = [_targets()[1]] * 2
    losses = _cascade().loss(_feats(), _proposals(), empty, [(256, 256)] * 2)
    for t in range(3):
        assert losses[f"loss_cls_s{t}"] > 0
        assert losses[f"loss_box_s{t}"].item() == 0.0
        assert losses[f"loss_mask_s{t}"].item() == 0.0


def test_cascade_stage_weight_applied():
    torch.manual_seed(0)
    head = _cascade(with_mask=False)
    head.stage_loss_weights = [1.0, 1.0, 1.0]
    torch.manual_seed(1)
    plain = head.loss(_feats(), _proposals(), _targets(), [(256, 256)] * 2)
    head.stage_loss_weights = [1.0, 0.5, 0.25]
    torch.manual_seed(1)
    weighted = head.loss(_feats(), _proposals(), _targets(), [(256, 256)] * 2)
    for t, w in enumerate((1.0, 0.5, 0.25)):
        torch.testing.assert_close(weighted[f"loss_cls_s{t}"], plain[f"loss_cls_s{t}"] * w)
        torch.testing.assert_close(weighted[f"stats_acc_s{t}"], plain[f"stats_acc_s{t}"])


def test_refine_samples_drops_gt_rois():
    head = _cascade(with_mask=False)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    s = _sampling(torch.cat((gt, torch.tensor([[1.0, 1.0, 11.0, 11.0]]))), gt.repeat(2, 1),
                  torch.tensor([1, 1]), torch.tensor([[30.0, 30.0, 40.0, 40.0]]),
                  pos_is_gt=torch.tensor([True, False]))
    logits = torch.zeros(3, 4)
    out = head.refine_samples(0, [s], logits, torch.zeros(3, 4), torch.tensor([1, 1, 0]),
                              [(50, 50)])
    # zero deltas: the non-gt positive and the negative come back unchanged
    torch.testing.assert_close(out[0], torch.tensor([[1.0, 1.0, 11.0, 11.0],
                                                     [30.0, 30.0, 40.0, 40.0]]))


def test_cascade_predict_averages_logits_last_stage_boxes():
    torch.manual_seed(0)
    head = _cascade().eval()
    feats, props = _feats(), _proposals()
    out = head.predict(feats, props, [(256, 256), (200, 256)])
    # independent re-computation of image 0, stage by stage
    boxes, logits_all = props[0], []
    for t in range(3):
        rois = torch.cat((torch.zeros(len(boxes), 1), boxes), 1)
        lg, dl = head.box_heads[t](head.box_extractor(feats, rois))
        logits_all.append(lg)
        if t < 2:
            boxes = head.box_heads[t].coder.decode(boxes, dl, max_shape=(256, 256))
    scores = F.softmax(sum(logits_all) / 3, dim=1)
    final = head.box_heads[2].coder.decode(boxes, dl, max_shape=(256, 256))
    best = scores[:, 1:].max()
    assert out[0]["scores"][0].item() == pytest.approx(best.item(), rel=1e-5)
    idx = (scores[:, 1:] == best).nonzero()[0, 0]
    torch.testing.assert_close(out[0]["boxes"][0], final[idx])
    for d in out:
        assert d["mask_probs"].shape == (len(d["boxes"]), 28, 28)
        assert ((d["mask_probs"] >= 0) & (d["mask_probs"] <= 1)).all()
    # no proposals at all
    none = head.predict(feats, [torch.zeros(0, 4)] * 2, [(256, 256)] * 2)
    assert all(len(d["boxes"]) == 0 and d["mask_probs"].shape == (0, 28, 28) for d in none)


def test_predict_boxes_return_stages_matches_stage_loop():
    torch.manual_seed(0)
    head = _cascade(with_mask=False).eval()
    feats, props, sizes = _feats(), _proposals(), [(256, 256), (200, 256)]
    ctx = CascadeContext(feats, sizes)
    dets, stages = head.predict_boxes(ctx, props, return_stages=True)
    assert len(stages) == 3 and all(len(s) == 2 for s in stages)
    # the detections are those of the plain call
    for (b, s, lab), (b2, s2, lab2) in zip(dets, head.predict_boxes(ctx, props)):
        assert torch.equal(b, b2) and torch.equal(s, s2) and torch.equal(lab, lab2)
    # independent loop over image 1: each stage's own softmax and its regression of its input
    boxes = props[1]
    for t in range(3):
        rois = torch.cat((torch.ones(len(boxes), 1), boxes), 1)
        lg, dl = head.box_heads[t](head.box_extractor(feats, rois))
        boxes = head.box_heads[t].coder.decode(boxes, dl, max_shape=(200, 256))
        stage_boxes, stage_probs = stages[t][1]
        torch.testing.assert_close(stage_boxes, boxes)
        torch.testing.assert_close(stage_probs, F.softmax(lg, dim=1))
        assert stage_boxes[:, 3].max() <= 200  # clipped to this image's height
    # no proposals: every stage still reports one (empty) entry per image
    _, stages = head.predict_boxes(ctx, [torch.zeros(0, 4)] * 2, return_stages=True)
    assert [[(b.shape, p.shape) for b, p in s] for s in stages] == [
        [((0, 4), (0, 4))] * 2] * 3


def test_single_stage_return_stages_regresses_by_best_class():
    torch.manual_seed(0)
    head = StandardRoIHead(BoxHead(3, 8, fc_channels=16)).eval()
    feats, props = _feats(), _proposals()
    _, stages = head.predict_boxes(CascadeContext(feats, [(256, 256)] * 2), props,
                                   return_stages=True)
    rois = torch.cat((torch.zeros(30, 1), props[0]), 1)
    lg, dl = head.box_heads[0](head.box_extractor(feats, rois))
    best = lg[:, 1:].argmax(1)  # class-specific deltas: columns 4k..4k+3 of class k + 1
    picked = dl.view(30, 3, 4)[torch.arange(30), best]
    ref = head.box_heads[0].coder.decode(props[0], picked, max_shape=(256, 256))
    torch.testing.assert_close(stages[0][0][0], ref)


def test_context_must_match_feats_and_sizes():
    head = _cascade(with_mask=False).eval()
    feats, props = _feats(), _proposals()
    with pytest.raises(ValueError, match="context"):
        head.predict(feats, props, [(256, 256)] * 2,
                     context=CascadeContext(_feats(), [(256, 256)] * 2))
    with pytest.raises(ValueError, match="context"):
        head.loss(feats, props, _targets(), [(256, 256)] * 2,
                  context=CascadeContext(feats, [(128, 128)] * 2))
    # the same feats and sizes: identical to building no context
    same = head.predict(feats, props, [(256, 256)] * 2,
                        context=CascadeContext(list(feats), [(256, 256)] * 2))
    plain = head.predict(feats, props, [(256, 256)] * 2)
    assert all(torch.equal(a["scores"], b["scores"]) for a, b in zip(same, plain))


def test_standard_roi_head_keys_and_missing_masks_error():
    head = StandardRoIHead(BoxHead(3, 8, fc_channels=16),
                           RCNNTrainConfig(num_samples=64),
                           mask_head=FCNMaskHead(3, 8, 8))
    assert head.num_stages == 1 and head.with_mask
    losses = head.loss(_feats(), _proposals(), _targets(), [(256, 256)] * 2)
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask", "stats_acc"}
    bad = _targets()
    del bad[0]["masks"]
    with pytest.raises(ValueError, match="masks"):
        head.loss(_feats(), _proposals(), bad, [(256, 256)] * 2)
