"""Anchor generation with mmdetection v2's ``AnchorGenerator`` conventions.

Base anchors (one set per level) follow mmdet v2 (no ``+1`` on widths):

* ``base_size`` defaults to the level's stride; the centre is ``center_offset * base_size``
  in both axes (0 in the Faster R-CNN / RetinaNet configs, i.e. the top-left pixel corner);
* ``h_ratio = sqrt(ratio)``, ``w_ratio = 1 / h_ratio`` (ratio = height / width);
* ``w = base_size * w_ratio * scale`` and ``h = base_size * h_ratio * scale``, enumerated
  ratio-major (for every ratio, all scales: mmdet's ``scale_major=True``);
* anchor = ``[cx - w/2, cy - h/2, cx + w/2, cy + h/2]``.

Grid anchors shift the base set by ``(x * stride, y * stride)`` for every feature location and
are laid out ``(y, x, anchor)`` (row-major locations, the anchors of one location contiguous),
which matches a head output permuted as ``[B, A*C, H, W] -> [B, H, W, A, C]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Multi-level anchors over feature maps (mmdet v2 ``AnchorGenerator``).

    Args:
        strides: stride of each level in pixels, e.g. ``(4, 8, 16, 32, 64)`` for FPN P2-P6.
        ratios: height / width ratios; ``(0.5, 1.0, 2.0)`` in the RPN / RetinaNet configs.
        scales: anchor scales relative to ``base_size`` (``(8,)`` for the RPN: 32 px at P2).
        base_sizes: per-level base sizes; default the strides.
        center_offset: centre of the base anchors as a fraction of ``base_size`` (0 in mmdet
            v2 configs, 0.5 would centre them on the pixel).
    """

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8,),
        base_sizes: Sequence[float] | None = None,
        center_offset: float = 0.0,
    ) -> None:
        if base_sizes is not None and len(base_sizes) != len(strides):
            raise ValueError(f"base_sizes has {len(base_sizes)} entries for {len(strides)} strides")
        if not 0.0 <= center_offset <= 1.0:
            raise ValueError(f"center_offset must lie in [0, 1], got {center_offset}")
        self.strides = [int(s) for s in strides]
        self.ratios = [float(r) for r in ratios]
        self.scales = [float(s) for s in scales]
        self.base_sizes = [float(b) for b in (base_sizes if base_sizes is not None else strides)]
        self.center_offset = float(center_offset)
        self.base_anchors = [self._base_anchors(b) for b in self.base_sizes]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_anchors(self) -> int:
        """Anchors per feature location (the same on every level)."""
        return len(self.ratios) * len(self.scales)

    def _base_anchors(self, base_size: float) -> Tensor:
        """[A, 4] xyxy anchors of one level centred at ``center_offset * base_size``."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32)
        scales = torch.tensor(self.scales, dtype=torch.float32)
        center = self.center_offset * base_size
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1.0 / h_ratios
        # ratio-major: index = ratio_index * len(scales) + scale_index (mmdet scale_major=True)
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack(
            (center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs), dim=-1
        )

    def single_level_grid_anchors(
        self, level: int, feature_size: tuple[int, int], device: torch.device | str = "cpu"
    ) -> Tensor:
        """[H * W * A, 4] xyxy anchors of one level, ordered (y, x, anchor)."""
        h, w = int(feature_size[0]), int(feature_size[1])
        stride = self.strides[level]
        base = self.base_anchors[level].to(device)
        shift_x = torch.arange(w, device=device, dtype=torch.float32) * stride
        shift_y = torch.arange(h, device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W] each
        shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
        return (shifts + base[None]).reshape(-1, 4)  # [H*W*A, 4]

    def grid_anchors(
        self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        """Anchors of every level.

        Args:
            feature_sizes: (height, width) of each level's feature map.
            device: where to create the anchors.

        Returns:
            One [H_l * W_l * A, 4] xyxy tensor per level.
        """
        self._check_levels(feature_sizes)
        return [
            self.single_level_grid_anchors(i, size, device) for i, size in enumerate(feature_sizes)
        ]

    def valid_flags(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        pad_size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """Which anchors sit on feature locations inside one image's padded extent.

        In a batch padded to its largest image, the feature maps of a smaller image extend past
        it; mmdet marks the locations beyond ``ceil(pad / stride)`` invalid.

        Args:
            feature_sizes: (height, width) of each level's (batch) feature map.
            pad_size: (height, width) of this image padded to the size divisor (mmdet
                ``pad_shape``).
            device: where to create the flags.

        Returns:
            One bool[H_l * W_l * A] tensor per level, ordered like :meth:`grid_anchors`.
        """
        self._check_levels(feature_sizes)
        flags = []
        for stride, (h, w) in zip(self.strides, feature_sizes):
            valid_h = min(math.ceil(pad_size[0] / stride), int(h))
            valid_w = min(math.ceil(pad_size[1] / stride), int(w))
            valid_y = torch.arange(int(h), device=device) < valid_h
            valid_x = torch.arange(int(w), device=device) < valid_w
            valid = (valid_y[:, None] & valid_x[None, :]).reshape(-1)  # [H*W]
            flags.append(valid[:, None].expand(-1, self.num_base_anchors).reshape(-1))
        return flags

    def _check_levels(self, feature_sizes: Sequence[tuple[int, int]]) -> None:
        if len(feature_sizes) != self.num_levels:
            raise ValueError(
                f"got {len(feature_sizes)} feature maps for {self.num_levels} anchor levels "
                f"(strides {self.strides})"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strides={self.strides}, ratios={self.ratios}, "
            f"scales={self.scales}, base_sizes={self.base_sizes}, "
            f"center_offset={self.center_offset})"
        )
