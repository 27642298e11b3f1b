"""Upsampling to an arbitrary target size with a fixed-scale upsampler (the CARAFE paper's
segmentation positions).

The FPN top-down step is an exact x2 (:class:`~glimpse.necks.ScaleThenCrop` suffices), but the
other positions the CARAFE paper ablates in UperNet are not: the pyramid-pooling branches go
from 1x1, 2x2, 3x3 and 6x6 to the C5 size, and the fuse step resizes P3..P5 by x2, x4 and x8.
How the paper handled these sizes is not published (reference ga_carafe_htc_more.md B1), so
glimpse makes one documented choice: :class:`ResizeThenScale` first resizes the input
bilinearly to ``ceil(size / s)`` (a no-op when it already has that size, as P3..P5 have for
s = 2, 4, 8), then lets the learned upsampler do the last x``s``, and crops to ``size``.

Every module built here follows the FPN upsampler contract ``module(x, size)``:
``[B, C, h, w] -> [B, C, *size]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.layers import upsampler_factory
from glimpse.necks.fpn import InterpolateUpsample

__all__ = ["ResizeThenScale", "SizedUpsamplerSpec", "sized_upsampler"]

# An upsampler for a to-size position: None (bilinear, the CSAIL default), the name of a Table 2
# upsampler (see glimpse.layers.UPSAMPLERS) or a factory ``f(channels) -> module(x, size)``.
SizedUpsamplerSpec = str | Callable[[int], nn.Module] | None


class ResizeThenScale(nn.Module):
    """Bilinear resize to ``ceil(size / s)``, a fixed-scale upsampler (x``s``), crop to ``size``.

    Args:
        module: fixed-scale upsampler ``module(x) -> [B, C, s*h, s*w]`` (e.g. CARAFE).
        scale_factor: its scale ``s``.
    """

    def __init__(self, module: nn.Module, scale_factor: int) -> None:
        super().__init__()
        if not isinstance(scale_factor, int) or scale_factor < 1:
            raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")
        self.module = module
        self.scale_factor = scale_factor

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """[B, C, h, w] -> [B, C, *size]."""
        s = self.scale_factor
        low = (math.ceil(size[0] / s), math.ceil(size[1] / s))
        if tuple(x.shape[-2:]) != low:
            x = F.interpolate(x, size=low, mode="bilinear", align_corners=False)
        return self.module(x)[..., : size[0], : size[1]]

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"


def sized_upsampler(spec: SizedUpsamplerSpec, scale_factor: int = 2
                    ) -> Callable[[int], nn.Module]:
    """Factory ``f(channels) -> module(x, size)`` for one upsampling position.

    Args:
        spec: None (bilinear interpolation, ``align_corners=False``: CSAIL's UperNet), a Table 2
            upsampler name (wrapped in :class:`ResizeThenScale` at ``scale_factor``) or a
            factory already following the to-size contract (returned unchanged).
        scale_factor: the learned upsampler's scale for named upsamplers.

    Raises:
        ValueError: unknown upsampler name.
    """
    if spec is None:
        return lambda channels: InterpolateUpsample(channels, mode="bilinear")
    if isinstance(spec, str):
        fixed = upsampler_factory(spec, scale_factor=scale_factor)
        return lambda channels: ResizeThenScale(fixed(channels), scale_factor)
    if not callable(spec):
        raise TypeError(f"upsampler must be None, a name or a factory, got {type(spec).__name__}")
    return spec
