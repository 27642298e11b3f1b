"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017) with a faster CPU backward.

Each output bin of a RoI averages ``grid_h x grid_w`` bilinear samples of the feature map:

    out[r, c, i, j] = mean_{a, b} bilinear(input[n_r, c], y_{i,a}, x_{j,b}),
    y_{i,a} = y1 + (i + (a + 0.5) / grid_h) * h / pooled_h   (x likewise),

with the box scaled by ``spatial_scale``, shifted by -0.5 when ``aligned`` (mmdet v2's RoIAlign),
``grid = sampling_ratio`` or, when it is 0, ``ceil(bin size)`` per RoI (adaptive). Samples outside
``[-1, H] x [-1, W]`` count as 0; coordinates in ``[-1, 0)`` are clamped to 0.

These are torchvision's semantics, and the compiled CPU kernels give torchvision's results to
the bit, forward and backward. torchvision's CPU backward recomputes every sample's geometry
per channel and was 42% of a slim Faster R-CNN training step; the compiled one tabulates it
once per RoI and scatters through a channels-last buffer (see
``kernels/csrc/cpu/roi_align_kernel.cpp``). Without the kernels (or on other devices)
:func:`roi_align` is ``torchvision.ops.roi_align``; :func:`roi_align_ref` is the specification in
pure PyTorch, for tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

from glimpse.ops import _ext

__all__ = ["roi_align", "roi_align_ref"]


def _output_size(output_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"roi_align: output_size must be a positive int or two, got "
                         f"{output_size}")
    return int(size[0]), int(size[1])


def _check(input: Tensor, rois: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"roi_align: input must be 4-D (N, C, H, W), got shape "
                         f"{tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: rois must be (R, 5) (batch index, x1, y1, x2, y2), got "
                         f"shape {tuple(rois.shape)}")
    if rois.device != input.device or rois.dtype != input.dtype:
        raise ValueError(f"roi_align: rois ({rois.dtype}, {rois.device}) must match the input "
                         f"({input.dtype}, {input.device})")


def _axis_weights(start: float, size: float, pooled: int, grid: int, length: int,
                  like: Tensor) -> Tensor:
    """[pooled, grid, length] bilinear weights of the samples of one axis (0 outside)."""
    bin_size = size / pooled
    idx = torch.arange(pooled, dtype=like.dtype, device=like.device)[:, None]
    sub = (torch.arange(grid, dtype=like.dtype, device=like.device)[None] + 0.5) / grid
    pos = start + idx * bin_size + sub * bin_size  # [pooled, grid]
    valid = (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=length - 1)
    frac = torch.where(low >= length - 1, torch.zeros_like(pos), pos - low)
    high = (low + 1).clamp(max=length - 1)
    cells = torch.arange(length, dtype=like.dtype, device=like.device)
    weights = ((cells == low[..., None]) * (1 - frac)[..., None]
               + (cells == high[..., None]) * frac[..., None])
    return weights * valid[..., None]


def roi_align_ref(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pure-PyTorch RoIAlign, one RoI at a time: the specification (slow; differentiable).

    Bilinear sampling is separable, so each RoI is ``A_y @ input[n] @ A_x^T`` with per-axis
    weight matrices summed over the samples of each bin.

    Args:
        input: (N, C, H, W) features.
        rois: (R, 5) boxes (batch index, x1, y1, x2, y2) in input-image coordinates.
        output_size: pooled (height, width), or one int for both.
        spatial_scale: feature-map size over image size (1 / stride).
        sampling_ratio: samples per bin side; <= 0 is adaptive (``ceil`` of the bin size).
        aligned: shift boxes by -0.5 pixel (mmdet v2, Detectron2).

    Returns:
        (R, C, pooled_height, pooled_width).
    """
    pooled_h, pooled_w = _output_size(output_size)
    _check(input, rois)
    _, channels, height, width = input.shape
    out = []
    offset = 0.5 if aligned else 0.0
    for roi in rois.tolist():
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        a_y = _axis_weights(y1, roi_h, pooled_h, grid_h, height, input).sum(1)  # [ph, H]
        a_x = _axis_weights(x1, roi_w, pooled_w, grid_w, width, input).sum(1)  # [pw, W]
        pooled = a_y @ input[int(roi[0])] @ a_x.T  # [C, ph, pw]
        out.append(pooled / max(grid_h * grid_w, 1))
    if not out:  # keep the graph so that backward still works
        return input.new_zeros((0, channels, pooled_h, pooled_w)) + input.sum() * 0
    return torch.stack(out)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign with ``torchvision.ops.roi_align``'s arguments and results (see the module).

    Uses the compiled CPU kernels when they are built (fast backward), else torchvision's op.
    Arguments as :func:`roi_align_ref` (``rois`` as one (R, 5) tensor, not a list of boxes).
    """
    size = _output_size(output_size)
    _check(input, rois)
    if _ext.available("roi_align", input.device.type, input.dtype):
        return torch.ops.glimpse.roi_align(input, rois, float(spatial_scale), size[0], size[1],
                                           max(int(sampling_ratio), 0), bool(aligned))
    return tv_roi_align(input, rois, size, spatial_scale, sampling_ratio, aligned)
