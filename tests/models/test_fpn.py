"""FPN: output shapes per extra-level mode, mmdet parameter counts, the upsampler contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.necks import FPN, InterpolateUpsample, ScaleThenCrop

R50_CHANNELS = [256, 512, 1024, 2048]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _inputs(channels=R50_CHANNELS, size=(64, 96), batch=1):
    h, w = size
    return [
        torch.randn(batch, c, -(-h // 2**i), -(-w // 2**i)) for i, c in enumerate(channels)
    ]


def test_parameter_count_matches_mmdet_formula():
    # 1x1 laterals with bias + 3x3 output convs with bias (mmdet FPN, 3,344,384 for R-50).
    laterals = sum(c * 256 + 256 for c in R50_CHANNELS)
    outputs = 4 * (9 * 256 * 256 + 256)
    assert laterals + outputs == 3_344_384
    assert _count(FPN(R50_CHANNELS)) == 3_344_384


def test_retinanet_fpn_parameter_count():
    # P3..P5 from C3..C5 plus a 3x3/s2 conv on C5 (P6) and one on P6 (P7).
    fpn = FPN(R50_CHANNELS, start_level=1, add_extra="conv_on_input")
    expected = sum(c * 256 + 256 for c in R50_CHANNELS[1:]) + 3 * (9 * 256 * 256 + 256)
    expected += (9 * 2048 * 256 + 256) + (9 * 256 * 256 + 256)
    assert _count(fpn) == expected == 7_997_440
    assert fpn.extra_convs[0].in_channels == 2048
    on_output = FPN(R50_CHANNELS, start_level=1, add_extra="conv_on_output")
    assert on_output.extra_convs[0].in_channels == 256


def test_carafe_style_extra_level_parameters():
    # mmdet FPN_CARAFE without its upsamplers: + conv on C5 + an output conv for P6.
    fpn = FPN(R50_CHANNELS, add_extra="conv_on_input", extra_in_top_down=True)
    assert _count(fpn) == 3_344_384 + (9 * 2048 * 256 + 256) + (9 * 256 * 256 + 256)


@pytest.mark.parametrize("mode", ["maxpool", "conv_on_input", "conv_on_output"])
def test_shapes(mode):
    fpn = FPN(R50_CHANNELS, out_channels=32, add_extra=mode)
    outs = fpn(_inputs(size=(64, 96), batch=2))
    expected = [(2, 32, 64 // s, 96 // s) for s in (1, 2, 4, 8, 16)]
    assert [tuple(o.shape) for o in outs] == expected


def test_odd_sizes_and_start_level():
    fpn = FPN(R50_CHANNELS, out_channels=16, start_level=1, add_extra="conv_on_input")
    outs = fpn(_inputs(size=(50, 38)))  # C2 50x38 -> C3 25x19 ... C5 7x5
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 19), (13, 10), (7, 5), (4, 3), (2, 2)]


def test_maxpool_extra_level_is_subsampled_last_output():
    fpn = FPN(R50_CHANNELS, out_channels=8)
    outs = fpn(_inputs())
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2])


def test_top_down_matches_hand_computation():
    torch.manual_seed(0)
    fpn = FPN([4, 8], out_channels=4, num_outs=2)
    c2, c3 = torch.randn(1, 4, 6, 6), torch.randn(1, 8, 3, 3)
    p2, p3 = fpn([c2, c3])
    l3 = fpn.lateral_convs[1](c3)
    l2 = fpn.lateral_convs[0](c2) + l3.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(p3, fpn.fpn_convs[1](l3))
    torch.testing.assert_close(p2, fpn.fpn_convs[0](l2))


def test_init_is_xavier_uniform_with_zero_bias():
    fpn = FPN(R50_CHANNELS)
    conv = fpn.lateral_convs[3]  # 2048 -> 256, 1x1
    bound = (6 / (2048 + 256)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(conv.bias) == 0


class _RecordingUpsampler(nn.Module):
    calls: list[tuple[tuple[int, ...], tuple[int, int]]] = []

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        type(self).calls.append((tuple(x.shape), tuple(size)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False) * self.scale


def test_injected_upsampler_is_called_per_top_down_step():
    _RecordingUpsampler.calls = []
    fpn = FPN([8, 8, 8, 8], out_channels=8, upsampler=_RecordingUpsampler)
    assert len(fpn.upsamplers) == 3
    assert _count(fpn) == _count(FPN([8, 8, 8, 8], out_channels=8)) + 3 * 8
    outs = fpn(_inputs(channels=[8] * 4, size=(32, 32)))
    assert [c[1] for c in _RecordingUpsampler.calls] == [(8, 8), (16, 16), (32, 32)]
    outs[0].sum().backward()
    assert all(up.scale.grad is not None for up in fpn.upsamplers)


def test_scale_then_crop_adapts_fixed_scale_modules():
    up = ScaleThenCrop(nn.Upsample(scale_factor=2, mode="nearest"))
    x = torch.randn(1, 3, 4, 5)
    assert up(x, (7, 10)).shape == (1, 3, 7, 10)
    doubled = x.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(up(x, (7, 9)), doubled[..., :7, :9])
    with pytest.raises(ValueError, match="smaller"):
        up(x, (9, 10))
    fpn = FPN(
        R50_CHANNELS,
        out_channels=8,
        add_extra="conv_on_input",
        extra_in_top_down=True,
        upsampler=lambda c: ScaleThenCrop(nn.Upsample(scale_factor=2)),
    )
    assert len(fpn.upsamplers) == 4  # P6 -> P5 joins the top-down path (FPN_CARAFE)
    outs = fpn(_inputs(size=(64, 64)))
    assert [tuple(o.shape[-2:]) for o in outs] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]


def test_default_upsampler_is_nearest_to_exact_size():
    up = InterpolateUpsample(8)
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert up(x, (3, 5)).shape == (1, 1, 3, 5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="add_extra"):
        FPN(R50_CHANNELS, add_extra="on_lateral")
    with pytest.raises(ValueError, match="num_outs"):
        FPN(R50_CHANNELS, num_outs=3)
    with pytest.raises(ValueError, match="expects 4 inputs"):
        FPN(R50_CHANNELS)(_inputs()[:3])
