"""Necks: feature pyramids on top of backbones (FPN with an injectable upsampler)."""

from glimpse.necks.fpn import FPN, InterpolateUpsample, ScaleThenCrop

__all__ = ["FPN", "InterpolateUpsample", "ScaleThenCrop"]
