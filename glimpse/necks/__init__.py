"""Necks: feature pyramids on top of backbones (FPN with an injectable upsampler), pyramid
pooling (PSPNet / UperNet) and to-size upsampling for the CARAFE segmentation positions."""

from glimpse.necks.fpn import FPN, InterpolateUpsample, ScaleThenCrop
from glimpse.necks.fpn_carafe import fpn_carafe
from glimpse.necks.ppm import PyramidPooling, conv_bn_relu, init_decoder
from glimpse.necks.sized_upsample import ResizeThenScale, SizedUpsamplerSpec, sized_upsampler

__all__ = [
    "FPN",
    "InterpolateUpsample",
    "PyramidPooling",
    "ResizeThenScale",
    "ScaleThenCrop",
    "SizedUpsamplerSpec",
    "conv_bn_relu",
    "fpn_carafe",
    "init_decoder",
    "sized_upsampler",
]
