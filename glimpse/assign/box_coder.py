"""Box regression targets: mmdetection v2's ``DeltaXYWHBBoxCoder`` (no ``+1`` on widths)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DeltaXYWHBoxCoder"]


class DeltaXYWHBoxCoder:
    """Encode boxes as normalised (dx, dy, dw, dh) deltas relative to reference boxes.

    ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``,
    ``dh = log(gh / ph)`` with centres ``(px, py)`` and sizes ``(pw, ph)``, then
    ``(delta - means) / stds``. The stds are 1 for the RPN and ``(0.1, 0.1, 0.2, 0.2)`` for
    the R-CNN box head (mmdet configs).

    Args:
        means: per-coordinate means subtracted after encoding.
        stds: per-coordinate stds divided after encoding.
        clip_border: clip decoded boxes to ``max_shape`` when given.
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clip_border: bool = True,
    ) -> None:
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"means and stds need 4 values, got {means} and {stds}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clip_border = clip_border

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """Deltas that move ``boxes`` onto ``gt``.

        Args:
            boxes: [N, 4] xyxy reference boxes (anchors or proposals).
            gt: [N, 4] xyxy target boxes.

        Returns:
            [N, 4] normalised deltas.
        """
        if boxes.shape != gt.shape:
            raise ValueError(f"encode needs matching shapes, got {tuple(boxes.shape)} and "
                             f"{tuple(gt.shape)}")
        boxes = boxes.float()
        gt = gt.float()
        pw = boxes[:, 2] - boxes[:, 0]
        ph = boxes[:, 3] - boxes[:, 1]
        px = boxes[:, 0] + 0.5 * pw
        py = boxes[:, 1] + 0.5 * ph
        gw = gt[:, 2] - gt[:, 0]
        gh = gt[:, 3] - gt[:, 1]
        gx = gt[:, 0] + 0.5 * gw
        gy = gt[:, 1] + 0.5 * gh
        deltas = torch.stack(
            ((gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)), dim=-1
        )
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(
        self,
        boxes: Tensor,
        deltas: Tensor,
        max_shape: tuple[int, int] | None = None,
        wh_ratio_clip: float = 16 / 1000,
    ) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            boxes: [N, 4] xyxy reference boxes.
            deltas: [N, 4 * k] normalised deltas (k > 1 for class-specific regression; each
                group of 4 is applied to the same box).
            max_shape: (height, width) to clip to (when ``clip_border``).
            wh_ratio_clip: ``|dw|, |dh|`` are clamped to ``|log(wh_ratio_clip)|`` so that
                ``exp`` cannot overflow (mmdet's 16 / 1000).

        Returns:
            [N, 4 * k] xyxy boxes.
        """
        if deltas.shape[0] != boxes.shape[0] or deltas.shape[-1] % 4:
            raise ValueError(f"decode got {tuple(boxes.shape)} boxes for {tuple(deltas.shape)} "
                             "deltas")
        n = deltas.shape[0]
        d = deltas.reshape(n, deltas.shape[-1] // 4, 4)  # [N, k, 4]
        means = d.new_tensor(self.means)
        stds = d.new_tensor(self.stds)
        d = d * stds + means
        max_ratio = abs(math.log(wh_ratio_clip))
        dx, dy = d[..., 0], d[..., 1]
        dw = d[..., 2].clamp(min=-max_ratio, max=max_ratio)
        dh = d[..., 3].clamp(min=-max_ratio, max=max_ratio)
        boxes = boxes.to(d.dtype)
        pw = (boxes[:, 2] - boxes[:, 0])[:, None]
        ph = (boxes[:, 3] - boxes[:, 1])[:, None]
        px = (boxes[:, 0] + 0.5 * (boxes[:, 2] - boxes[:, 0]))[:, None]
        py = (boxes[:, 1] + 0.5 * (boxes[:, 3] - boxes[:, 1]))[:, None]
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        gx = px + pw * dx
        gy = py + ph * dy
        x1, y1 = gx - 0.5 * gw, gy - 0.5 * gh
        x2, y2 = gx + 0.5 * gw, gy + 0.5 * gh
        if self.clip_border and max_shape is not None:
            h, w = max_shape
            x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
            y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(n, deltas.shape[-1])  # [N, 4k]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(means={self.means}, stds={self.stds})"
