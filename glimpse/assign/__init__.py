"""Anchors, box coders, assigners and samplers with mmdetection v2's conventions."""

from glimpse.assign.anchors import AnchorGenerator
from glimpse.assign.assigner import AssignResult, MaxIoUAssigner, box_iof
from glimpse.assign.box_coder import DeltaXYWHBoxCoder
from glimpse.assign.sampler import RandomSampler, SamplingResult

__all__ = [
    "AnchorGenerator",
    "AssignResult",
    "DeltaXYWHBoxCoder",
    "MaxIoUAssigner",
    "RandomSampler",
    "SamplingResult",
    "box_iof",
]
