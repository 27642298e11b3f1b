"""Anchors, box coders, assigners, samplers and anchor targets (mmdetection v2 conventions)."""

from glimpse.assign.anchors import AnchorGenerator
from glimpse.assign.assigner import AssignResult, MaxIoUAssigner, box_iof
from glimpse.assign.box_coder import DeltaXYWHBoxCoder
from glimpse.assign.sampler import RandomSampler, SamplingResult
from glimpse.assign.targets import AnchorTargets, anchor_targets

__all__ = [
    "AnchorGenerator",
    "AnchorTargets",
    "AssignResult",
    "DeltaXYWHBoxCoder",
    "MaxIoUAssigner",
    "RandomSampler",
    "SamplingResult",
    "anchor_targets",
    "box_iof",
]
