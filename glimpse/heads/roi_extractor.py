"""Multi-level RoIAlign with mmdetection's level mapping (``SingleRoIExtractor``).

torchvision's ``MultiScaleRoIAlign`` maps boxes to levels with the FPN paper's
``floor(4 + log2(sqrt(wh) / 224))`` and a canonical level; mmdetection uses
``floor(log2(sqrt(wh) / finest_scale + 1e-6))`` with ``finest_scale = 56``, clamped to the
available levels, so boxes below 112 px go to P2, 112-224 to P3, 224-448 to P4 and larger to P5.
The papers' numbers were made with mmdet's rule, so glimpse writes its own small loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from glimpse.ops import roi_align

__all__ = ["RoIExtractor", "boxes_to_rois", "map_roi_levels"]


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image [N_i, 4] xyxy boxes -> [sum N_i, 5] RoIs ``(image index, x1, y1, x2, y2)``."""
    rois = [torch.cat((b.new_full((b.shape[0], 1), float(i)), b[:, :4]), 1)
            for i, b in enumerate(boxes)]
    return torch.cat(rois) if rois else torch.zeros((0, 5))


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """int64[R] pyramid level of each RoI: ``floor(log2(sqrt(w h) / finest_scale + 1e-6))``.

    Args:
        rois: [R, 5] RoIs (image index, x1, y1, x2, y2), input-image pixels.
        num_levels: number of levels; results are clamped to ``[0, num_levels - 1]``.
        finest_scale: scale mapped to level 0 (56 in mmdet).
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class RoIExtractor(nn.Module):
    """Pool a fixed-size feature for each RoI from the pyramid level its scale maps to.

    Uses :func:`glimpse.ops.roi_align` (torchvision's results, a faster CPU backward) with
    ``aligned=True`` (half-pixel offset, mmdet v2's
    ``RoIAlign``) and ``sampling_ratio=0`` (adaptive ``ceil(bin size)`` samples per bin, mmdet
    v2 configs; v1 used 2).

    Args:
        output_size: side of the pooled feature (7 for boxes, 14 for masks).
        strides: strides of the levels used, finest first (4, 8, 16, 32 for P2-P5); extra
            coarser maps handed to :meth:`forward` (P6) are ignored.
        finest_scale: see :func:`map_roi_levels`.
        sampling_ratio: RoIAlign samples per bin side; 0 is adaptive.
    """

    def __init__(
        self,
        output_size: int = 7,
        strides: Sequence[int] = (4, 8, 16, 32),
        finest_scale: float = 56.0,
        sampling_ratio: int = 0,
    ) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.strides = [int(s) for s in strides]
        self.finest_scale = float(finest_scale)
        self.sampling_ratio = int(sampling_ratio)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Pooled RoI features.

        Args:
            feats: pyramid maps [B, C, H_l, W_l], finest first (at least ``len(strides)``).
            rois: [R, 5] (image index, x1, y1, x2, y2) in input-image pixels.

        Returns:
            [R, C, output_size, output_size].
        """
        if len(feats) < self.num_levels:
            raise ValueError(f"RoIExtractor needs {self.num_levels} levels, got {len(feats)}")
        size = self.output_size
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], size, size))
        if rois.shape[0] == 0:
            return out
        rois = rois.to(feats[0].dtype)
        levels = map_roi_levels(rois, self.num_levels, self.finest_scale)
        for level, stride in enumerate(self.strides):
            idx = (levels == level).nonzero().flatten()
            if idx.numel() == 0:
                continue
            out[idx] = roi_align(feats[level], rois[idx], (size, size), 1.0 / stride,
                                 self.sampling_ratio, aligned=True)
        return out

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, strides={self.strides}, "
                f"finest_scale={self.finest_scale}, sampling_ratio={self.sampling_ratio}")
