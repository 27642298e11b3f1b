"""The composed detector (FishNet + CARAFE FPN + GA-RPN + HTC): its parts, the refusals of
parts given together with their settings, one training step and an evaluation."""

from __future__ import annotations

import pytest
import torch

from glimpse import zoo
from glimpse.backbones.fishnet import FishNetBackbone
from glimpse.detectors.carafe import mask_rcnn_carafe
from glimpse.detectors.composed import htc_ga_carafe
from glimpse.heads.guided_anchor import GARPNHead
from glimpse.heads.htc import HTCRoIHead
from glimpse.heads.semantic import FusedSemanticHead
from glimpse.layers import CARAFE
from glimpse.necks import FPN


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parts_and_parameter_count():
    with torch.device("meta"):
        model = zoo.build("htc_ga_fishnet188_fpn_carafe", 80)
        htc_r50 = zoo.build("htc_r50_fpn", 80)
        carafe_r50 = zoo.build("mask_rcnn_r50_fpn_carafe", 80)
        mask_r50 = zoo.build("mask_rcnn_r50_fpn", 80)
        ga_r50 = zoo.build("ga_faster_rcnn_r50_fpn", 80)
        faster_r50 = zoo.build("faster_rcnn_r50_fpn", 80)
    assert isinstance(model.backbone, FishNetBackbone)
    assert isinstance(model.neck, FPN)
    assert sum(isinstance(m, CARAFE) for m in model.neck.modules()) == 4
    assert isinstance(model.rpn_head, GARPNHead)
    assert isinstance(model.roi_head, HTCRoIHead)
    assert model.roi_head.interleaved and model.roi_head.mask_info_flow
    assert isinstance(model.semantic_head, FusedSemanticHead)
    assert all(sum(isinstance(m, CARAFE) for m in head.modules()) == 1
               for head in model.roi_head.mask_heads)
    assert model.preprocessor.size_divisor == 64
    # the parts add up: HTC-R50 with FishNet-188 and the CARAFE paper's neck on it for
    # ResNet-50 and its FPN, CARAFE's mask-head change (Mask R-CNN -> Mask R-CNN CARAFE: one
    # mask head there, three here) and GA-RPN's head change (Faster -> GA-Faster R-CNN)
    with torch.device("meta"):
        carafe_neck = mask_rcnn_carafe(zoo.build_backbone("fishnet188"), 80).neck
    mask_delta = (_count(carafe_r50.roi_head.mask_heads) - _count(mask_r50.roi_head.mask_heads))
    rpn_delta = _count(ga_r50.rpn_head) - _count(faster_r50.rpn_head)
    expected = (_count(htc_r50) - _count(htc_r50.backbone) - _count(htc_r50.neck)
                + _count(model.backbone) + _count(carafe_neck) + 3 * mask_delta + rpn_delta)
    assert _count(model) == expected == 98_070_010


def test_slim_trains_one_step_and_evaluates():
    from glimpse.data import build_dataset, collate

    ds = build_dataset("synthetic-smoke", split="train")
    images, targets = collate([ds[i] for i in range(2)])
    torch.manual_seed(0)
    model = zoo.build("htc_ga_fishnet_slim_fpn_carafe", num_classes=ds.num_classes,
                      image_scale=ds.default_image_scale,
                      semantic_classes=len(ds.sem_seg_classes), fc_channels=64)
    losses = model(images, targets)
    for key in ("loss_anchor_loc", "loss_anchor_shape", "loss_semantic_seg", "loss_mask_s2",
                "loss_cls_s2"):
        assert key in losses
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total) and total > 0
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.005 * p.grad
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2
    for det, image in zip(dets, images):
        assert det["boxes"].shape[-1] == 4 and torch.isfinite(det["boxes"]).all()
        assert det["masks"].shape[-2:] == image.shape[-2:]


def test_parts_and_their_settings_are_refused_together():
    backbone = zoo.build_backbone("fishnet_slim")
    with pytest.raises(ValueError, match="rpn_cfg configures an anchor-based RPN"):
        htc_ga_carafe(backbone, 2, fpn_channels=64, rpn_cfg=None)
    neck = FPN(list(backbone.out_channels.values()), 64)
    with pytest.raises(ValueError, match="neck= was passed, so upsampler would be ignored"):
        htc_ga_carafe(backbone, 2, fpn_channels=64, neck=neck, upsampler="bilinear")
    rpn = GARPNHead(64)
    from glimpse.heads.guided_anchor import GA_RPN_TRAIN
    with pytest.raises(ValueError, match="rpn_head= was passed, so ga_train_cfg"):
        htc_ga_carafe(backbone, 2, fpn_channels=64, rpn_head=rpn, ga_train_cfg=GA_RPN_TRAIN)
    model = htc_ga_carafe(backbone, 2, fpn_channels=64, neck=neck, rpn_head=rpn,
                          semantic=False, mask_upsampler=None)
    assert model.neck is neck and model.rpn_head is rpn and model.semantic_head is None
