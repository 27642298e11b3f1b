"""Segmentors of the CARAFE paper (issue 12): dilated ResNet, PPM, UperNet, PSPNet, the
to-size upsampling of the CARAFE positions, and the zoo rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glimpse import zoo
from glimpse.backbones.resnet import resnet50, resnet_slim
from glimpse.layers import CARAFE
from glimpse.necks import PyramidPooling, ResizeThenScale, sized_upsampler
from glimpse.segmentors import DILATED_D8, UPerHead, pspnet_slim, upernet_slim


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


BN = 2  # weight + bias per channel


def test_dilated_resnet50_keeps_parameters_and_has_output_stride_8():
    with torch.device("meta"):
        plain, dilated = resnet50(), resnet50(**DILATED_D8)
    assert _count(plain) == _count(dilated) == 23_508_032
    assert dilated.out_strides == {"c2": 4, "c3": 8, "c4": 8, "c5": 8}
    # CSAIL / mmseg contract_dilation: first block of a dilated stage at half the dilation
    assert dilated.layer3[0].conv2.dilation == (1, 1)
    assert dilated.layer3[1].conv2.dilation == (2, 2)
    assert dilated.layer4[0].conv2.dilation == (2, 2)
    assert dilated.layer4[2].conv2.dilation == (4, 4)
    assert dilated.layer4[0].conv2.stride == (1, 1)
    slim = resnet_slim(**DILATED_D8).eval()
    with torch.no_grad():
        feats = slim(torch.rand(1, 3, 64, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "c2": (16, 24), "c3": (8, 12), "c4": (8, 12), "c5": (8, 12)}
    with pytest.raises(ValueError, match="dilations must be 4 positive ints"):
        resnet_slim(dilations=(1, 1, 2))


@pytest.mark.parametrize("order", ["upsample_first", "conv_first"])
@pytest.mark.parametrize("upsampler", [None, "carafe", "deconv"])
def test_pyramid_pooling_shapes_and_count(order, upsampler):
    ppm = PyramidPooling(32, 8, 16, order=order, upsampler=upsampler).train()
    out = ppm(torch.rand(2, 32, 13, 7))
    assert out.shape == (2, 16, 13, 7)
    if upsampler is None:
        assert _count(ppm) == 4 * (_conv(32, 8, 1) + 8 * BN) + _conv(32 + 32, 16, 3) + 16 * BN
    up_channels = 32 if order == "upsample_first" else 8
    if upsampler == "carafe":
        assert all(isinstance(u.module, CARAFE) and u.module.channels == up_channels
                   for u in ppm.upsamplers)


def test_pyramid_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="order must be"):
        PyramidPooling(8, order="sideways")
    with pytest.raises(ValueError, match="bins must be positive ints"):
        PyramidPooling(8, bins=(1, 0))
    with pytest.raises(ValueError, match="unknown upsampler 'bicubic'"):
        PyramidPooling(8, upsampler="bicubic")


def test_resize_then_scale_reaches_any_size():
    nearest = ResizeThenScale(nn.Upsample(scale_factor=2, mode="nearest"), 2)
    x = torch.arange(4.0).view(1, 1, 2, 2)
    # 2x2 -> 3x3: already ceil(3 / 2) = 2 rows, so pure x2 nearest then crop
    assert torch.equal(nearest(x, (3, 3)), torch.tensor(
        [[[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [2.0, 2.0, 3.0]]]]))
    pooled = torch.ones(1, 1, 1, 1)
    assert torch.equal(nearest(pooled, (7, 5)), torch.ones(1, 1, 7, 5))
    bilinear = sized_upsampler(None)(4)
    assert bilinear(torch.rand(1, 4, 3, 3), (10, 11)).shape == (1, 4, 10, 11)
    factory = sized_upsampler("carafe", 8)
    up = factory(16)
    assert up.module.scale_factor == 8 and up(torch.rand(1, 16, 2, 3), (13, 20)).shape == (
        1, 16, 13, 20)


def test_upernet_decoder_count_is_csail_layout():
    """fpn_dim 512, PPM 1/2/3/6 on 2048 channels, 150 classes, no bias except the classifier."""
    ppm = 4 * (_conv(2048, 512, 1) + 512 * BN) + _conv(2048 + 4 * 512, 512, 3) + 512 * BN
    laterals = sum(_conv(c, 512, 1) + 512 * BN for c in (256, 512, 1024))
    fpn_outs = 3 * (_conv(512, 512, 3) + 512 * BN)
    fuse = _conv(4 * 512, 512, 3) + 512 * BN + _conv(512, 150, 1, bias=True)
    with torch.device("meta"):
        head = UPerHead([256, 512, 1024, 2048], 150)
        model = zoo.build("upernet_r50")
    assert _count(head) == ppm + laterals + fpn_outs + fuse == 40_590_486
    assert _count(model) == 40_590_486 + 23_508_032


def test_pspnet_heads_count():
    main = 4 * (_conv(2048, 512, 1) + 512 * BN) + _conv(4096, 512, 3) + 512 * BN + _conv(
        512, 150, 1, bias=True)
    aux = _conv(1024, 256, 3) + 256 * BN + _conv(256, 150, 1, bias=True)
    with torch.device("meta"):
        model = zoo.build("pspnet_r50_d8")
    assert _count(model.decode_head) == main == 23_150_742
    assert _count(model.aux_head) == aux == 2_398_358
    assert model.backbone.out_strides["c5"] == 8


@pytest.mark.parametrize("position, modules, channels", [
    ("fpn_upsampler", 3, 512), ("ppm_upsampler", 4, 2048), ("fuse_upsampler", 3, 512)])
def test_carafe_at_each_upernet_position(position, modules, channels):
    with torch.device("meta"):
        plain = UPerHead([256, 512, 1024, 2048], 150)
        head = UPerHead([256, 512, 1024, 2048], 150, **{position: "carafe"})
    carafes = [m for m in head.modules() if isinstance(m, CARAFE)]
    assert len(carafes) == modules and {m.channels for m in carafes} == {channels}
    assert _count(head) - _count(plain) == sum(_count(m) for m in carafes)
    if position == "fuse_upsampler":
        assert [m.scale_factor for m in carafes] == [2, 4, 8]


def test_zoo_builds_every_segmentor():
    assert zoo.segmentor_names() == sorted(zoo.SEGMENTORS)
    for name in zoo.segmentor_names():
        with torch.device("meta"):
            model = zoo.build(name, num_classes=7)
        assert model.num_classes == 7
        assert ("carafe" in name) == any(isinstance(m, CARAFE) for m in model.modules())
    model = zoo.build("upernet_slim", 3, frozen_stages=1)
    assert not model.backbone.layer1[0].conv1.weight.requires_grad


def _batch(num_classes: int):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 70, 90, generator=g), torch.rand(3, 64, 48, generator=g)]
    targets = [{"sem_seg": torch.randint(0, num_classes, im.shape[1:], generator=g)}
               for im in images]
    targets[1]["sem_seg"][:10] = 255
    return images, targets


@pytest.mark.parametrize("name", [n for n in zoo.SEGMENTORS if "slim" in n])
def test_slim_segmentor_train_step_and_eval(name):
    torch.manual_seed(0)
    model = zoo.build(name, num_classes=5)
    images, targets = _batch(5)
    model.train()
    losses = model(images, targets)
    assert set(losses) == ({"loss_seg", "loss_aux"} if "pspnet" in name else {"loss_seg"})
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert all(p.grad is not None for p in model.decode_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert [tuple(o["sem_seg"].shape) for o in out] == [(5, 70, 90), (5, 64, 48)]
    assert torch.equal(out[0]["labels"], out[0]["sem_seg"].argmax(0))


def test_upernet_logits_are_at_stride_4():
    model = upernet_slim(4).eval()
    feats = model.backbone(torch.rand(1, 3, 64, 96))
    assert model.decode_head(feats).shape == (1, 4, 16, 24)


def test_segmentor_bad_input_is_named():
    model = pspnet_slim(3).train()
    images = [torch.rand(3, 32, 32)]
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'sem_seg'"):
        model(images, [{}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['sem_seg'\] has labels outside 0..2"):
        model(images, [{"sem_seg": torch.full((32, 32), 3)}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['sem_seg'\] is \(16, 32\)"):
        model(images, [{"sem_seg": torch.zeros(16, 32, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"images\[0\] must be \[3, H, W\]"):
        model([torch.rand(1, 32, 32)], [{"sem_seg": torch.zeros(32, 32, dtype=torch.long)}])
