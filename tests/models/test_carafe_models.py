"""Faster / Mask R-CNN with CARAFE: mmdetection's parameter counts, the FPN_CARAFE layout, the
mask head's CARAFE, every Table 2 upsampler by name, and a slim model's training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glimpse import zoo
from glimpse.backbones import resnet_slim
from glimpse.detectors.carafe import faster_rcnn_carafe, mask_rcnn_carafe
from glimpse.layers import CARAFE, UPSAMPLERS, DySample
from glimpse.necks import FPN, ScaleThenCrop, fpn_carafe

R50_CHANNELS = [256, 512, 1024, 2048]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# mmdetection 3.3.0 (../shared/tools/mmdet-oracle/README.md), 80 classes.
@pytest.mark.parametrize("name, expected", [("faster_rcnn_r50_fpn_carafe", 47_358_576),
                                            ("mask_rcnn_r50_fpn_carafe", 49_813_604)])
def test_parameter_counts_match_mmdet(name, expected):
    with torch.device("meta"):
        model = zoo.build(name, 80)
    assert _count(model) == expected
    assert model.preprocessor.size_divisor == 64


def test_fpn_carafe_layout():
    neck = fpn_carafe(R50_CHANNELS)
    assert len(neck.upsamplers) == 4  # P6 -> P5 joins the top-down path
    assert all(isinstance(u, ScaleThenCrop) and isinstance(u.module, CARAFE)
               for u in neck.upsamplers)
    plain = FPN(R50_CHANNELS)
    assert _count(neck) - _count(plain) == 4_718_848 + 590_080 + 4 * 74_148
    # CARAFE keeps its own init inside the neck (FPN re-initialises only its own convs)
    assert neck.upsamplers[0].module.content_encoder.weight.std() < 0.002


def test_fpn_carafe_outputs_and_p6_feeds_p5():
    torch.manual_seed(0)
    neck = fpn_carafe([8, 8, 8, 8], out_channels=8)
    inputs = [torch.randn(1, 8, 64 // s, 64 // s) for s in (1, 2, 4, 8)]
    outs = neck(inputs)
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    # P5 = conv(lateral(C5) + CARAFE(conv(C5)))
    c5 = inputs[3]
    p6_lateral = neck.extra_convs[0](c5)
    lateral = neck.lateral_convs[3](c5) + neck.upsamplers[3](p6_lateral, (8, 8))
    torch.testing.assert_close(outs[3], neck.fpn_convs[3](lateral))
    torch.testing.assert_close(outs[4], neck.extra_fpn_convs[0](p6_lateral))


def test_mask_head_uses_carafe_without_relu():
    model = mask_rcnn_carafe(resnet_slim(base_width=8), 3, fpn_channels=16)
    upsample = model.roi_head.mask_heads[0].upsample
    assert isinstance(upsample, CARAFE) and upsample.scale_factor == 2
    default = zoo.build("mask_rcnn_slim_fpn", 3)
    assert isinstance(default.roi_head.mask_heads[0].upsample, nn.Sequential)  # deconv + ReLU


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
def test_every_upsampler_by_name_in_the_fpn_builder(name):
    torch.manual_seed(0)
    model = zoo.build("faster_rcnn_slim_fpn", 2, upsampler=name, image_scale=(64, 64))
    feats = model.features(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 64 // s, 64 // s)
                                               for s in (4, 8, 16, 32, 64)]
    carafe_model = faster_rcnn_carafe(resnet_slim(base_width=8), 2, fpn_channels=8,
                                      upsampler=name)
    assert len(carafe_model.neck.upsamplers) == 4


def test_dysample_in_fpn_carafe_adds_its_offsets_only():
    base = _count(faster_rcnn_carafe(resnet_slim(base_width=8), 2, upsampler="nearest"))
    model = faster_rcnn_carafe(resnet_slim(base_width=8), 2, upsampler="dysample")
    assert isinstance(model.neck.upsamplers[0].module, DySample)
    assert _count(model) - base == 4 * (256 * 32 + 32)


def _batch():
    images = [torch.rand(3, 60, 80), torch.rand(3, 50, 64)]
    targets = []
    for image in images:
        h, w = image.shape[1:]
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 6:40, 4:40] = 1
        masks[1, 10:30, 30:60] = 1
        targets.append({"boxes": torch.tensor([[4.0, 6.0, 40.0, 40.0], [30.0, 10.0, 60.0, 30.0]]),
                        "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


@pytest.mark.parametrize("name", ["faster_rcnn_slim_fpn_carafe", "mask_rcnn_slim_fpn_carafe"])
def test_slim_train_step_has_finite_losses(name):
    torch.manual_seed(0)
    model = zoo.build(name, 2, image_scale=(64, 64))
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert all(torch.isfinite(v) for k, v in losses.items() if k.startswith("loss_"))
    if name.startswith("mask"):
        assert losses["loss_mask"] > 0
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    opt.zero_grad()
    total.backward()
    carafe = model.neck.upsamplers[0].module
    assert carafe.content_encoder.weight.grad.abs().sum() > 0
    opt.step()
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2 and all(d["boxes"].shape[-1] == 4 for d in dets)


def test_neck_settings_are_refused():
    with pytest.raises(TypeError):
        faster_rcnn_carafe(resnet_slim(base_width=8), 2, neck=nn.Identity())
    with pytest.raises(ValueError, match="unknown upsampler 'cubic'"):
        mask_rcnn_carafe(resnet_slim(base_width=8), 2, mask_upsampler="cubic")
