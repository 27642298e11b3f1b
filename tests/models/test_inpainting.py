"""Inpainting (CARAFE paper Table 7): PartialConv2d against a slow loop, Partial Conv and
Global&Local layouts and counts, losses by hand, slim train steps, the zoo rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glimpse import zoo
from glimpse.inpainting import GLGenerator, PConvUNet, from_unit, local_crops, to_unit
from glimpse.layers import CARAFE, PartialConv2d
from glimpse.losses import gram_matrix, masked_l1_loss, masked_tv_loss


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _slow_partial_conv(conv: PartialConv2d, x: torch.Tensor, mask: torch.Tensor):
    """Window by window: sum(1) / sum(M) renormalisation, zero where no valid input."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    xp = torch.nn.functional.pad(x * mask, (p, p, p, p))
    mp = torch.nn.functional.pad(mask.expand_as(x) if not conv.multi_channel else mask,
                                 (p, p, p, p))
    b, _, h, w = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = torch.zeros(b, conv.out_channels, ho, wo, dtype=torch.float64)
    new = torch.zeros(b, 1, ho, wo, dtype=torch.float64)
    window = (x.shape[1] if conv.multi_channel else 1) * k * k
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                patch = xp[n, :, i * s:i * s + k, j * s:j * s + k].double()
                mpatch = mp[n, :, i * s:i * s + k, j * s:j * s + k].double()
                valid = mpatch.sum() if conv.multi_channel else mpatch[0].sum()
                if valid == 0:
                    continue
                new[n, 0, i, j] = 1
                for o in range(conv.out_channels):
                    val = (conv.weight[o].double() * patch).sum() * window / valid
                    out[n, o, i, j] = val + (conv.bias[o].double() if conv.bias is not None
                                             else 0)
    return out, new


@pytest.mark.parametrize("multi_channel", [False, True])
@pytest.mark.parametrize("stride, bias", [(1, True), (2, False)])
def test_partial_conv_matches_slow_loop(multi_channel, stride, bias):
    torch.manual_seed(0)
    conv = PartialConv2d(3, 4, 3, stride, 1, bias=bias, multi_channel=multi_channel)
    x = torch.randn(2, 3, 7, 6)
    mask = torch.ones(2, 3 if multi_channel else 1, 7, 6)
    mask[0, ..., 1:6, 1:5] = 0  # a hole larger than the kernel: some windows see nothing
    if multi_channel:
        mask[1, 0, :3] = 0  # channels differ
    y, new = conv(x, mask)
    ref, ref_new = _slow_partial_conv(conv, x, mask)
    assert torch.allclose(y.double(), ref, atol=1e-5)
    assert torch.equal(new[:, :1].double(), ref_new)
    assert new.shape[1] == (4 if multi_channel else 1)
    assert (y[0][:, new[0, 0] == 0] == 0).all()  # no valid input -> exactly zero
    assert (new[0, 0] == 0).any()  # the hole is wider than the kernel


def test_partial_conv_full_mask_is_plain_conv_and_errors_name_the_mask():
    conv = PartialConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    y, new = conv(x, torch.ones(1, 1, 5, 5))
    inner = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.allclose(y[..., 1:-1, 1:-1], inner[..., 1:-1, 1:-1], atol=1e-6)
    assert torch.allclose(y[..., 0, 0], ((inner[..., 0, 0] - conv.bias) * 9 / 4 + conv.bias),
                          atol=1e-5)  # corner: 4 of 9 taps inside the image
    with pytest.raises(ValueError, match=r"mask must be \[B, 1, 5, 5\]"):
        conv(x, torch.ones(1, 2, 5, 5))


def test_inpainting_losses_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx(2.5)
    # vertical pairs: (1,3) masked at the top-left -> |1-3| = 2; horizontal: (1,2) -> 1
    assert masked_tv_loss(pred, mask).item() == pytest.approx(3.0)
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]
    assert torch.allclose(gram_matrix(f), torch.tensor([[[5.0, 3.0], [3.0, 9.0]]]) / 4)


def test_global_local_generator_count_by_hand():
    def conv_bn(c_in, c_out, k):
        return c_in * c_out * k * k + 2 * c_out
    encoder = (conv_bn(4, 64, 5) + conv_bn(64, 128, 3) + conv_bn(128, 128, 3)
               + conv_bn(128, 256, 3) + 2 * conv_bn(256, 256, 3))
    neck = 4 * conv_bn(256, 256, 3)
    decoder = (2 * conv_bn(256, 256, 3) + conv_bn(256, 128, 4) + conv_bn(128, 128, 3)
               + conv_bn(128, 64, 4) + conv_bn(64, 32, 3) + 32 * 3 * 9 + 3)
    with torch.device("meta"):
        gen = GLGenerator()
        carafe = GLGenerator(upsampler="carafe")
    assert _count(gen) == encoder + neck + decoder == 6_069_155
    ups = [m for m in carafe.modules() if isinstance(m, CARAFE)]
    assert [m.channels for m in ups] == [256, 128]
    assert _count(carafe) == (_count(gen) - conv_bn(256, 128, 4) - conv_bn(128, 64, 4)
                              + conv_bn(256, 128, 1) + conv_bn(128, 64, 1)
                              + sum(_count(m) for m in ups))


def test_pconv_unet_layout_and_count():
    widths = [3, 64, 128, 256, 512, 512, 512, 512, 512]
    kernels = [7, 5, 5, 3, 3, 3, 3, 3]
    enc = 3 * 64 * 49 + 64 + sum(widths[i] * widths[i + 1] * kernels[i] ** 2
                                 + 2 * widths[i + 1] for i in range(1, 8))
    dec = sum((widths[i + 1] + widths[i]) * widths[i] * 9 + 2 * widths[i]
              for i in range(1, 8)) + (64 + 3) * 3 * 9 + 3
    with torch.device("meta"):
        model = PConvUNet()
        carafe = PConvUNet(upsampler="carafe")
    assert _count(model) == enc + dec == 32_859_796
    ups = [m for m in carafe.modules() if isinstance(m, CARAFE)]
    assert sorted(m.channels for m in ups) == [64, 128, 256, 512, 512, 512, 512, 512]
    assert _count(carafe) - _count(model) == sum(_count(m) for m in ups)


def test_local_crops_follow_the_hole_and_stay_inside():
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, 2:6, 3:7] = 1  # centre (4, 5) -> window starts clamp at 0
    masks[1, :, 10:14, 8:12] = 1  # centre (12, 10) -> rows 8..15, cols 6..13
    crops = local_crops(images, masks, 8)
    assert torch.equal(crops[0], images[0, :, 0:8, 1:9])
    assert torch.equal(crops[1], images[1, :, 8:16, 6:14])
    with pytest.raises(ValueError, match="local size 32 exceeds"):
        local_crops(images, masks, 32)


@pytest.mark.parametrize("name", [n for n in zoo.INPAINTERS if "slim" in n])
def test_slim_inpainter_train_step_and_eval(name):
    torch.manual_seed(0)
    model = zoo.build(name)
    images = torch.rand(2, 3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    masks[:, :, 20:44, 16:40] = 1
    losses = model.train()(images, masks)
    expected = ({"loss_l1_hole", "loss_gan"} if name.startswith("global_local")
                else {"loss_l1_hole", "loss_l1_valid", "loss_tv"})
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    if name.startswith("global_local"):
        _, completed = model.complete(images, masks)
        d_loss = model.discriminator_loss(images, masks, completed)
        assert torch.isfinite(d_loss)
        d_loss.backward()
    with torch.no_grad():
        out = model.eval()(images, masks)
    keep = masks.expand(-1, 3, -1, -1) == 0
    assert torch.equal(out["completed"][keep], images[keep])
    if name.startswith("global_local"):  # mmedit clips the G&L output to [-1, 1]
        assert out["output"].min() >= 0 and out["output"].max() <= 1


def test_inpainting_bad_input_is_named():
    model = zoo.build("pconv_slim").eval()
    with pytest.raises(ValueError, match=r"masks must be \[B, 1, H, W\]"):
        model(torch.rand(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32, got 48x40"):
        model(torch.rand(1, 3, 48, 40), torch.zeros(1, 1, 48, 40))
    with pytest.raises(ValueError, match="unknown loss_weights keys"):
        PConvUNet(loss_weights={"perceptal": 1.0})
    with pytest.raises(ValueError, match="takes no num_classes"):
        zoo.build("pconv_slim", num_classes=3)


def test_pconv_perceptual_and_style_terms_with_a_feature_network(tmp_path):
    from glimpse.inpainting import VGG16Features

    with pytest.raises(FileNotFoundError, match="VGG-16 weights not found"):
        VGG16Features(tmp_path / "vgg16.pth")

    class TwoMaps(nn.Module):  # stands in for VGG-16 (no weights on this machine)
        def forward(self, x):
            return [x, nn.functional.avg_pool2d(x, 2)]

    torch.manual_seed(0)
    model = PConvUNet(base_width=8, depth=3, vgg=TwoMaps()).train()
    images, masks = torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    masks[..., 4:12, 4:12] = 1
    losses = model(images, masks)
    assert {"loss_perceptual", "loss_style"} <= set(losses)
    with torch.no_grad():  # train-mode BN again: the same output as inside the forward
        output = to_unit(model.network(from_unit(images) * (1 - masks), masks))
    completed = output * masks + images * (1 - masks)
    feats = TwoMaps()
    perceptual = sum(nn.functional.l1_loss(p, t) for pred in (output, completed)
                     for p, t in zip(feats(pred), feats(images)))
    style = sum(nn.functional.l1_loss(gram_matrix(p), gram_matrix(t))
                for pred in (output, completed) for p, t in zip(feats(pred), feats(images)))
    assert losses["loss_perceptual"].item() == pytest.approx(0.05 * perceptual.item(), rel=1e-5)
    assert losses["loss_style"].item() == pytest.approx(120 * style.item(), rel=1e-5)
