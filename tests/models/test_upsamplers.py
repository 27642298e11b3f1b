"""CARAFE module and the Table 2 upsamplers: shapes and gradients, CARAFE against a slow loop,
kernel normalisation, identities at initialisation, FLOPs rows, name lookup, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glimpse.layers import (
    CARAFE,
    UPSAMPLERS,
    DySample,
    GuidedUpsample,
    carafe_paper_flops,
    upsampler_factory,
    upsampler_flops,
)
from glimpse.necks import FPN, ScaleThenCrop


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
def test_shape_and_gradient(name):
    torch.manual_seed(0)
    module = upsampler_factory(name)(8)
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    y = module(x)
    assert y.shape == (2, 8, 10, 14)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in module.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
def test_scale_factor_and_empty_batch(name):
    module = upsampler_factory(name, scale_factor=3)(4)
    assert module(torch.randn(1, 4, 3, 2)).shape == (1, 4, 9, 6)
    assert module(torch.zeros(0, 4, 3, 2)).shape == (0, 4, 9, 6)


def _slow_carafe_module(m: CARAFE, x: torch.Tensor) -> torch.Tensor:
    """CARAFE written from the paper with loops: encoder output -> per output pixel kernel ->
    softmax -> weighted sum of the zero-padded k x k neighbourhood of (Y // s, X // s)."""
    s, k, g = m.scale_factor, m.up_kernel, m.up_group
    enc = m.content_encoder(m.channel_compressor(x))  # [B, G k^2 s^2, H, W]
    b, c, h, w = x.shape
    r = (k - 1) // 2
    padded = F.pad(x, (r, r, r, r))
    out = torch.zeros(b, c, h * s, w * s, dtype=x.dtype)
    cg = c // g
    for yy in range(h * s):
        for xx in range(w * s):
            y0, x0, sy, sx = yy // s, xx // s, yy % s, xx % s
            for gi in range(g):
                # encoder channel (gi k^2 + tap) s^2 + sy s + sx holds this pixel's tap
                taps = [enc[:, (gi * k * k + t) * s * s + sy * s + sx, y0, x0]
                        for t in range(k * k)]
                weights = torch.stack(taps, 1).softmax(1)  # [B, k^2]
                window = padded[:, gi * cg:(gi + 1) * cg, y0:y0 + k, x0:x0 + k]
                out[:, gi * cg:(gi + 1) * cg, yy, xx] = torch.einsum(
                    "bt,bct->bc", weights, window.reshape(b, cg, k * k))
    return out


@pytest.mark.parametrize("kwargs", [{}, {"up_group": 2, "up_kernel": 3, "scale_factor": 3}])
def test_carafe_matches_slow_loop(kwargs):
    torch.manual_seed(1)
    m = CARAFE(4, compressed_channels=6, **kwargs).double()
    torch.nn.init.normal_(m.content_encoder.weight, std=0.5)  # far from uniform kernels
    x = torch.randn(2, 4, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), _slow_carafe_module(m, x))


def test_carafe_kernels_sum_to_one_per_group():
    torch.manual_seed(2)
    m = CARAFE(8, up_group=2)
    torch.nn.init.normal_(m.content_encoder.weight, std=1.0)
    kernels = m.kernels(torch.randn(3, 8, 4, 5))
    assert kernels.shape == (3, 2 * 25, 8, 10)
    assert (kernels >= 0).all()
    sums = kernels.view(3, 2, 25, 8, 10).sum(2)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_carafe_init_and_parameters():
    m = CARAFE(256)
    assert sum(p.numel() for p in m.parameters()) == 74_148  # fishnet_carafe.md 2.1
    assert m.content_encoder.out_channels == 100
    assert m.content_encoder.weight.std() < 0.002
    bound = (6 / (256 + 64)) ** 0.5
    assert m.channel_compressor.weight.abs().max() <= bound
    assert 0.0008 < m.content_encoder.weight.std() and m.content_encoder.bias.abs().sum() == 0
    # uniform kernels (the init's limit): every output is the zero-padded 5x5 box mean around
    # its source pixel
    torch.nn.init.zeros_(m.content_encoder.weight)
    x = torch.randn(1, 256, 9, 9)
    box = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True)
    torch.testing.assert_close(m(x), box.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_carafe_gradcheck():
    torch.manual_seed(3)
    m = CARAFE(4, compressed_channels=3, up_kernel=3).double()
    torch.nn.init.normal_(m.content_encoder.weight, std=0.3)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_interpolation_rows_are_torch_interpolate():
    x = torch.randn(1, 3, 4, 5)
    torch.testing.assert_close(upsampler_factory("nearest")(3)(x),
                               F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(upsampler_factory("bilinear")(3)(x),
                               F.interpolate(x, scale_factor=2, mode="bilinear",
                                             align_corners=False))


def test_gum_starts_as_nearest_and_follows_offsets():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 4, 5)
    gum = GuidedUpsample(3)
    torch.testing.assert_close(gum(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    # a constant guidance offset of +1 column reads the right neighbour (zeros past the edge)
    torch.nn.init.constant_(gum.guidance.bias, 0.0)
    with torch.no_grad():
        gum.guidance.bias[0] = 1.0
    shifted = F.pad(x[..., 1:], (0, 1))
    torch.testing.assert_close(gum(x), F.interpolate(shifted, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("dynamic_scope", [False, True])
def test_dysample_zero_offsets_is_bilinear(dynamic_scope):
    torch.manual_seed(5)
    m = DySample(8, dynamic_scope=dynamic_scope)
    torch.nn.init.zeros_(m.offset.weight)
    x = torch.randn(2, 8, 5, 6)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(x), expected)


def test_dysample_group_offsets_are_separate():
    m = DySample(8, groups=4)
    torch.nn.init.zeros_(m.offset.weight)
    with torch.no_grad():  # group 1, all sub-pixels: dx = +4 (scaled by 0.25) -> +1 pixel
        m.offset.bias.zero_()
        m.offset.bias[4:8] = 4.0
    x = torch.randn(1, 8, 4, 6)
    y = m(x)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y[:, :2], bilinear[:, :2])
    torch.testing.assert_close(y[:, 4:], bilinear[:, 4:])
    # interior of group 1 moved by one input pixel = two output pixels
    torch.testing.assert_close(y[:, 2:4, :, 1:9], bilinear[:, 2:4, :, 3:11])


def test_dysample_parameters():
    # +32.7K / +65.5K for 4 upsamplers in the DySample README count weights only
    assert DySample(256).offset.weight.numel() * 4 == 32_768
    plus = DySample(256, dynamic_scope=True)
    assert (plus.offset.weight.numel() + plus.scope.weight.numel()) * 4 == 65_536


def test_flops_rows_against_the_paper():
    rows = {r["name"]: r for r in upsampler_flops()}
    assert list(rows) == list(UPSAMPLERS)
    counted = {name: r["flops_per_input"] for name, r in rows.items()}
    # paper formulas (fishnet_carafe.md 2.6), torch's count omits the bias adds
    assert carafe_paper_flops() == 199_496
    assert counted["carafe"] == carafe_paper_flops() - 2 * 64 - 2 * 4 * 25 == 199_168
    assert counted["nearest"] == 0
    assert counted["bilinear"] == 2 * 4 * 4 * 256 == 8_192
    assert counted["nearest_conv"] == 4 * 2 * 9 * 256**2 == 4_718_592
    assert counted["bilinear_conv"] == 4_718_592 + 8_192
    assert counted["deconv"] == 2 * 9 * 256**2 == 1_179_648
    assert counted["pixel_shuffle"] == 2 * 9 * 256 * 1024
    assert counted["spatial_attention"] == 8_192 + 4 * 2 * 9 * 256
    assert counted["gum"] == 4 * 2 * 9 * 256 * 2 + 8_192
    assert counted["dysample"] == 2 * 256 * 32 + 8_192
    assert rows["carafe"]["paper_flops"] == "199k" and rows["dysample"]["paper_flops"] is None
    assert rows["carafe"]["flops_per_output"] == 199_168 / 4
    assert rows["carafe"]["parameters"] == 74_148


def test_carafe_paper_formula_table():
    # fishnet_carafe.md 2.6: k_up x k_enc and C_m ablation FLOPs
    assert round(carafe_paper_flops(up_kernel=3, encoder_kernel=1) / 100) == 560
    assert round(carafe_paper_flops(up_kernel=7, encoder_kernel=7) / 100) == 13630
    assert round(carafe_paper_flops(compressed_channels=16) / 100) == 884


def test_names_in_fpn_and_bad_input():
    fpn = FPN([8, 8, 8, 8], out_channels=8, upsampler="carafe")
    assert all(isinstance(u, ScaleThenCrop) and isinstance(u.module, CARAFE)
               for u in fpn.upsamplers)
    with pytest.raises(ValueError, match="unknown upsampler 'bicubic'.*carafe"):
        upsampler_factory("bicubic")
    with pytest.raises(TypeError, match="upsampler 'deconv'"):
        upsampler_factory("deconv", up_kernel=5)
    with pytest.raises(ValueError, match=r"x must be \[B, 8, H, W\]"):
        CARAFE(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="up_group"):
        CARAFE(8, up_group=3)
    with pytest.raises(ValueError, match="up_kernel"):
        CARAFE(8, up_kernel=4)
    with pytest.raises(ValueError, match="groups"):
        DySample(6, groups=4)
