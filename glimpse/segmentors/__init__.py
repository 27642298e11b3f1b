"""Semantic segmentors (UperNet, PSPNet; CARAFE paper): images in, one
:class:`~glimpse.structures.Segmentation` per image out (losses in train mode)."""

from glimpse.segmentors.base import EncoderDecoder
from glimpse.segmentors.pspnet import (
    DILATED_D8,
    FCNHead,
    PSPHead,
    pspnet,
    pspnet_r50,
    pspnet_slim,
)
from glimpse.segmentors.upernet import UPerHead, upernet, upernet_r50, upernet_slim

__all__ = [
    "DILATED_D8",
    "EncoderDecoder",
    "FCNHead",
    "PSPHead",
    "UPerHead",
    "pspnet",
    "pspnet_r50",
    "pspnet_slim",
    "upernet",
    "upernet_r50",
    "upernet_slim",
]
