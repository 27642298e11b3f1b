"""Functional ops: compiled glimpse_kernels when built for the device, else pure PyTorch."""

from glimpse.ops._ext import kernel_status
from glimpse.ops.carafe import carafe, carafe_ref
from glimpse.ops.deform_conv import deform_conv2d, deform_conv2d_sampled
from glimpse.ops.masked_conv import masked_conv2d, masked_conv2d_ref
from glimpse.ops.roi_align import roi_align, roi_align_ref

__all__ = ["carafe", "carafe_ref", "deform_conv2d", "deform_conv2d_sampled", "kernel_status",
           "masked_conv2d", "masked_conv2d_ref", "roi_align", "roi_align_ref"]
