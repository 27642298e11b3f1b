"""FishNet against the official implementation's numbers (reference fishnet_carafe.md §1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glimpse.backbones.fishnet import (
    FISHNET99,
    FISHNET_SLIM,
    FishBottleneck,
    FishNet,
    FishNetConfig,
    channel_sum,
    fishnet99,
    fishnet150,
    fishnet188,
    fishnet201,
    fishnet_backbone,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def n_convs(m: nn.Module) -> int:
    return sum(isinstance(x, nn.Conv2d) for x in m.modules())


# Official parameter counts (measured by running kevin-ssy/FishNet) and Conv2d module counts.
@pytest.mark.parametrize("builder,params,convs", [
    (fishnet99, 16_628_904, 100),
    (fishnet150, 24_959_400, 151),
    (fishnet201, 44_584_552, 202),
])
def test_official_parameter_counts(builder, params, convs):
    m = builder(num_classes=1000)
    assert n_params(m) == params
    # The official name is (number of Conv2d modules - 1).
    assert n_convs(m) == convs


# Measured all_feat shapes of the official model at 224x224 (reference §1.4).
OFFICIAL_SHAPES_224 = [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7), (512, 7, 7),
                       (768, 14, 14), (512, 28, 28), (320, 56, 56), (832, 28, 28),
                       (1600, 14, 14), (2112, 7, 7)]


@pytest.mark.parametrize("builder", [fishnet99, fishnet150])
def test_stage_shapes_224(builder):
    m = builder().eval()
    with torch.no_grad():
        feats = m.stages(torch.randn(1, 3, 224, 224))
        logits = m(torch.randn(2, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == OFFICIAL_SHAPES_224
    assert logits.shape == (2, 1000)
    assert m.stage_channels == tuple(s[0] for s in OFFICIAL_SHAPES_224)


# Conv multiply-adds (torch.utils.flop_counter counts 2 FLOPs per multiply-add; we divide by 2).
@pytest.mark.parametrize("builder,gmacs", [(fishnet99, 4.26), (fishnet150, 6.40),
                                           (fishnet201, 10.51)])
def test_conv_macs_within_one_percent(builder, gmacs):
    m = builder().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(torch.zeros(1, 3, 224, 224))
    counts = counter.get_flop_counts()["Global"]
    conv_macs = sum(v for k, v in counts.items() if "convolution" in str(k)) / 2
    assert abs(conv_macs / 1e9 - gmacs) / gmacs < 0.01


def test_input_not_divisible_by_32_is_a_clear_error():
    m = FishNet(FISHNET_SLIM, num_classes=10).eval()
    with pytest.raises(ValueError, match="divisible by 32.*240x224"):
        m(torch.zeros(1, 3, 240, 224))


def test_channel_sum_matches_loop():
    x = torch.randn(2, 6, 3, 4)
    ref = torch.stack([x[:, 2 * i] + x[:, 2 * i + 1] for i in range(3)], dim=1)
    torch.testing.assert_close(channel_sum(x, 2), ref)
    assert channel_sum(x, 1) is x


def test_shortcut_rules():
    # Body UP block: channel-sum shortcut, no parameters besides the residual path.
    up = FishBottleneck(768, 384, up=True, dilation=2)
    assert up.shortcut is None and up.k == 2 and up.conv2.dilation == (2, 2)
    # Tail first block: BN-ReLU-1x1 projection (the "isolated convolution").
    proj = FishBottleneck(64, 128)
    assert isinstance(proj.shortcut, nn.Sequential) and proj.shortcut[2].out_channels == 128
    # Pre-activation: out = residual(x) + x exactly, identity shortcut when widths match.
    blk = FishBottleneck(32, 32).eval()
    x = torch.randn(1, 32, 5, 5)
    with torch.no_grad():
        res = blk.conv3(blk.relu(blk.norm3(blk.conv2(blk.relu(blk.norm2(
            blk.conv1(blk.relu(blk.norm1(x)))))))))
        torch.testing.assert_close(blk(x), res + x)
    with pytest.raises(ValueError, match="divisible"):
        FishBottleneck(10, 4, up=True)


def test_no_isolated_convs_in_body_and_head():
    m = fishnet99()
    projections = [name for name, mod in m.named_modules()
                   if isinstance(mod, FishBottleneck) and mod.shortcut is not None]
    assert sorted(projections) == ["bridge.blocks.0", "tail.0.0.0", "tail.1.0.0", "tail.2.0.0"]


def test_body_dilations_and_k():
    m = fishnet99()
    assert [s.blocks[0].conv2.dilation[0] for s in m.body] == [1, 2, 4]
    assert [s.blocks[0].k for s in m.body] == [1, 2, 2]


def test_official_initialisation():
    torch.manual_seed(0)
    m = fishnet99()
    conv = m.head[2].blocks[0].conv1  # 1x1, 1600 -> 400
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)


def test_bridge_forward_formula():
    m = FishNet(FISHNET_SLIM, num_classes=None).eval()
    x = torch.randn(1, 64, 2, 2)
    with torch.no_grad():
        s = m.bridge.score(x)
        a = m.bridge.se(s)
        torch.testing.assert_close(m.bridge(x), (m.bridge.blocks(s) + 1) * a)


def test_fishnet188_reconstruction_has_188_convs():
    m = fishnet188()
    assert n_convs(m) == 188 and m.config.num_bottlenecks == 59
    assert m.classifier is None


def test_backbone_contract_and_padding():
    b = fishnet_backbone(FISHNET_SLIM).eval()
    assert list(b.out_strides.values()) == [4, 8, 16, 32]
    with torch.no_grad():
        out = b(torch.randn(2, 3, 100, 70))  # padded to 128 x 96
    assert list(out) == ["c2", "c3", "c4", "c5"]
    for k, v in out.items():
        s = b.out_strides[k]
        assert v.shape == (2, b.out_channels[k], 128 // s, 96 // s)
    assert fishnet_backbone(99).out_channels == {"c2": 320, "c3": 832, "c4": 1600, "c5": 2112}
    with pytest.raises(ValueError, match="depth"):
        fishnet_backbone(50)


def test_gradients_reach_stem_and_train_step():
    m = FishNet(FISHNET_SLIM, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    loss = nn.functional.cross_entropy(m(x), torch.tensor([1, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert m.stem[0].weight.grad.abs().sum() > 0


def test_config_validation():
    with pytest.raises(ValueError, match="10 num_res_blocks"):
        FishNetConfig((1, 2), FISHNET99.num_trans_blocks)
