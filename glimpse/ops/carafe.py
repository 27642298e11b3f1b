"""CARAFE reassembly (Wang et al., "CARAFE: Content-Aware ReAssembly of FEatures", ICCV 2019).

Every output pixel (Y, X) of the s-times larger map is a weighted sum of the k x k neighbourhood
of its source pixel (Y // s, X // s), with weights predicted per output pixel (the masks):

    out[n, c, Y, X] = sum_{ky, kx} masks[n, g*k*k + ky*k + kx, Y, X]
                                   * features[n, c, Y // s + ky - r, X // s + kx - r],

where r = (k - 1) / 2, g = c // (C / G) (contiguous channel groups) and taps outside the map count
as zero (mmcv's kernels skip them; the masks are not renormalised). This is mmcv's layout, checked
against its golden tensors in tests/ops/test_carafe.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse.ops import _ext

__all__ = ["carafe", "carafe_ref"]


def _check_carafe_args(
    features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int
) -> None:
    if not isinstance(features, Tensor) or not isinstance(masks, Tensor):
        raise TypeError("carafe: features and masks must be tensors")
    if features.dim() != 4:
        raise ValueError(f"carafe: features must be 4-D (N, C, H, W), got shape "
                         f"{tuple(features.shape)}")
    if masks.dim() != 4:
        raise ValueError(f"carafe: masks must be 4-D (N, G*k*k, sH, sW), got shape "
                         f"{tuple(masks.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"carafe: kernel_size must be odd and >= 1, got {kernel_size}")
    if group_size < 1:
        raise ValueError(f"carafe: group_size must be >= 1, got {group_size}")
    if scale_factor < 1:
        raise ValueError(f"carafe: scale_factor must be an int >= 1, got {scale_factor}")
    n, c, h, w = features.shape
    if c % group_size != 0:
        raise ValueError(f"carafe: feature channels ({c}) must be divisible by group_size "
                         f"({group_size})")
    if masks.shape[0] != n:
        raise ValueError(f"carafe: batch sizes differ: features {n}, masks {masks.shape[0]}")
    taps = kernel_size * kernel_size * group_size
    if masks.shape[1] != taps:
        raise ValueError(f"carafe: masks must have kernel_size**2 * group_size = {taps} channels "
                         f"(kernel_size={kernel_size}, group_size={group_size}), got "
                         f"{masks.shape[1]}")
    if masks.shape[2] != h * scale_factor or masks.shape[3] != w * scale_factor:
        raise ValueError(f"carafe: masks must be scale_factor ({scale_factor}) x the feature size "
                         f"({h}, {w}), i.e. ({h * scale_factor}, {w * scale_factor}), got "
                         f"{tuple(masks.shape[2:])}")
    if features.device != masks.device:
        raise ValueError(f"carafe: features are on {features.device}, masks on {masks.device}")
    if features.dtype != masks.dtype:
        raise ValueError(f"carafe: features are {features.dtype}, masks {masks.dtype}")


def carafe_ref(
    features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int
) -> Tensor:
    """Pure-PyTorch CARAFE: the specification the compiled kernels are tested against.

    Differentiable, deterministic and torch.compile friendly. Memory: it materialises the
    k*k-times larger unfolded features.

    Args:
        features: (N, C, H, W) feature map to upsample.
        masks: (N, G*k*k, s*H, s*W) reassembly kernels, channel g*k*k + ky*k + kx for group g and
            tap (ky, kx); usually softmax-normalised per group, but any values work.
        kernel_size: k, odd.
        group_size: G; channel c uses the kernels of group c // (C / G).
        scale_factor: s, integer upsampling factor.

    Returns:
        (N, C, s*H, s*W) reassembled features.
    """
    _check_carafe_args(features, masks, kernel_size, group_size, scale_factor)
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    if features.numel() == 0 or masks.numel() == 0:
        # Keep the autograd graph so that empty batches backpropagate zeros like non-empty ones.
        return features.new_zeros((n, c, h * s, w * s)) + (features.sum() + masks.sum()) * 0
    # Zero padding of the unfold = mmcv skipping out-of-range taps.
    cols = F.unfold(features, k, padding=(k - 1) // 2)  # (N, C*k*k, H*W)
    cols = cols.view(n, g, c // g, k * k, h, w)
    # Output (Y, X) = (h*s + p, w*s + q): its kernels are masks[..., h, p, w, q].
    kernels = masks.reshape(n, g, k * k, h, s, w, s)
    out = torch.einsum("ngckhw,ngkhpwq->ngchpwq", cols, kernels)  # (N, G, C/G, H, s, W, s)
    return out.reshape(n, c, h * s, w * s)


def _autocast(features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Under autocast, float32 inputs go to the autocast dtype (float64 stays, as in autocast's
    lower-precision ops); otherwise the inputs are returned unchanged."""
    device_type = features.device.type
    if not torch.is_autocast_enabled(device_type):
        return features, masks
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.dtype == torch.float32 else t for t in (features, masks))


def carafe(
    features: Tensor, masks: Tensor, kernel_size: int, group_size: int, scale_factor: int
) -> Tensor:
    """CARAFE reassembly: compiled kernel when built for this device and dtype, else the reference.

    Same arguments, result and gradients (features and masks) as :func:`carafe_ref`. Works on
    channels-last and non-contiguous inputs, empty batches and zero-size maps; the compiled path
    is a registered custom op, so it works under ``torch.compile(fullgraph=True)`` and counts its
    FLOPs in ``torch.utils.flop_counter.FlopCounterMode``. Under ``torch.autocast`` both inputs
    are cast to the autocast dtype (e.g. bfloat16 features from a convolution and float32 masks
    from a softmax); the CPU kernel computes bfloat16 and float16 with float32 accumulation.
    """
    if isinstance(features, Tensor) and isinstance(masks, Tensor):
        features, masks = _autocast(features, masks)
    _check_carafe_args(features, masks, kernel_size, group_size, scale_factor)
    if _ext.available("carafe", features.device.type, features.dtype):
        return torch.ops.glimpse.carafe(features, masks, kernel_size, group_size, scale_factor)
    return carafe_ref(features, masks, kernel_size, group_size, scale_factor)
