"""Hybrid Task Cascade: exact parameter counts, the ablation flags each changing what they
should, interleaved execution, mask information flow (gradients), semantic fusion, the
inference ensemble against a hand-written loop, the fused semantic head against a slow
reference, and slim HTC train / eval steps (synthetic-smoke, empty ground truth)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from glimpse import zoo
from glimpse.backbones.resnet import resnet50
from glimpse.detectors.htc import HTC_ABLATION, htc
from glimpse.heads.cascade import CASCADE_STDS, CascadeContext, CascadeRoIHead
from glimpse.heads.htc import HTCMaskHead, HTCRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_extractor import boxes_to_rois
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.heads.semantic import FusedSemanticHead
from glimpse.preprocess import pad_semantic_maps

C = 8  # channels of the pyramid, the semantic map and the mask heads
SIZES = [(256, 256), (192, 256)]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("name, expected", [("htc_r50_fpn", 80_258_293),
                                            ("htc_without_semantic_r50_fpn", 77_456_190)])
def test_zoo_parameter_counts_match_mmdet(name, expected):
    with torch.device("meta"):
        model = zoo.build(name, 80)
    assert _count(model) == expected


def test_ablation_parameter_counts():
    """Cascade Mask R-CNN's count, + 2 x conv_res (65,792) for the flow, + the semantic head
    (2,802,103, ga_carafe_htc_more.md C2)."""
    expected = {"cascade_mask": 77_324_606, "interleaved": 77_324_606,
                "mask_info_flow": 77_456_190, "semantic": 80_258_293}
    with torch.device("meta"):
        for step, kwargs in HTC_ABLATION.items():
            assert _count(htc(resnet50(), 80, **kwargs)) == expected[step], step
        assert _count(FusedSemanticHead()) == 2_802_103
        assert _count(HTCMaskHead().conv_res) == 65_792
        assert HTCMaskHead(with_conv_res=False).conv_res is None


def test_builder_errors():
    with pytest.raises(ValueError, match="semantic=False: semantic_head / semantic_classes"):
        htc(resnet50(), 3, semantic=False, semantic_classes=10)
    with pytest.raises(ValueError, match="mask head 1 must be an HTCMaskHead with "
                                         "with_conv_res=True"):
        HTCRoIHead([BoxHead(3, C, fc_channels=16, class_agnostic=True)] * 2,
                   [RCNNTrainConfig()] * 2, [1, 1], [FCNMaskHead(3, C, C)] * 2)
    with pytest.raises(ValueError, match="no conv_res"):
        HTCMaskHead(3, C, C, with_conv_res=False).features(torch.zeros(1, C, 14, 14),
                                                           torch.zeros(1, C, 14, 14))


# ------------------------------------------------------------------------- the RoI head
def _head(interleaved: bool = True, mask_info_flow: bool = True, cls=HTCRoIHead) -> HTCRoIHead:
    torch.manual_seed(0)
    box_heads = [BoxHead(3, C, fc_channels=16, class_agnostic=True, target_stds=s,
                         box_loss_beta=1.0) for s in CASCADE_STDS]
    cfgs = [RCNNTrainConfig(pos_iou_thr=t, neg_iou_thr=t, min_pos_iou=t, num_samples=32)
            for t in (0.5, 0.6, 0.7)]
    masks = [HTCMaskHead(3, C, C, with_conv_res=mask_info_flow and t > 0) for t in range(3)]
    return cls(box_heads, cfgs, [1.0, 0.5, 0.25], masks, interleaved=interleaved,
               mask_info_flow=mask_info_flow,
               test_cfg=RCNNTestConfig(score_thr=0.0, max_per_image=20))


def _scene(seed: int):
    """Pyramid (strides 4..64), stride-8 semantic map, proposals and targets of two images."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, C, 64 // 2**i, 64 // 2**i, generator=g) for i in range(5)]
    semantic = torch.randn(2, C, 32, 32, generator=g)
    xy = torch.rand(2, 20, 2, generator=g) * 150
    proposals = list(torch.cat((xy, xy + 20 + torch.rand(2, 20, 2, generator=g) * 60), -1))
    masks = torch.zeros(3, 256, 256, dtype=torch.uint8)
    masks[0, 10:60, 20:80] = 1
    masks[1, 100:200, 120:220] = 1
    masks[2, 30:90, 150:190] = 1
    targets = [
        {"boxes": torch.tensor([[20.0, 10.0, 80.0, 60.0], [120.0, 100.0, 220.0, 200.0]]),
         "labels": torch.tensor([1, 3]), "masks": masks[:2]},
        {"boxes": torch.tensor([[150.0, 30.0, 190.0, 90.0]]), "labels": torch.tensor([2]),
         "masks": masks[2:]},
    ]
    for i, t in enumerate(targets):  # plus each ground truth shifted: good non-gt positives
        shift = (t["boxes"][:, 2:3] - t["boxes"][:, 0:1]) * 0.1
        proposals[i] = torch.cat((proposals[i], t["boxes"] - torch.cat((shift, 0 * shift,
                                                                        shift, 0 * shift), 1)))
    return feats, semantic, proposals, targets


def _shift_regressors(head: CascadeRoIHead) -> None:
    """Every stage moves every box right by a tenth of its width."""
    for box_head in head.box_heads:
        nn.init.constant_(box_head.reg.weight, 0.0)
        box_head.reg.bias.data = torch.tensor([1.0, 0.0, 0.0, 0.0])


def _mask_positives(interleaved: bool):
    """Per stage: the regressed proposals and the mask branch's (positive boxes, is-gt)."""
    seen: dict[str, list] = {"refined": [], "mask_pos": []}

    class Spy(HTCRoIHead):
        def refine_samples(self, *args, **kwargs):
            out = super().refine_samples(*args, **kwargs)
            seen["refined"].append(out)
            return out

        def mask_loss(self, stage, context, samples, targets):
            seen["mask_pos"].append([(s.pos_boxes, s.pos_is_gt) for s in samples])
            return super().mask_loss(stage, context, samples, targets)

    head = _head(interleaved=interleaved, cls=Spy)
    _shift_regressors(head)
    feats, _, proposals, targets = _scene(2)
    head.loss(feats, proposals, targets, SIZES)
    return proposals, seen


def _rows_in(boxes: Tensor, pool: Tensor) -> Tensor:
    return (boxes[:, None] == pool[None]).all(-1).any(1)


def test_interleaved_mask_branch_trains_on_the_boxes_its_stage_regressed():
    proposals, seen = _mask_positives(interleaved=True)
    assert len(seen["refined"]) == len(seen["mask_pos"]) == 3  # the last stage regresses too
    for stage, mask_pos in enumerate(seen["mask_pos"]):
        given = proposals if stage == 0 else seen["refined"][stage - 1]
        for image, (boxes, is_gt) in enumerate(mask_pos):
            regressed = boxes[~is_gt]
            assert len(regressed) > 0, (stage, image)
            assert _rows_in(regressed, seen["refined"][stage][image]).all(), (stage, image)
            assert not _rows_in(regressed, given[image]).any(), (stage, image)


def test_without_interleaving_the_mask_branch_trains_on_the_given_boxes():
    proposals, seen = _mask_positives(interleaved=False)
    assert len(seen["refined"]) == 2  # Cascade Mask R-CNN: no regression after the last stage
    for stage, mask_pos in enumerate(seen["mask_pos"]):
        given = proposals if stage == 0 else seen["refined"][stage - 1]
        for image, (boxes, is_gt) in enumerate(mask_pos):
            assert len(boxes[~is_gt]) > 0 and _rows_in(boxes[~is_gt], given[image]).all()


def test_interleaving_changes_only_the_mask_branch_of_the_first_stage():
    feats, _, proposals, targets = _scene(1)
    plain = _head(interleaved=False).loss(feats, proposals, targets, SIZES)
    mixed = _head(interleaved=True).loss(feats, proposals, targets, SIZES)
    assert plain.keys() == mixed.keys()
    for key in ("loss_cls_s0", "loss_box_s0"):
        torch.testing.assert_close(plain[key], mixed[key])
    assert not torch.equal(plain["loss_mask_s0"], mixed["loss_mask_s0"])


def test_cascade_mask_configuration_is_cascade_mask_rcnn():
    """All flags off: the head computes Cascade Mask R-CNN's losses and detections exactly."""
    htc_head = _head(interleaved=False, mask_info_flow=False)
    torch.manual_seed(0)
    cascade = CascadeRoIHead(htc_head.box_heads, htc_head.train_cfgs, [1.0, 0.5, 0.25],
                             mask_heads=[FCNMaskHead(3, C, C) for _ in range(3)],
                             test_cfg=htc_head.test_cfg)
    cascade.load_state_dict(htc_head.state_dict())
    feats, _, proposals, targets = _scene(5)
    torch.manual_seed(1)
    a = htc_head.loss(feats, proposals, targets, SIZES)
    torch.manual_seed(1)
    b = cascade.loss(feats, proposals, targets, SIZES)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    for x, y in zip(htc_head.eval().predict(feats, proposals, SIZES),
                    cascade.eval().predict(feats, proposals, SIZES)):
        for k in x:
            torch.testing.assert_close(x[k], y[k])


def test_mask_information_flow_reaches_the_earlier_stages():
    feats, semantic, proposals, targets = _scene(1)
    for flow in (True, False):
        head = _head(mask_info_flow=flow)
        losses = head.loss(feats, proposals, targets, SIZES,
                           context=CascadeContext(feats, SIZES, semantic_feat=semantic))
        for t in range(3):
            for k in ("loss_cls", "loss_box", "loss_mask"):
                assert torch.isfinite(losses[f"{k}_s{t}"]) and losses[f"{k}_s{t}"] > 0, (k, t)
        w0, w1 = head.mask_heads[0].convs[0].weight, head.mask_heads[1].convs[0].weight
        g = torch.autograd.grad(losses["loss_mask_s2"], (w0, w1), retain_graph=True,
                                allow_unused=True)
        if flow:  # stage 2's mask loss trains mask heads 0 and 1 through the 1x1 convs
            assert all(x is not None and x.abs().sum() > 0 for x in g)
            res = [head.mask_heads[t].conv_res[0].weight for t in (1, 2)]
            g_res = torch.autograd.grad(losses["loss_mask_s2"], res, retain_graph=True)
            assert all(x.abs().sum() > 0 for x in g_res)
            unused = torch.autograd.grad(losses["loss_mask_s0"], res, allow_unused=True)
            assert all(x is None for x in unused)
        else:
            assert all(x is None for x in g)


def test_semantic_feature_is_added_to_box_and_mask_roi_features():
    head = _head()
    feats, semantic, proposals, _ = _scene(3)
    rois = boxes_to_rois(proposals)
    with_sem = CascadeContext(feats, SIZES, semantic_feat=semantic)
    without = CascadeContext(feats, SIZES)
    pooled = roi_align(semantic, rois, (14, 14), 1 / 8, 0, aligned=True)
    _, _, box_sem = head.box_forward(0, with_sem, rois)
    _, _, box_plain = head.box_forward(0, without, rois)
    torch.testing.assert_close(box_sem - box_plain, F.avg_pool2d(pooled, 2))
    torch.testing.assert_close(head.mask_roi_features(with_sem, rois)
                               - head.mask_roi_features(without, rois), pooled)


def _hand_predict(head: HTCRoIHead, feats, semantic, proposals):
    """HTC inference written out (mmdet ``simple_test``): box stages with the semantic RoI
    features, mean logits, the last stage's boxes; masks chained on the final boxes and their
    sigmoids averaged."""
    counts = [len(p) for p in proposals]
    boxes, all_logits = list(proposals), []
    for t, box_head in enumerate(head.box_heads):
        rois = boxes_to_rois(boxes)
        sem = F.adaptive_avg_pool2d(roi_align(semantic, rois, (14, 14), 1 / 8, 0,
                                              aligned=True), 7)
        logits, deltas = box_head(head.box_extractor(feats, rois) + sem)
        all_logits.append(logits)
        if t < 2:
            labels = logits[:, 1:].argmax(1) + 1
            boxes = [box_head.refine(b, d, lab, s) for b, d, lab, s in zip(
                boxes, deltas.split(counts), labels.split(counts), SIZES)]
    mean = sum(all_logits) / 3
    dets = head.box_heads[-1].predict(boxes, mean.split(counts), deltas.split(counts), SIZES,
                                      head.test_cfg)
    det_boxes = [d[0] for d in dets]
    rois = boxes_to_rois(det_boxes)
    x = head.mask_extractor(feats, rois) + roi_align(semantic, rois, (14, 14), 1 / 8, 0,
                                                     aligned=True)
    channel = torch.cat([d[2] for d in dets]) - 1
    probs, previous = [], None
    for mask_head in head.mask_heads:
        inp = x if previous is None else x + torch.relu(mask_head.conv_res[0](previous))
        for conv in mask_head.convs:
            inp = torch.relu(conv(inp))
        previous = inp
        logits = mask_head.conv_logits(mask_head.upsample(inp))
        probs.append(logits[torch.arange(len(channel)), channel].sigmoid())
    return dets, sum(probs) / 3


def test_inference_ensemble_matches_hand_written_loop():
    head = _head().eval()
    feats, semantic, proposals, _ = _scene(3)
    out = head.predict(feats, proposals, SIZES,
                       context=CascadeContext(feats, SIZES, semantic_feat=semantic))
    with torch.no_grad():
        dets, probs = _hand_predict(head, feats, semantic, proposals)
    assert all(len(d["boxes"]) > 0 for d in out)
    for d, (b, s, lab) in zip(out, dets):
        torch.testing.assert_close(d["boxes"], b)
        torch.testing.assert_close(d["scores"], s)
        assert torch.equal(d["labels"], lab)
    torch.testing.assert_close(torch.cat([d["mask_probs"] for d in out]), probs)
    none = head.predict(feats, [torch.zeros(0, 4)] * 2, SIZES,
                        context=CascadeContext(feats, SIZES, semantic_feat=semantic))
    assert all(d["boxes"].shape == (0, 4) and d["mask_probs"].shape == (0, 28, 28)
               for d in none)


def test_out_of_order_mask_stages_are_refused():
    head = _head()
    feats, _, proposals, _ = _scene(3)
    with pytest.raises(RuntimeError, match="stage 0's features of these RoIs are missing"):
        head.mask_forward(1, CascadeContext(feats, SIZES), boxes_to_rois(proposals))


# ------------------------------------------------------------------------- semantic head
def test_fused_semantic_head_matches_slow_reference():
    """mmdet's order: resize to P3 first, then the level's 1x1 conv + ReLU (C2)."""
    head = FusedSemanticHead(in_channels=C, conv_channels=6, num_classes=5)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, C, 16 // 2**i, 16 // 2**i, generator=g) for i in range(5)]
    logits, embedding = head(feats)
    assert logits.shape == (2, 5, 8, 8) and embedding.shape == (2, 6, 8, 8)

    def fuse(resize_first: bool) -> Tensor:
        x = 0
        for feat, lateral in zip(feats, head.lateral_convs):
            if resize_first:
                y = torch.relu(lateral(F.interpolate(feat, (8, 8), mode="bilinear",
                                                     align_corners=True)))
            else:
                y = F.interpolate(torch.relu(lateral(feat)), (8, 8), mode="bilinear",
                                  align_corners=True)
            x = x + y
        for conv in head.convs:
            x = torch.relu(conv(x))
        return x

    x = fuse(resize_first=True)
    torch.testing.assert_close(logits, head.conv_logits(x))
    torch.testing.assert_close(embedding, torch.relu(head.conv_embedding(x)))
    assert not torch.allclose(head.conv_logits(fuse(resize_first=False)), logits)


def test_semantic_loss_by_hand_ignore_and_bad_labels():
    head = FusedSemanticHead(num_levels=1, fusion_level=0, in_channels=2, conv_channels=2,
                             num_classes=3, loss_weight=0.2)
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # [1, 3, 1, 2]
    # the 2x4 label map is rescaled (nearest) to the 1x2 logits: pixels (0, 0) and (0, 2)
    labels = torch.tensor([[[0, 255, 2, 0], [255, 255, 255, 255]]])
    expected = 0.2 * (-torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)[0]
                      - torch.log_softmax(torch.tensor([0.0, 1.0, 0.0]), 0)[2]) / 2
    torch.testing.assert_close(head.loss(logits, labels)["loss_semantic_seg"], expected)
    labels[0, 0, 2] = 255  # one labelled pixel left
    expected = 0.2 * -torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)[0]
    torch.testing.assert_close(head.loss(logits, labels)["loss_semantic_seg"], expected)
    nothing = head.loss(logits, torch.full_like(labels, 255))["loss_semantic_seg"]
    assert nothing.item() == 0.0  # nn.CrossEntropyLoss would give NaN
    labels[0, 1, 3] = 7
    with pytest.raises(ValueError, match="sem_seg of image 0: label 7 is outside 0..2"):
        head.loss(logits, labels)


def test_pad_semantic_maps():
    targets = [{"sem_seg": torch.tensor([[1, 2], [3, 4]])}, {"sem_seg": torch.tensor([[5]])}]
    out = pad_semantic_maps(targets, (2, 3))
    assert torch.equal(out, torch.tensor([[[1, 2, 255], [3, 4, 255]],
                                          [[5, 255, 255], [255, 255, 255]]]))
    with pytest.raises(ValueError, match=r"target 1 \(image_id 4\): a semantic head needs "
                                         "'sem_seg'"):
        pad_semantic_maps([targets[0], {"image_id": 4}], (2, 3))


# ------------------------------------------------------------------------- detectors
def _batch(empty: bool = False):
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    boxes = torch.zeros(0, 4) if empty else torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    masks = torch.zeros(len(boxes), 64, 80, dtype=torch.uint8)
    if not empty:
        masks[0, 6:50, 4:40] = 1
    sem = torch.zeros(64, 80, dtype=torch.long)
    sem[6:50, 4:40] = 1
    targets = [
        {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.long), "masks": masks,
         "sem_seg": sem},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "masks": torch.zeros(0, 48, 64, dtype=torch.uint8),
         "sem_seg": torch.full((48, 64), 255, dtype=torch.long)},
    ]
    return images, targets


@pytest.mark.parametrize("empty", [False, True])
def test_slim_htc_train_and_eval(empty):
    model = zoo.build("htc_slim_fpn", num_classes=2, image_scale=(64, 64), semantic_classes=4)
    images, targets = _batch(empty)
    losses = model(images, targets)
    assert "loss_semantic_seg" in losses and losses["loss_semantic_seg"] > 0
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    if empty:
        for t in range(3):
            assert losses[f"loss_box_s{t}"] == 0 and losses[f"loss_mask_s{t}"] == 0
    total.backward()
    assert model.semantic_head.conv_embedding.weight.grad.abs().sum() > 0
    dets = model.eval()(images)
    assert len(dets) == 2 and all(d["masks"].shape[1:] == im.shape[1:]
                                  for d, im in zip(dets, images))


def test_semantic_targets_are_required_and_checked():
    model = zoo.build("htc_slim_fpn", num_classes=2, image_scale=(64, 64))
    images, targets = _batch()
    del targets[1]["sem_seg"]
    with pytest.raises(ValueError, match=r"target 1 \(image_id \?\): a semantic head needs"):
        model(images, targets)
    images, targets = _batch()
    targets[0]["sem_seg"] = targets[0]["sem_seg"][:, :70]
    with pytest.raises(ValueError, match=r"target 0 .*sem_seg of shape \(64, 70\) does not "
                                         r"match the 64x80 image"):
        model(images, targets)
    # without the semantic branch the maps are not needed
    plain = zoo.build("htc_without_semantic_slim_fpn", num_classes=2, image_scale=(64, 64))
    images, targets = _batch()
    for t in targets:
        del t["sem_seg"]
    assert "loss_semantic_seg" not in plain(images, targets)


def test_slim_htc_trains_on_synthetic_smoke():
    from glimpse.data import build_dataset, collate

    ds = build_dataset("synthetic-smoke", split="train")
    images, targets = collate([ds[i] for i in range(2)])
    model = zoo.build("htc_slim_fpn", num_classes=ds.num_classes,
                      image_scale=ds.default_image_scale,
                      semantic_classes=len(ds.sem_seg_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        losses = model(images, targets)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        assert torch.isfinite(total) and losses["loss_semantic_seg"] > 0
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
