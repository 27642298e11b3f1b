"""Necks: feature pyramids on top of backbones (FPN with an injectable upsampler)."""

from glimpse.necks.fpn import FPN, InterpolateUpsample, ScaleThenCrop
from glimpse.necks.fpn_carafe import fpn_carafe

__all__ = ["FPN", "InterpolateUpsample", "ScaleThenCrop", "fpn_carafe"]
