"""The upsamplers of the CARAFE paper's Table 2 (plus DySample), their lookup by name and their
FLOPs per location.

**Contract.** Every upsampler is built as ``cls(channels, scale_factor=2, ...)`` and maps
[B, C, H, W] to [B, C, sH, sW]: the mask head's contract
(:class:`~glimpse.heads.roi_mask.FCNMaskHead` ``upsampler=``). The FPN calls its upsamplers with
a target size instead; :class:`~glimpse.necks.FPN` accepts these by name and wraps them in
:class:`~glimpse.necks.ScaleThenCrop`, which crops to the lateral's size as mmdet's
``FPN_CARAFE`` does.

============================  ================================================================
name (Table 2 row)            what it is
============================  ================================================================
``nearest`` (Nearest)         ``F.interpolate`` nearest, no parameters
``bilinear`` (Bilinear)       ``F.interpolate`` bilinear, ``align_corners=False``
``nearest_conv``              nearest, then a 3x3 conv C -> C
``bilinear_conv``             bilinear, then a 3x3 conv C -> C
``deconv`` (Deconv)           ``ConvTranspose2d`` k=3, stride s, padding 1, output padding s-1
                              (mmdet ``FPN_CARAFE``; the paper's 1.2M FLOPs imply k=3)
``pixel_shuffle``             3x3 conv C -> C s^2, then ``pixel_shuffle`` (mmcv PixelShufflePack)
``gum`` (GUM)                 guided upsampling module, see :class:`GuidedUpsample`
``spatial_attention`` (S.A.)  bilinear, gated by a predicted spatial map, see
                              :class:`SpatialAttentionUpsample`
``carafe`` (CARAFE)           :class:`~glimpse.layers.carafe.CARAFE` (k_up 5, k_enc 3, C_m 64)
``dysample`` (beyond)         DySample (Liu et al., ICCV 2023), see :class:`DySample`
============================  ================================================================

Convolutions outside CARAFE and DySample are xavier-uniform with zero bias, as mmdet's
``FPN_CARAFE.init_weights`` leaves every conv and deconv of the neck.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from glimpse.layers.carafe import CARAFE

__all__ = [
    "DySample",
    "GuidedUpsample",
    "Interpolate",
    "InterpolateConv",
    "PixelShuffleUpsample",
    "SpatialAttentionUpsample",
    "TransposedConvUpsample",
    "UPSAMPLERS",
    "UPSAMPLER_LABELS",
    "PAPER_FLOPS",
    "carafe_paper_flops",
    "upsampler_factory",
    "upsampler_flops",
]


def _check_common(channels: int, scale_factor: int) -> None:
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not isinstance(scale_factor, int) or scale_factor < 1:
        raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")


def _xavier(conv: nn.Module) -> None:
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _interpolate(x: Tensor, scale_factor: int, mode: str) -> Tensor:
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale_factor, mode="nearest")
    return F.interpolate(x, scale_factor=scale_factor, mode=mode, align_corners=False)


def _pixel_centres(size: int, scale_factor: int, like: Tensor) -> Tensor:
    """Input-pixel coordinate of the centre of each of the ``size * s`` output pixels."""
    return (torch.arange(size * scale_factor, dtype=like.dtype, device=like.device) + 0.5
            ) / scale_factor - 0.5


def _sample(x: Tensor, px: Tensor, py: Tensor, padding_mode: str) -> Tensor:
    """Bilinear sampling of ``x`` [N, C, H, W] at input-pixel coordinates ``px``, ``py``
    [N, H', W'] (pixel centres at integers) -> [N, C, H', W']."""
    h, w = x.shape[-2:]
    grid = torch.stack((2 * (px + 0.5) / w - 1, 2 * (py + 0.5) / h - 1), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode,
                         align_corners=False)


class Interpolate(nn.Module):
    """Fixed-scale ``F.interpolate``: Table 2's *Nearest* and *Bilinear* rows (no parameters).

    Args:
        channels: unused; part of the upsampler contract.
        scale_factor: s.
        mode: ``"nearest"`` or ``"bilinear"`` (``align_corners=False``).
    """

    def __init__(self, channels: int, scale_factor: int = 2, mode: str = "nearest") -> None:
        super().__init__()
        _check_common(channels, scale_factor)
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.scale_factor = scale_factor
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        return _interpolate(x, self.scale_factor, self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


class InterpolateConv(nn.Module):
    """Interpolation followed by a k x k conv C -> C on the upsampled map: Table 2's
    *Nearest + Conv* and *Bilinear + Conv* rows (4.7M FLOPs per input location at C = 256).

    Args:
        channels: C.
        scale_factor: s.
        mode: ``"nearest"`` or ``"bilinear"``.
        kernel_size: odd conv kernel size (3).
    """

    def __init__(self, channels: int, scale_factor: int = 2, mode: str = "nearest",
                 kernel_size: int = 3) -> None:
        super().__init__()
        self.up = Interpolate(channels, scale_factor, mode)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        _xavier(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        return self.conv(self.up(x))


class TransposedConvUpsample(nn.Module):
    """Table 2's *Deconv* row: ``ConvTranspose2d(C, C, k, stride=s, padding=(k-1)//2,
    output_padding=s-1)``, which is mmdet ``FPN_CARAFE``'s deconv for s = 2 (output padding
    ``(k-1)//2`` = 1 at k = 3).

    Args:
        channels: C.
        scale_factor: s.
        kernel_size: odd kernel size (3; the paper's 1.2M FLOPs per location imply 3).
    """

    def __init__(self, channels: int, scale_factor: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        _check_common(channels, scale_factor)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        self.deconv = nn.ConvTranspose2d(channels, channels, kernel_size, stride=scale_factor,
                                         padding=(kernel_size - 1) // 2,
                                         output_padding=scale_factor - 1)
        _xavier(self.deconv)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        return self.deconv(x)


class PixelShuffleUpsample(nn.Module):
    """Table 2's *Pixel Shuffle* row (mmcv ``PixelShufflePack``): a k x k conv C -> C s^2, then
    ``pixel_shuffle`` by s.

    Args:
        channels: C.
        scale_factor: s.
        kernel_size: odd conv kernel size (3).
    """

    def __init__(self, channels: int, scale_factor: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        _check_common(channels, scale_factor)
        self.scale_factor = scale_factor
        self.conv = nn.Conv2d(channels, channels * scale_factor**2, kernel_size,
                              padding=kernel_size // 2)
        _xavier(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        return F.pixel_shuffle(self.conv(x), self.scale_factor)


class GuidedUpsample(nn.Module):
    """Table 2's *GUM*: the guided upsampling module of Mazzini (BMVC 2018, arXiv 1807.07466).

    GUM generalises nearest-neighbour upsampling: output pixel i reads the input at its
    nearest-neighbour source position plus a predicted *guidance offset* (p_i, q_i), with the
    bilinear sampling kernel of Mazzini's eq. (3) (taps outside the map read zero). Neither the
    CARAFE paper nor mmdetection says how its guidance branch was built; here (our choice) the
    offsets come from a 3x3 conv C -> 2 on the nearest-upsampled input, zero-initialised, so the
    module starts as exact nearest upsampling. This guidance is much lighter than the paper's
    1.1M FLOPs per location (45k at C = 256), whose branch is not documented.

    Args:
        channels: C.
        scale_factor: s.
        kernel_size: odd kernel size of the guidance conv (3).
    """

    def __init__(self, channels: int, scale_factor: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        _check_common(channels, scale_factor)
        self.scale_factor = scale_factor
        self.guidance = nn.Conv2d(channels, 2, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.guidance.weight)
        nn.init.zeros_(self.guidance.bias)

    def offsets(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 2, sH, sW] guidance offsets (dx, dy) in input pixels."""
        return self.guidance(_interpolate(x, self.scale_factor, "nearest"))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        b, _, h, w = x.shape
        s = self.scale_factor
        offsets = self.offsets(x)
        ys = torch.arange(h * s, dtype=x.dtype, device=x.device).div(s, rounding_mode="floor")
        xs = torch.arange(w * s, dtype=x.dtype, device=x.device).div(s, rounding_mode="floor")
        return _sample(x, xs + offsets[:, 0], ys[:, None] + offsets[:, 1], "zeros")


class SpatialAttentionUpsample(nn.Module):
    """Table 2's *S.A.* (spatial attention) row: bilinear upsampling gated by a predicted
    spatial attention map, ``up * sigmoid(conv3x3(up))`` with a 3x3 conv C -> 1 on the upsampled
    map ``up``.

    Which spatial-attention design the paper used is not documented; this is our choice,
    following the spatial-attention gate of CBAM (Woo et al., ECCV 2018: a sigmoid map
    multiplying every channel) with the map predicted from the features by a 3x3 conv. It costs
    26.6k FLOPs per input location at C = 256 (8.2k bilinear + 18.4k conv), near the paper's
    28k.

    Args:
        channels: C.
        scale_factor: s.
        kernel_size: odd kernel size of the attention conv (3).
    """

    def __init__(self, channels: int, scale_factor: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        self.up = Interpolate(channels, scale_factor, "bilinear")
        self.attention = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2)
        _xavier(self.attention)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        up = self.up(x)
        return up * torch.sigmoid(self.attention(up))


class DySample(nn.Module):
    """DySample (Liu et al., "Learning to Upsample by Learning to Sample", ICCV 2023), the
    "linear + pixel shuffle" (``lp``) style of the official ``tiny-smart/dysample``.

    A 1x1 conv predicts, per input pixel and channel group, one (dx, dy) offset for each of the
    s^2 output sub-pixels; output pixel (Y, X) bilinearly samples its group's channels at its
    own centre ``((X + 0.5) / s - 0.5, (Y + 0.5) / s - 0.5)`` (input pixels) plus the offset,
    replicating the border (``grid_sample`` ``padding_mode="border"``). Offsets are scaled by
    0.25 (static scope) or by ``0.5 * sigmoid(scope_conv(x))`` (dynamic scope, DySample+). With
    zero offsets DySample is bilinear upsampling. Conv output channel ``(d * G + g) * s^2 +
    sy * s + sx`` is coordinate d (x, y) of group g at sub-pixel (sy, sx).

    Args:
        channels: C.
        scale_factor: s.
        groups: G channel groups with their own offsets (4); must divide C.
        dynamic_scope: DySample+ (a second 1x1 conv, zero-initialised, scales the offsets).
    """

    def __init__(self, channels: int, scale_factor: int = 2, groups: int = 4,
                 dynamic_scope: bool = False) -> None:
        super().__init__()
        _check_common(channels, scale_factor)
        if groups < 1 or channels % groups != 0:
            raise ValueError(f"DySample: groups ({groups}) must divide channels ({channels})")
        self.scale_factor = scale_factor
        self.groups = groups
        out = 2 * groups * scale_factor**2
        self.offset = nn.Conv2d(channels, out, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        self.scope = nn.Conv2d(channels, out, 1, bias=False) if dynamic_scope else None
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)

    def offsets(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 2, G, sH, sW] offsets (dx, dy) in input pixels."""
        raw = self.offset(x)
        if self.scope is None:
            raw = raw * 0.25
        else:
            raw = raw * torch.sigmoid(self.scope(x)) * 0.5
        b, _, h, w = raw.shape
        s = self.scale_factor
        return F.pixel_shuffle(raw, s).view(b, 2, self.groups, h * s, w * s)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        b, c, h, w = x.shape
        s, g = self.scale_factor, self.groups
        offsets = self.offsets(x)
        px = _pixel_centres(w, s, x) + offsets[:, 0]  # [B, G, sH, sW]
        py = _pixel_centres(h, s, x)[:, None] + offsets[:, 1]
        out = _sample(x.reshape(b * g, c // g, h, w), px.flatten(0, 1), py.flatten(0, 1),
                      "border")
        return out.view(b, c, h * s, w * s)

    def extra_repr(self) -> str:
        return (f"scale_factor={self.scale_factor}, groups={self.groups}, "
                f"dynamic_scope={self.scope is not None}")


# name -> class (with its row's options) building ``cls(channels, scale_factor=2, ...)``.
UPSAMPLERS: dict[str, Callable[..., nn.Module]] = {
    "nearest": functools.partial(Interpolate, mode="nearest"),
    "bilinear": functools.partial(Interpolate, mode="bilinear"),
    "nearest_conv": functools.partial(InterpolateConv, mode="nearest"),
    "bilinear_conv": functools.partial(InterpolateConv, mode="bilinear"),
    "deconv": TransposedConvUpsample,
    "pixel_shuffle": PixelShuffleUpsample,
    "gum": GuidedUpsample,
    "spatial_attention": SpatialAttentionUpsample,
    "carafe": CARAFE,
    "dysample": DySample,
}

# Row labels of the paper's Table 2 (DySample is beyond the paper).
UPSAMPLER_LABELS: dict[str, str] = {
    "nearest": "Nearest", "bilinear": "Bilinear", "nearest_conv": "Nearest + Conv",
    "bilinear_conv": "Bilinear + Conv", "deconv": "Deconv", "pixel_shuffle": "Pixel Shuffle",
    "gum": "GUM", "spatial_attention": "S.A.", "carafe": "CARAFE", "dysample": "DySample",
}

# Table 2's FLOPs column as printed (per input location, C = 256, s = 2); None: not in the paper.
PAPER_FLOPS: dict[str, str | None] = {
    "nearest": "0", "bilinear": "8k", "nearest_conv": "4.7M", "bilinear_conv": "4.7M",
    "deconv": "1.2M", "pixel_shuffle": "4.7M", "gum": "1.1M", "spatial_attention": "28k",
    "carafe": "199k", "dysample": None,
}


def upsampler_factory(name: str, **kwargs) -> Callable[[int], nn.Module]:
    """Factory ``f(channels) -> module`` of upsampler ``name`` (a key of :data:`UPSAMPLERS`)
    with options ``kwargs`` (e.g. ``scale_factor``, ``up_kernel`` for CARAFE).

    Raises:
        ValueError: unknown name (the message lists the known ones).
        TypeError: an option the upsampler does not take.
    """
    if name not in UPSAMPLERS:
        raise ValueError(f"unknown upsampler {name!r}; known: {', '.join(UPSAMPLERS)}")
    cls = UPSAMPLERS[name]
    try:
        inspect.signature(cls).bind_partial(**kwargs)
    except TypeError as err:
        raise TypeError(f"upsampler {name!r}: {err}") from None
    return functools.partial(cls, **kwargs)


def carafe_paper_flops(channels: int = 256, scale_factor: int = 2, up_kernel: int = 5,
                       encoder_kernel: int = 3, compressed_channels: int = 64) -> int:
    """CARAFE's FLOPs per input location by the paper's formula (2 FLOPs per multiply-add,
    biases counted as one multiply-add each):
    ``2 (C + 1) C_m + 2 (C_m k_enc^2 + 1) s^2 k_up^2 + 2 s^2 k_up^2 C`` (199,496 by default)."""
    c, cm, s2, ku2 = channels, compressed_channels, scale_factor**2, up_kernel**2
    return 2 * (c + 1) * cm + 2 * (cm * encoder_kernel**2 + 1) * s2 * ku2 + 2 * s2 * ku2 * c


def _interpolation_flop(*args, out_shape, **kwargs) -> int:
    # 4 taps per output element, one multiply-add (2 FLOPs) each.
    return 8 * int(torch.Size(out_shape).numel())


# torch's counter has no formula for bilinear resampling; count it as the paper's 8k row does.
_SAMPLING_FLOPS = {
    torch.ops.aten.upsample_bilinear2d: _interpolation_flop,
    torch.ops.aten.grid_sampler_2d: _interpolation_flop,
}


def upsampler_flops(channels: int = 256, scale_factor: int = 2, size: tuple[int, int] = (8, 8)
                    ) -> list[dict[str, object]]:
    """FLOPs per location of every upsampler of :data:`UPSAMPLERS`, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` through the whole module's forward.

    Conventions: 2 FLOPs per multiply-add, as the paper. torch counts convolutions, matrix
    products and the registered CARAFE op (also its reference path, an einsum) but not biases,
    softmax, sigmoid or element-wise products; bilinear resampling (``interpolate``,
    ``grid_sample``) is added here at 4 multiply-adds per output element. So CARAFE counts
    ``2 C_m + 2 s^2 k_up^2`` (328) FLOPs fewer than :func:`carafe_paper_flops` (the biases).
    The paper's column is per *input* location (upsampling an H x W map costs H W times it);
    ``flops_per_output`` divides by s^2.

    Args:
        channels: C (256 in the paper).
        scale_factor: s (2).
        size: the input map size counted on; per-location counts do not depend on it.

    Returns:
        One dict per upsampler, in :data:`UPSAMPLERS` order: ``name``, ``label``,
        ``parameters``, ``flops_per_input`` (int), ``flops_per_output`` (float),
        ``paper_flops`` (the paper's string, or None).
    """
    h, w = size
    x = torch.zeros(1, channels, h, w)
    rows = []
    for name, cls in UPSAMPLERS.items():
        module = cls(channels, scale_factor=scale_factor).eval()
        counter = FlopCounterMode(display=False, custom_mapping=_SAMPLING_FLOPS)
        with counter, torch.no_grad():
            module(x)
        flops = counter.get_total_flops()
        if flops % (h * w) != 0:
            raise RuntimeError(f"{name}: {flops} FLOPs on a {h}x{w} map is not a whole "
                               f"number per location")
        per_input = flops // (h * w)
        rows.append({
            "name": name,
            "label": UPSAMPLER_LABELS[name],
            "parameters": sum(p.numel() for p in module.parameters()),
            "flops_per_input": per_input,
            "flops_per_output": per_input / scale_factor**2,
            "paper_flops": PAPER_FLOPS[name],
        })
    return rows
