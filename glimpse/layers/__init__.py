"""Layers: nn.Modules on top of glimpse.ops and torchvision.ops (CARAFE and the upsamplers of
its Table 2, guided anchoring's FeatureAdaption, partial convolution)."""

from glimpse.layers.carafe import CARAFE
from glimpse.layers.feature_adaption import FeatureAdaption
from glimpse.layers.partial_conv import PartialConv2d
from glimpse.layers.upsamplers import (
    PAPER_FLOPS,
    UPSAMPLER_LABELS,
    UPSAMPLERS,
    DySample,
    GuidedUpsample,
    Interpolate,
    InterpolateConv,
    PixelShuffleUpsample,
    SpatialAttentionUpsample,
    TransposedConvUpsample,
    carafe_paper_flops,
    upsampler_factory,
    upsampler_flops,
)

__all__ = [
    "CARAFE",
    "DySample",
    "FeatureAdaption",
    "GuidedUpsample",
    "Interpolate",
    "InterpolateConv",
    "PAPER_FLOPS",
    "PartialConv2d",
    "PixelShuffleUpsample",
    "SpatialAttentionUpsample",
    "TransposedConvUpsample",
    "UPSAMPLERS",
    "UPSAMPLER_LABELS",
    "carafe_paper_flops",
    "upsampler_factory",
    "upsampler_flops",
]
