"""Anchors, box coders, assigners, samplers and anchor targets (mmdetection v2 conventions)."""

from glimpse.assign.anchors import AnchorGenerator
from glimpse.assign.assigner import AssignResult, MaxIoUAssigner, box_iof
from glimpse.assign.box_coder import DeltaXYWHBoxCoder
from glimpse.assign.guided import (
    ApproxMaxIoUAssigner,
    LocationTargets,
    ShapeTargets,
    approx_anchor_generator,
    guided_anchors,
    location_targets,
    shape_targets,
    square_anchor_generator,
)
from glimpse.assign.sampler import RandomSampler, SamplingResult
from glimpse.assign.targets import AnchorTargets, anchor_targets

__all__ = [
    "AnchorGenerator",
    "AnchorTargets",
    "ApproxMaxIoUAssigner",
    "AssignResult",
    "DeltaXYWHBoxCoder",
    "LocationTargets",
    "MaxIoUAssigner",
    "RandomSampler",
    "SamplingResult",
    "ShapeTargets",
    "anchor_targets",
    "approx_anchor_generator",
    "box_iof",
    "guided_anchors",
    "location_targets",
    "shape_targets",
    "square_anchor_generator",
]
