"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet-50 (output stride 8), as the PSPNet paper
and mmsegmentation's ``pspnet_r50-d8`` build it (reference B2).

* backbone: ResNet-50 with strides (1, 2, 1, 1) and dilations (1, 1, 2, 4), so C4 and C5 stay
  at stride 8;
* decode head (``PSPHead``): pyramid pooling on C5 (bins 1/2/3/6, 1x1 conv then resize:
  ``order="conv_first"``), concat with C5, 3x3 conv-BN-ReLU to 512, dropout 0.1, 1x1
  classifier;
* auxiliary ``FCNHead`` on C4 (3x3 conv-BN-ReLU 1024 -> 256, dropout 0.1, 1x1 classifier),
  loss weight 0.4, dropped at inference.

The PPM resize is the injectable upsampler (``ppm_upsampler``: None = bilinear, a Table 2
name, or a to-size factory). The CARAFE paper quotes PSPNet from its own paper (41.68 mIoU)
rather than training it; glimpse trains it as a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from glimpse.backbones.resnet import resnet50, resnet_slim
from glimpse.necks.ppm import PyramidPooling, conv_bn_relu, init_decoder
from glimpse.necks.sized_upsample import SizedUpsamplerSpec
from glimpse.segmentors.base import EncoderDecoder

__all__ = ["DILATED_D8", "FCNHead", "PSPHead", "pspnet", "pspnet_r50", "pspnet_slim"]

# ResNet keyword arguments of the "-d8" backbones (output stride 8).
DILATED_D8 = {"strides": (1, 2, 1, 1), "dilations": (1, 1, 2, 4)}


class PSPHead(nn.Module):
    """``feats["c5"]`` [B, C_in, h, w] -> logits [B, K, h, w].

    Args:
        in_channels: C5 channels (2048).
        num_classes: K.
        channels: PPM branch and bottleneck width (512).
        bins: PPM pooled sizes.
        dropout: before the classifier (0.1).
        ppm_upsampler: the PPM upsampler (CARAFE position).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                 ppm_upsampler: SizedUpsamplerSpec = None) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, channels, channels, bins, order="conv_first",
                                  upsampler=ppm_upsampler)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_decoder([self.classifier])

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.ppm(feats["c5"])))


class FCNHead(nn.Module):
    """Auxiliary head: ``feats[level]`` -> 3x3 conv-BN-ReLU -> dropout -> 1x1 -> logits."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256,
                 dropout: float = 0.1, level: str = "c4") -> None:
        super().__init__()
        self.level = level
        self.conv = conv_bn_relu(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_decoder([self.conv, self.classifier])

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.conv(feats[self.level])))


def pspnet(backbone: nn.Module, num_classes: int = 150, *, channels: int = 512,
           aux_channels: int = 256, aux_weight: float = 0.4,
           ppm_upsampler: SizedUpsamplerSpec = None, ignore_index: int = 255) -> EncoderDecoder:
    """PSPNet on ``backbone`` (C2..C5 contract; give it a dilated one for output stride 8)."""
    head = PSPHead(backbone.out_channels["c5"], num_classes, channels,
                   ppm_upsampler=ppm_upsampler)
    aux = FCNHead(backbone.out_channels["c4"], num_classes, aux_channels)
    return EncoderDecoder(backbone, head, num_classes, aux_head=aux, aux_weight=aux_weight,
                          ignore_index=ignore_index)


def pspnet_r50(num_classes: int = 150, *, backbone_kwargs: dict | None = None, **kwargs
               ) -> EncoderDecoder:
    """PSPNet-50-D8 (mmseg ``pspnet_r50-d8``: every stage and BN statistic trained)."""
    bb = {"frozen_stages": -1, "norm_eval": False, **DILATED_D8, **(backbone_kwargs or {})}
    return pspnet(resnet50(**bb), num_classes, **kwargs)


def pspnet_slim(num_classes: int = 150, *, backbone_kwargs: dict | None = None, **kwargs
                ) -> EncoderDecoder:
    """Smoke-profile PSPNet: the slim ResNet dilated to output stride 8, 64-wide heads."""
    kwargs.setdefault("channels", 64)
    kwargs.setdefault("aux_channels", 32)
    return pspnet(resnet_slim(**{**DILATED_D8, **(backbone_kwargs or {})}), num_classes,
                  **kwargs)
