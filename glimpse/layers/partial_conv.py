"""Partial convolution (Liu et al., "Image Inpainting for Irregular Holes Using Partial
Convolutions", ECCV 2018), as NVIDIA's reference and mmediting's ``PartialConv2d`` compute it.

With ``M`` the validity mask (1 = known pixel) and ``W`` the kernel over a window::

    x' = W^T (X * M) * sum(1) / sum(M) + b    where sum(M) > 0
    x' = 0                                    elsewhere
    m' = 1 if sum(M) > 0 else 0

``sum(1)`` is the window size (``k*k``, times the input channels when ``multi_channel``), and
``sum(M)`` the number of valid inputs under the window (a conv of the mask with a ones kernel).
With ``multi_channel=True`` the mask has one channel per input channel (mmediting's encoder-
decoder: masks are concatenated alongside features in the U-Net skips) and the updated mask is
repeated over the output channels; otherwise the mask is [B, 1, H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PartialConv2d"]

_EPS = 1e-8  # mmediting's eps in the renormalisation ratio


class PartialConv2d(nn.Conv2d):
    """``nn.Conv2d`` with mask-aware renormalisation and mask update.

    Args:
        (as :class:`torch.nn.Conv2d`), plus
        multi_channel: the mask has ``in_channels`` channels (else one).

    Shapes:
        forward(x [B, C_in, H, W], mask [B, C_in or 1, H, W]) ->
        (y [B, C_out, H', W'], new_mask [B, C_out or 1, H', W']).
    """

    def __init__(self, *args, multi_channel: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f"PartialConv2d supports groups=1 only, got {self.groups}")
        self.multi_channel = multi_channel
        mask_in = self.in_channels if multi_channel else 1
        self.register_buffer("mask_kernel", torch.ones(1, mask_in, *self.kernel_size),
                             persistent=False)
        self.window_size = float(mask_in * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        expected = self.in_channels if self.multi_channel else 1
        if mask.dim() != 4 or mask.shape[1] != expected or mask.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mask must be [B, {expected}, {x.shape[-2]}, {x.shape[-1]}], "
                             f"got {tuple(mask.shape)}")
        with torch.no_grad():
            valid = F.conv2d(mask.to(x.dtype), self.mask_kernel.to(x.dtype), None, self.stride,
                             self.padding, self.dilation)
            new_mask = valid.clamp(0, 1)
            ratio = self.window_size / (valid + _EPS) * new_mask
        raw = F.conv2d(x * mask, self.weight, None, self.stride, self.padding, self.dilation)
        out = raw * ratio
        if self.bias is not None:
            out = (out + self.bias.view(1, -1, 1, 1)) * new_mask
        if self.multi_channel:
            new_mask = new_mask.expand(-1, self.out_channels, -1, -1)
        return out, new_mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, multi_channel={self.multi_channel}"
