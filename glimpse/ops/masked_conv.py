"""Masked convolution (Guided Anchoring, Wang et al., CVPR 2019, inference of GA-RPN/GA-RetinaNet).

A stride-1 convolution evaluated only at output pixels where ``mask > 0``, with zeros elsewhere
(mmcv's MaskedConv2d): functionally ``conv2d(features) * (mask > 0)``, but the compiled kernel's
cost scales with the number of selected pixels, which the guided-anchor location branch keeps
small. Unlike mmcv's, it takes any batch size and has gradients. Above
:data:`DENSE_ABOVE_DENSITY` kept pixels on CPU the dense convolution followed by the selection is
faster than the kernel, so :func:`masked_conv2d` takes that path there (same result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse.ops import _ext

__all__ = ["DENSE_ABOVE_DENSITY", "masked_conv2d", "masked_conv2d_ref"]

# Fraction of kept output pixels above which the dense conv2d + selection beats the compiled CPU
# kernel (256 channels, 3x3, one thread, GA-RPN's P2..P6 maps of an 800x1216 image). Measured with
#   ../shared/tools/cpu-slot python -m glimpse bench masked_conv --densities \
#       0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.7 --no-write
# which prints the kernel/dense crossing per level ("break_even"). Four runs on this 2-core
# machine (the other core training) put it between 0.35 and 0.66 per level, median about 0.5
# (P3 and P5 lowest, about 0.45). 0.45, the low end, keeps the kernel off where it loses; above
# it, on levels that break even later, dense costs up to ~10% more than the kernel would have.
# Only the CPU kernel was measured; CUDA always runs its kernel.
DENSE_ABOVE_DENSITY = 0.45


def _pair(padding: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(padding, int):
        return (padding, padding)
    if len(padding) != 2:
        raise ValueError(f"masked_conv2d: padding must be an int or two ints, got {padding}")
    return (int(padding[0]), int(padding[1]))


def _prepare(
    features: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None, padding
) -> tuple[Tensor, tuple[int, int]]:
    """Checks the arguments; returns the mask as (N, Ho, Wo) and the padding as a pair."""
    if features.dim() != 4:
        raise ValueError(f"masked_conv2d: features must be 4-D (N, C, H, W), got shape "
                         f"{tuple(features.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"masked_conv2d: weight must be 4-D (Co, C, kh, kw), got shape "
                         f"{tuple(weight.shape)}")
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"masked_conv2d: mask must be (N, Ho, Wo) or (N, 1, Ho, Wo), got shape "
                         f"{tuple(mask.shape)}")
    ph, pw = _pair(padding)
    if ph < 0 or pw < 0:
        raise ValueError(f"masked_conv2d: padding must be non-negative, got {padding}")
    n, c, h, w = features.shape
    if weight.shape[1] != c:
        raise ValueError(f"masked_conv2d: weight expects {weight.shape[1]} input channels, "
                         f"features have {c}")
    ho, wo = h + 2 * ph - weight.shape[2] + 1, w + 2 * pw - weight.shape[3] + 1
    if ho < 0 or wo < 0:
        raise ValueError(f"masked_conv2d: kernel {tuple(weight.shape[2:])} is larger than the "
                         f"padded input ({h + 2 * ph}, {w + 2 * pw})")
    if tuple(mask.shape) != (n, ho, wo):
        raise ValueError(f"masked_conv2d: mask must have shape (N, Ho, Wo) = {(n, ho, wo)} "
                         f"(the output size), got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"masked_conv2d: bias must have shape ({weight.shape[0]},), got "
                         f"{tuple(bias.shape)}")
    for name, t in (("mask", mask), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != features.device:
            raise ValueError(f"masked_conv2d: features are on {features.device}, {name} on "
                             f"{t.device}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != features.dtype:
            raise ValueError(f"masked_conv2d: features are {features.dtype}, {name} {t.dtype}")
    return mask, (ph, pw)


def masked_conv2d_ref(
    features: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """Pure-PyTorch masked convolution: the specification (computes the dense convolution).

    Args:
        features: (N, C, H, W).
        mask: (N, Ho, Wo) or (N, 1, Ho, Wo), bool or numeric; output pixels with mask > 0 are
            computed, the others are 0. (Ho, Wo) is the convolution's output size.
        weight: (Co, C, kh, kw).
        bias: (Co,) or None.
        padding: zero padding, int or (ph, pw). Stride and dilation are 1.

    Returns:
        (N, Co, Ho, Wo).
    """
    mask, padding = _prepare(features, mask, weight, bias, padding)
    if mask.numel() == 0:
        # conv2d rejects zero-size maps; keep the graph so that backward still works.
        shape = (mask.shape[0], weight.shape[0], *mask.shape[1:])
        return features.new_zeros(shape) + (features.sum() + weight.sum()) * 0
    out = F.conv2d(features, weight, bias, padding=padding)
    return out.masked_fill(~(mask > 0).unsqueeze(1), 0)


def masked_conv2d(
    features: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """Masked convolution: compiled kernel (cost ~ number of masked pixels) when built for this
    device and dtype, else :func:`masked_conv2d_ref`. Same arguments, result and gradients.

    On CPU, when more than :data:`DENSE_ABOVE_DENSITY` of the output pixels are kept, the
    reference (dense convolution, then selection) runs instead: it is faster there.
    """
    mask, padding = _prepare(features, mask, weight, bias, padding)
    dense_is_faster = (features.device.type == "cpu" and mask.numel() > 0
                       and int(torch.count_nonzero(mask > 0)) > DENSE_ABOVE_DENSITY * mask.numel())
    if not dense_is_faster and _ext.available("masked_conv2d", features.device.type,
                                              features.dtype):
        return torch.ops.glimpse.masked_conv2d(features, mask, weight, bias, list(padding))
    return masked_conv2d_ref(features, mask, weight, bias, padding)
