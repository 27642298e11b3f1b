"""FishNet (Sun et al., NeurIPS 2018): a tail, a body and a head that keep features of every
resolution alive and let gradients reach the shallow layers without isolated convolutions.

The layout, block counts, shortcut rules and initialisation follow the official implementation
(``kevin-ssy/FishNet``, ``models/fishnet.py`` and ``models/fish_block.py``), so that
``fishnet99/150/201(num_classes=1000)`` have exactly the official 16,628,904 / 24,959,400 /
44,584,552 parameters. The module layout and names are glimpse's own.

Stage plan at a 224x224 input (``C x H x W``; stride relative to the input)::

    stem            3x3 s2, 3x3, 3x3, maxpool 3x3 s2          ->   64 x 56 x 56   s4
    tail 0..2       residual blocks, then maxpool 2x2         ->  128 x 28², 256 x 14², 512 x 7²
    bridge (3)      score (512->1024), residual blocks x SE   ->  512 x 7 x 7     s32
    body 4..6       UP residual blocks (channel-sum shortcut,
                    dilation 1/2/4), nearest x2, concat the
                    tail feature of the same resolution       ->  768 x 14², 512 x 28², 320 x 56²
    head 7..9       residual blocks (identity shortcuts),
                    maxpool 2x2, concat the body/bridge
                    feature of the same resolution            ->  832 x 28², 1600 x 14², 2112 x 7²
    classifier      BN-ReLU-1x1 (2112->1056)-BN-ReLU, avgpool, 1x1 (1056->classes)

Only the first blocks of the tail stages and of the bridge have a projection ("isolated")
convolution on the shortcut; the body uses the parameter-free channel-sum shortcut and the head
identities, so the head's gradient reaches the stem through concatenations only.

FishNet-188 (the backbone of the talk's COCO table) is not in the official code; see
:func:`fishnet188` for the documented reconstruction used here.

The official ImageNet checkpoints load with ``pretrained="/local/fishnet99_ckpt.tar"`` (any
model and the detection trunk; key map in :mod:`glimpse.backbones.fishnet_official`).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.backbones.fishnet_official import load_official_fishnet

__all__ = [
    "FishNetConfig",
    "FISHNET99",
    "FISHNET150",
    "FISHNET201",
    "FISHNET188",
    "FISHNET_SLIM",
    "channel_sum",
    "FishBottleneck",
    "FishNet",
    "FishNetBackbone",
    "fishnet99",
    "fishnet150",
    "fishnet188",
    "fishnet201",
    "fishnet_backbone",
    "fishnet99_backbone",
    "fishnet150_backbone",
    "fishnet188_backbone",
    "fishnet_slim_backbone",
]

NormLayer = Callable[[int], nn.Module]

# Official shared layout (``net_factory.py``): stem width, then the 10 stages' trunk widths.
_PLANES = (64, 128, 256, 512, 512, 512, 384, 256, 320, 832, 1600)
# all_feat index each refine stage (4..9) concatenates: stage 1, stage 0, stem, stage 5, 4, 3.
_TRANS_MAP = (2, 1, 0, 6, 5, 4)


@dataclass(frozen=True)
class FishNetConfig:
    """Block counts and widths of one FishNet variant.

    Attributes:
        num_res_blocks: residual blocks of the trunk of stages 0..9 (tail 0-2, bridge 3,
            body 4-6, head 7-9).
        num_trans_blocks: residual blocks on the transferred branch of stages 4..9.
        planes: stem width followed by the trunk width of stages 0..9 (11 entries).
    """

    num_res_blocks: tuple[int, ...]
    num_trans_blocks: tuple[int, ...]
    planes: tuple[int, ...] = _PLANES

    def __post_init__(self) -> None:
        if len(self.num_res_blocks) != 10 or len(self.num_trans_blocks) != 6:
            raise ValueError("FishNetConfig needs 10 num_res_blocks and 6 num_trans_blocks, got "
                             f"{len(self.num_res_blocks)} and {len(self.num_trans_blocks)}")
        if len(self.planes) != 11:
            raise ValueError(f"FishNetConfig.planes needs 11 widths, got {len(self.planes)}")
        if min(self.num_res_blocks) < 1:
            raise ValueError("every FishNet stage needs at least one residual block")

    @property
    def num_bottlenecks(self) -> int:
        """B, the number of bottleneck blocks (the official name is 3*B + 12)."""
        return sum(self.num_res_blocks) + sum(self.num_trans_blocks)


# Block counts of the official ``net_factory.py``.
FISHNET99 = FishNetConfig((2, 2, 6, 2, 1, 1, 1, 1, 2, 2), (1, 1, 1, 1, 1, 4))
FISHNET150 = FishNetConfig((2, 4, 8, 4, 2, 2, 2, 2, 2, 4), (2, 2, 2, 2, 2, 4))
FISHNET201 = FishNetConfig((3, 4, 12, 4, 2, 2, 2, 2, 3, 10), (2, 2, 2, 2, 2, 9))
# Reconstruction (not official): 59 bottlenecks, see :func:`fishnet188`.
FISHNET188 = FishNetConfig((3, 4, 12, 4, 2, 2, 2, 2, 3, 8), (2, 2, 2, 2, 2, 7))
# A narrow FishNet-99 (all widths / 8; 0.21M parameters without classifier) for smoke runs.
FISHNET_SLIM = FishNetConfig(FISHNET99.num_res_blocks, FISHNET99.num_trans_blocks,
                             tuple(p // 8 for p in _PLANES))


def channel_sum(x: Tensor, k: int) -> Tensor:
    """The body's parameter-free shortcut r(x): sum each group of ``k`` adjacent channels.

    Args:
        x: [N, C, H, W] with C divisible by k.
        k: reduction factor (1 returns x itself).

    Returns:
        [N, C // k, H, W].
    """
    if k == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, c // k, k, h, w).sum(dim=2)  # [N, C/k, k, H, W] -> [N, C/k, H, W]


class FishBottleneck(nn.Module):
    """Pre-activation bottleneck of ``fish_block.py``: BN-ReLU-1x1, BN-ReLU-3x3 (dilated),
    BN-ReLU-1x1, with a width of ``out_channels // 4`` and nothing after the addition.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        dilation: dilation (= padding) of the 3x3 conv (2 and 4 in the body's later stages).
        up: if True the shortcut is :func:`channel_sum` with ``k = in / out`` (first block of a
            body stage); otherwise a BN-ReLU-1x1 projection when the width changes (the
            "isolated convolution"), else the identity.
        norm_layer: normalisation constructor (BatchNorm2d; FrozenBatchNorm2d for detection).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1,
                 up: bool = False, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        width = out_channels // 4
        self.norm1 = norm_layer(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.norm2 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm3 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.k = 1
        self.shortcut: nn.Module | None = None
        if up:
            if in_channels % out_channels:
                raise ValueError(f"channel-sum shortcut needs in ({in_channels}) divisible by "
                                 f"out ({out_channels})")
            self.k = in_channels // out_channels
        elif in_channels != out_channels:
            self.shortcut = nn.Sequential(norm_layer(in_channels), nn.ReLU(inplace=True),
                                          nn.Conv2d(in_channels, out_channels, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """[N, in, H, W] -> [N, out, H, W]."""
        out = self.conv1(self.relu(self.norm1(x)))
        out = self.conv2(self.relu(self.norm2(out)))
        out = self.conv3(self.relu(self.norm3(out)))
        identity = self.shortcut(x) if self.shortcut is not None else channel_sum(x, self.k)
        return out + identity


def _blocks(in_channels: int, out_channels: int, n: int, *, dilation: int = 1, up: bool = False,
            norm_layer: NormLayer) -> nn.Sequential:
    """``n`` bottlenecks; only the first changes the width. As in the official
    ``_make_residual_block``, a non-UP first block is never dilated."""
    first = FishBottleneck(in_channels, out_channels, dilation=dilation if up else 1, up=up,
                           norm_layer=norm_layer)
    rest = [FishBottleneck(out_channels, out_channels, dilation=dilation, norm_layer=norm_layer)
            for _ in range(n - 1)]
    return nn.Sequential(first, *rest)


def _score(in_channels: int, out_channels: int, *, pool: bool, norm_layer: NormLayer
           ) -> nn.Sequential:
    """Official ``_make_score``: BN-ReLU-1x1 (C -> C/2, no bias)-BN-ReLU, [avgpool], 1x1 (bias)."""
    half = in_channels // 2
    layers: list[nn.Module] = [norm_layer(in_channels), nn.ReLU(inplace=True),
                               nn.Conv2d(in_channels, half, 1, bias=False), norm_layer(half),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Conv2d(half, out_channels, 1, bias=True))
    return nn.Sequential(*layers)


class _Bridge(nn.Module):
    """Stage 3, between tail and body: score conv (C -> 2C), residual blocks (2C -> C) and an
    SE-like attention ``a`` on the score; output ``res(s) * a + a`` (official ``_fish_forward``)."""

    def __init__(self, in_channels: int, channels: int, n: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.score = _score(in_channels, 2 * channels, pool=False, norm_layer=norm_layer)
        self.blocks = _blocks(2 * channels, channels, n, norm_layer=norm_layer)
        # Squeeze width out // 16 (official ``_make_se_block``).
        self.se = nn.Sequential(norm_layer(2 * channels), nn.ReLU(inplace=True),
                                nn.AdaptiveAvgPool2d(1),
                                nn.Conv2d(2 * channels, channels // 16, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(channels // 16, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, h, w] -> [N, C, h, w]."""
        s = self.score(x)  # [N, 2C, h, w]
        a = self.se(s)  # [N, C, 1, 1]
        return self.blocks(s) * a + a


class _RefineStage(nn.Module):
    """A body (up-sampling) or head (down-sampling) stage: trunk blocks, then sampling of the
    trunk only, then concatenation [trunk, transferred branch] on the channel axis."""

    def __init__(self, in_channels: int, channels: int, trans_channels: int, n: int,
                 n_trans: int, *, up: bool, dilation: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.blocks = _blocks(in_channels, channels, n, dilation=dilation, up=up,
                              norm_layer=norm_layer)
        self.transfer = _blocks(trans_channels, trans_channels, n_trans, norm_layer=norm_layer)
        # Parameter-free sampling: nearest x2 in the body, 2x2 max-pool in the head.
        self.sample: nn.Module = (nn.Upsample(scale_factor=2, mode="nearest") if up
                                  else nn.MaxPool2d(2, stride=2))

    def forward(self, x: Tensor, transferred: Tensor) -> Tensor:
        """x [N, in, h, w], transferred [N, T, h', w'] at the sampled resolution ->
        [N, channels + T, h', w']."""
        return torch.cat([self.sample(self.blocks(x)), self.transfer(transferred)], dim=1)


class FishNet(nn.Module):
    """FishNet classifier (and feature extractor).

    Args:
        config: block counts and widths (:data:`FISHNET99`, ...).
        num_classes: classifier outputs; ``None`` builds no classifier (detection trunk).
        norm_layer: normalisation constructor.
        pretrained: local path of an official ``kevin-ssy/FishNet`` checkpoint (as released,
            or a bare state dict), loaded after initialisation; without a classifier its
            classifier tensors are ignored. ``None`` keeps the random init.

    Attributes:
        stage_channels: channels of ``all_feat[0..10]`` (stem, then stages 0..9).
        stage_strides: their strides relative to the input.
    """

    def __init__(self, config: FishNetConfig = FISHNET99, num_classes: int | None = 1000, *,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 pretrained: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.config = config
        p, res, trans = config.planes, config.num_res_blocks, config.num_trans_blocks
        stem = p[0]

        def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                    norm_layer(cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, stem // 2, 2),
                                  *conv_bn_relu(stem // 2, stem // 2),
                                  *conv_bn_relu(stem // 2, stem),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        channels = [stem]  # channels of all_feat[i]
        self.tail = nn.ModuleList()
        for i in range(3):
            self.tail.append(nn.Sequential(_blocks(channels[-1], p[i + 1], res[i],
                                                   norm_layer=norm_layer),
                                           nn.MaxPool2d(2, stride=2)))
            channels.append(p[i + 1])
        self.bridge = _Bridge(channels[-1], p[4], res[3], norm_layer)
        channels.append(p[4])
        self.body = nn.ModuleList()
        self.head = nn.ModuleList()
        for i in range(4, 10):
            t = channels[_TRANS_MAP[i - 4]]
            is_body = i < 7
            # Body: k = in / out for the channel-sum shortcut, dilation 2^(i-4) (official rule).
            stage = _RefineStage(channels[-1], p[i + 1], t, res[i], trans[i - 4], up=is_body,
                                 dilation=2 ** (i - 4) if is_body else 1, norm_layer=norm_layer)
            (self.body if is_body else self.head).append(stage)
            channels.append(p[i + 1] + t)
        self.stage_channels: tuple[int, ...] = tuple(channels)
        self.stage_strides: tuple[int, ...] = (4, 8, 16, 32, 32, 16, 8, 4, 8, 16, 32)
        self.num_classes = num_classes
        self.classifier = (None if num_classes is None else
                           _score(channels[-1], num_classes, pool=True, norm_layer=norm_layer))
        self._init_weights()
        if pretrained is not None:
            load_official_fishnet(self, pretrained)

    def _init_weights(self) -> None:
        """Official ``_init_weights``: conv weights N(0, sqrt(2 / (kh * kw * out))) (He,
        fan-out), BN weight 1 and bias 0; conv biases keep PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self, x: Tensor) -> list[Tensor]:
        """All 11 feature maps ``all_feat``: stem, tail 0-2, bridge, body 4-6, head 7-9.

        Args:
            x: [N, 3, H, W] normalised images, H and W divisible by 32.

        Returns:
            Tensors with :attr:`stage_channels` channels at :attr:`stage_strides`.
        """
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"FishNet needs input height and width divisible by 32 (the tail's "
                             f"max-pools and the body's x2 up-sampling must line up), got "
                             f"{h}x{w}; resize, crop or pad the images")
        feats = [self.stem(x)]
        for stage in self.tail:
            feats.append(stage(feats[-1]))
        feats.append(self.bridge(feats[-1]))
        for i, stage in enumerate([*self.body, *self.head]):
            feats.append(stage(feats[-1], feats[_TRANS_MAP[i]]))
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] (H, W divisible by 32) -> logits [N, num_classes]
        (or the last head feature [N, C, H/32, W/32] without a classifier)."""
        feat = self.stages(x)[-1]
        if self.classifier is None:
            return feat
        return self.classifier(feat).flatten(1)


class FishNetBackbone(nn.Module):
    """FishNet trunk in glimpse's backbone contract, for FPN detectors.

    The taps are the only stride-4 map after the stem (end of the body, stage 6) and the three
    head stages, which concatenate every resolution's features (reference §1.12, derived: the
    official code has no detection backbone)::

        c2 = stage 6 (stride 4), c3 = stage 7 (8), c4 = stage 8 (16), c5 = stage 9 (32)

    giving FPN ``in_channels`` [320, 832, 1600, 2112] at the official widths. Inputs whose size
    is not a multiple of 32 are zero-padded at the bottom/right (detectors already pad to 32).

    Args:
        config: FishNet variant.
        norm_layer: normalisation constructor.
        pretrained: local path of an official FishNet ImageNet checkpoint (see
            :class:`FishNet`; its classifier is ignored).
    """

    _TAPS = {"c2": 7, "c3": 8, "c4": 9, "c5": 10}  # all_feat indices

    def __init__(self, config: FishNetConfig = FISHNET99, *,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 pretrained: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.body = FishNet(config, num_classes=None, norm_layer=norm_layer,
                            pretrained=pretrained)
        self.out_channels: dict[str, int] = {k: self.body.stage_channels[i]
                                             for k, i in self._TAPS.items()}
        self.out_strides: dict[str, int] = {k: self.body.stage_strides[i]
                                            for k, i in self._TAPS.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] -> {"c2": [B, C2, H'/4, W'/4], ..., "c5": [B, C5, H'/32, W'/32]} with
        H', W' = H, W rounded up to multiples of 32."""
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.body.stages(x)
        return OrderedDict((k, feats[i]) for k, i in self._TAPS.items())


def fishnet99(num_classes: int = 1000, **kwargs) -> FishNet:
    """Official FishNet-99: 16,628,904 parameters at 1000 classes, 77.41% top-1 (README)."""
    return FishNet(FISHNET99, num_classes, **kwargs)


def fishnet150(num_classes: int = 1000, **kwargs) -> FishNet:
    """Official FishNet-150: 24,959,400 parameters at 1000 classes, 78.14% top-1 (README)."""
    return FishNet(FISHNET150, num_classes, **kwargs)


def fishnet201(num_classes: int = 1000, **kwargs) -> FishNet:
    """Official FishNet-201: 44,584,552 parameters at 1000 classes, 78.76% top-1 (README)."""
    return FishNet(FISHNET201, num_classes, **kwargs)


def fishnet188(num_classes: int | None = None, **kwargs) -> FishNet:
    """FishNet-188, a documented RECONSTRUCTION (no official configuration exists).

    The talk's COCO table uses a "FishNet-188" that is not in ``kevin-ssy/FishNet``. The
    official names count Conv2d modules minus one, i.e. 3*B + 12 for B bottlenecks, and 188 has
    no integer B under that rule. Read instead as the Conv2d count of the *detection trunk*
    (the classifier's two score convs removed: 3*B + 13 - 2 = 3*B + 11), 188 gives B = 59 --
    the only integer reading we found. We place the 59 blocks by taking FishNet-201 (B = 63) and
    removing 2 trunk and 2 transfer blocks from its last head stage (10 + 9 blocks, the stage
    that mostly serves the ImageNet classifier), leaving every other stage as in FishNet-201::

        num_res_blocks   = (3, 4, 12, 4, 2, 2, 2, 2, 3, 8)
        num_trans_blocks = (2, 2, 2, 2, 2, 7)

    With ``num_classes=None`` (default) the model has no classifier and exactly 188 Conv2d
    modules. Numbers obtained with it are not the paper's model.
    """
    return FishNet(FISHNET188, num_classes, **kwargs)


def fishnet_backbone(depth: int | FishNetConfig = 99, *,
                     norm_layer: NormLayer = nn.BatchNorm2d,
                     pretrained: str | os.PathLike | None = None) -> FishNetBackbone:
    """FPN-ready FishNet trunk: ``depth`` in 99, 150, 188 (reconstruction), 201, or a config."""
    configs = {99: FISHNET99, 150: FISHNET150, 188: FISHNET188, 201: FISHNET201}
    if isinstance(depth, FishNetConfig):
        config = depth
    elif depth in configs:
        config = configs[depth]
    else:
        raise ValueError(f"fishnet_backbone: depth must be one of {sorted(configs)} or a "
                         f"FishNetConfig, got {depth!r}")
    return FishNetBackbone(config, norm_layer=norm_layer, pretrained=pretrained)


def fishnet99_backbone(**kwargs) -> FishNetBackbone:
    """FishNet-99 trunk for FPN detectors (c2..c5: 320, 832, 1600, 2112 channels)."""
    return FishNetBackbone(FISHNET99, **kwargs)


def fishnet150_backbone(**kwargs) -> FishNetBackbone:
    """FishNet-150 trunk for FPN detectors (c2..c5: 320, 832, 1600, 2112 channels)."""
    return FishNetBackbone(FISHNET150, **kwargs)


def fishnet188_backbone(**kwargs) -> FishNetBackbone:
    """FishNet-188 trunk (a reconstruction, see :func:`fishnet188`) for FPN detectors."""
    return FishNetBackbone(FISHNET188, **kwargs)


def fishnet_slim_backbone(**kwargs) -> FishNetBackbone:
    """FishNet-99 layout at 1/8 width (0.21M parameters; c2..c5: 40, 104, 200, 264 channels),
    the FishNet stand-in of smoke runs."""
    return FishNetBackbone(FISHNET_SLIM, **kwargs)
