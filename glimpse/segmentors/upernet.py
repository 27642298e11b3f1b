"""UperNet (Xiao et al., ECCV 2018) as CSAIL's semantic-segmentation-pytorch builds it: the
implementation behind the CARAFE paper's Table 5 row (40.44 mIoU; reference B1).

Decoder (``UPerHead``; every conv has no bias and is followed by BN + ReLU, except the
classifier):

* PPM on C5 with bins 1/2/3/6, resize-then-1x1-conv, concat with C5, 3x3 to ``fpn_dim``: this
  is the top pyramid level P5;
* FPN: 1x1 laterals on C2..C4; top-down ``f = lateral + up(f)``; a 3x3 output conv on P2..P4;
* fuse: P3..P5 resized to P2's size, concatenated (4 x ``fpn_dim``), a 3x3 conv to
  ``fpn_dim`` and a 1x1 classifier (with bias) -> logits at stride 4.

No auxiliary loss and no dropout (CSAIL). Backbone departure: CSAIL uses its own ResNet-50
with a 3-conv deep stem; glimpse uses the torchvision ResNet-50 (7x7 stem), so torchvision
ImageNet weights load.

**CARAFE positions** (the paper's UperNet ablation): ``fpn_upsampler`` (the three top-down
x2 steps, on ``fpn_dim`` channels), ``ppm_upsampler`` (one per bin, on C5's channels) and
``fuse_upsampler`` (P3, P4, P5 -> P2: x2, x4, x8 on ``fpn_dim`` channels). Each takes None
(bilinear, CSAIL), a Table 2 name such as ``"carafe"`` or a to-size factory; see
:mod:`glimpse.necks.sized_upsample` for how non-x2 sizes are reached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from glimpse.backbones.resnet import resnet50, resnet_slim
from glimpse.necks.ppm import PyramidPooling, conv_bn_relu, init_decoder
from glimpse.necks.sized_upsample import SizedUpsamplerSpec, sized_upsampler
from glimpse.segmentors.base import EncoderDecoder

__all__ = ["UPerHead", "upernet", "upernet_r50", "upernet_slim"]


class UPerHead(nn.Module):
    """UperNet decoder: ``{"c2".."c5"}`` -> logits [B, K, H/4, W/4].

    Args:
        in_channels: channels of C2..C5 (``[256, 512, 1024, 2048]`` for ResNet-50).
        num_classes: K.
        fpn_dim: width of every pyramid level (512; CSAIL ``upernet_lite``: 256).
        ppm_channels: width of each PPM branch (512 in CSAIL).
        bins: PPM pooled sizes.
        fpn_upsampler, ppm_upsampler, fuse_upsampler: the three CARAFE positions (module
            docstring).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, fpn_dim: int = 512,
                 ppm_channels: int = 512, bins: Sequence[int] = (1, 2, 3, 6), *,
                 fpn_upsampler: SizedUpsamplerSpec = None,
                 ppm_upsampler: SizedUpsamplerSpec = None,
                 fuse_upsampler: SizedUpsamplerSpec = None) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must give C2..C5, got {tuple(in_channels)}")
        self.ppm = PyramidPooling(in_channels[-1], ppm_channels, fpn_dim, bins,
                                  order="upsample_first", upsampler=ppm_upsampler)
        self.laterals = nn.ModuleList(conv_bn_relu(c, fpn_dim, 1) for c in in_channels[:-1])
        self.fpn_outs = nn.ModuleList(conv_bn_relu(fpn_dim, fpn_dim) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(len(in_channels) * fpn_dim, fpn_dim)
        self.classifier = nn.Conv2d(fpn_dim, num_classes, 1)
        init_decoder([self.laterals, self.fpn_outs, self.fuse, self.classifier])
        top_down = sized_upsampler(fpn_upsampler, 2)
        # top_down_upsamplers[i] brings level i+1 (coarser) to level i; fuse_upsamplers[i]
        # brings level i+1 to P2 (scale 2 ** (i + 1)).
        self.top_down_upsamplers = nn.ModuleList(top_down(fpn_dim) for _ in in_channels[:-1])
        self.fuse_upsamplers = nn.ModuleList(
            sized_upsampler(fuse_upsampler, 2 ** (i + 1))(fpn_dim)
            for i in range(len(in_channels) - 1))

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        """``feats`` c2..c5 [B, C_i, H_i, W_i] -> logits [B, K, H_2, W_2]."""
        c = [feats[k] for k in ("c2", "c3", "c4", "c5")]
        f = self.ppm(c[3])
        levels = [f]
        for i in (2, 1, 0):
            lateral = self.laterals[i](c[i])
            f = lateral + self.top_down_upsamplers[i](f, _size(lateral))
            levels.insert(0, self.fpn_outs[i](f))
        size = _size(levels[0])
        fused = [levels[0]] + [up(x, size) for up, x in zip(self.fuse_upsamplers, levels[1:])]
        return self.classifier(self.fuse(torch.cat(fused, dim=1)))


def _size(x: Tensor) -> tuple[int, int]:
    return int(x.shape[-2]), int(x.shape[-1])


def upernet(backbone: nn.Module, num_classes: int = 150, *, fpn_dim: int = 512,
            ppm_channels: int | None = None, fpn_upsampler: SizedUpsamplerSpec = None,
            ppm_upsampler: SizedUpsamplerSpec = None, fuse_upsampler: SizedUpsamplerSpec = None,
            ignore_index: int = 255) -> EncoderDecoder:
    """UperNet on ``backbone`` (C2..C5 contract with ``out_channels``); ``ppm_channels``
    defaults to ``fpn_dim``."""
    channels = [backbone.out_channels[k] for k in ("c2", "c3", "c4", "c5")]
    head = UPerHead(channels, num_classes, fpn_dim, fpn_dim if ppm_channels is None
                    else ppm_channels, fpn_upsampler=fpn_upsampler, ppm_upsampler=ppm_upsampler,
                    fuse_upsampler=fuse_upsampler)
    return EncoderDecoder(backbone, head, num_classes, ignore_index=ignore_index)


def upernet_r50(num_classes: int = 150, *, backbone_kwargs: dict | None = None, **kwargs
                ) -> EncoderDecoder:
    """UperNet-50 (CSAIL ``ade20k-resnet50-upernet``): CSAIL fine-tunes every stage and its BN
    statistics, so ``frozen_stages=-1`` and ``norm_eval=False``."""
    bb = {"frozen_stages": -1, "norm_eval": False, **(backbone_kwargs or {})}
    return upernet(resnet50(**bb), num_classes, **kwargs)


def upernet_slim(num_classes: int = 150, *, backbone_kwargs: dict | None = None, **kwargs
                 ) -> EncoderDecoder:
    """Smoke-profile UperNet: the 2M-parameter slim ResNet and ``fpn_dim`` 64."""
    kwargs.setdefault("fpn_dim", 64)
    return upernet(resnet_slim(**(backbone_kwargs or {})), num_classes, **kwargs)
