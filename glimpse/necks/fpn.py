"""Feature Pyramid Network (Lin et al., CVPR 2017) with mmdetection's semantics and an injectable
top-down upsampler (CARAFE, ICCV 2019, replaces it).

Structure (mmdet ``FPN``; all convs have a bias, no norm, no activation):

* a 1x1 *lateral* conv per used backbone level (``in_channels[i] -> out_channels``);
* a top-down path: from the coarsest level down, ``lateral[i-1] += up(lateral[i], size of
  lateral[i-1])``;
* a 3x3 *output* conv per level;
* extra coarser levels (``num_outs`` larger than the number of used inputs):

  - ``"maxpool"``: ``max_pool2d(kernel 1, stride 2)`` of the last output (Faster/Mask R-CNN,
    mmdet ``add_extra_convs=False``): P6 is a subsampled P5, no parameters;
  - ``"conv_on_input"``: a 3x3 stride-2 conv on the last used backbone map (C5), then further
    3x3 stride-2 convs on the previous extra level (RetinaNet, mmdet ``'on_input'``);
  - ``"conv_on_output"``: the first extra conv reads the last output (P5) instead (mmdet
    ``'on_output'``).

* ``extra_in_top_down=True`` (with ``"conv_on_input"``) reproduces mmdet's ``FPN_CARAFE``: the
  extra levels are treated as laterals, take part in the top-down path (P6 is upsampled into
  P5) and get their own 3x3 output conv.

**Upsampler contract.** ``upsampler`` is a factory ``upsampler(channels) -> nn.Module``; FPN
builds one module per top-down step and calls it as ``module(x, size)`` with ``x`` of shape
``[B, C, h, w]`` and ``size = (H, W)`` the size of the finer lateral; it must return
``[B, C, H, W]`` exactly. The default, :class:`InterpolateUpsample`, is mmdet's nearest
interpolation to the exact size. A fixed-scale module ``m(x) -> [B, C, 2h, 2w]`` (CARAFE,
deconv, pixel shuffle) plugs in through :class:`ScaleThenCrop`, which crops the result to
``size`` as mmdet's ``FPN_CARAFE`` does (``slice_as``); ``2h >= H`` always holds for stride-2
backbones, since each level has ``ceil(H / 2)`` rows. ``upsampler`` may also name an upsampler
of the CARAFE paper's Table 2 (:data:`glimpse.layers.UPSAMPLERS`: ``"carafe"``, ``"deconv"``,
...), built at scale 2 and wrapped in :class:`ScaleThenCrop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.layers import upsampler_factory

__all__ = ["FPN", "InterpolateUpsample", "ScaleThenCrop"]

ExtraMode = Literal["maxpool", "conv_on_input", "conv_on_output"]


class InterpolateUpsample(nn.Module):
    """Parameter-free resize to an exact size (``F.interpolate``), the default FPN upsampler.

    Args:
        channels: unused; accepted so the class itself is a valid upsampler factory.
        mode: ``"nearest"`` (mmdet FPN default) or ``"bilinear"``.
    """

    def __init__(self, channels: int = 0, mode: str = "nearest") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """[B, C, h, w] -> [B, C, *size]."""
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ScaleThenCrop(nn.Module):
    """Adapts a fixed-scale upsampler ``module(x) -> [B, C, s*h, s*w]`` to the FPN contract.

    The output is cropped to the top-left ``size`` (mmdet ``FPN_CARAFE``'s ``slice_as``).

    Args:
        module: the upsampler, e.g. a CARAFE module with scale factor 2.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """[B, C, h, w] -> [B, C, *size]."""
        y = self.module(x)
        if y.shape[-2] < size[0] or y.shape[-1] < size[1]:
            raise ValueError(
                f"upsampler {type(self.module).__name__} returned {tuple(y.shape[-2:])}, "
                f"smaller than the lateral size {tuple(size)}"
            )
        return y[..., : size[0], : size[1]]


def _named_upsampler(name: str) -> Callable[[int], nn.Module]:
    """FPN-contract factory of the Table 2 upsampler ``name``: scale 2, cropped to the lateral."""
    fixed_scale = upsampler_factory(name, scale_factor=2)

    def build(channels: int) -> nn.Module:
        return ScaleThenCrop(fixed_scale(channels))

    return build


class FPN(nn.Module):
    """Feature pyramid over backbone maps of strides ``s, 2s, 4s, ...``.

    Args:
        in_channels: channels of every backbone map handed to :meth:`forward` (C2..C5:
            ``[256, 512, 1024, 2048]`` for ResNet-50).
        out_channels: channels of every pyramid level.
        num_outs: number of returned levels; levels beyond the used inputs are "extra".
        add_extra: how extra levels are made (see the module docstring).
        upsampler: factory ``upsampler(channels) -> nn.Module`` following the upsampler contract
            of the module docstring, or the name of a Table 2 upsampler; ``None`` uses
            :class:`InterpolateUpsample` (nearest).
        start_level: index of the first input used (1 for RetinaNet: P3..P7 from C3..C5).
        relu_before_extra: apply ReLU before every extra conv except the first (mmdet
            ``relu_before_extra_convs``).
        extra_in_top_down: with ``"conv_on_input"``, let the extra levels join the top-down path
            and have their own output convs (mmdet ``FPN_CARAFE``).

    Shapes:
        forward takes ``list[Tensor[B, in_channels[i], H_i, W_i]]`` and returns ``num_outs``
        tensors ``[B, out_channels, H, W]``, finest first (P2..P6 for the defaults).
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = 256,
        num_outs: int = 5,
        add_extra: ExtraMode = "maxpool",
        upsampler: Callable[[int], nn.Module] | str | None = None,
        start_level: int = 0,
        relu_before_extra: bool = False,
        extra_in_top_down: bool = False,
    ) -> None:
        super().__init__()
        if add_extra not in ("maxpool", "conv_on_input", "conv_on_output"):
            raise ValueError(
                f"add_extra must be 'maxpool', 'conv_on_input' or 'conv_on_output', "
                f"got {add_extra!r}"
            )
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"start_level {start_level} outside 0..{len(in_channels) - 1}")
        num_used = len(in_channels) - start_level
        if num_outs < num_used:
            raise ValueError(f"num_outs={num_outs} is smaller than the {num_used} used inputs")
        if extra_in_top_down and add_extra != "conv_on_input":
            raise ValueError("extra_in_top_down=True needs add_extra='conv_on_input'")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.add_extra = add_extra
        self.start_level = start_level
        self.relu_before_extra = relu_before_extra
        self.extra_in_top_down = extra_in_top_down
        num_extra = num_outs - num_used
        factory = upsampler if upsampler is not None else InterpolateUpsample
        if isinstance(upsampler, str):
            factory = _named_upsampler(upsampler)

        used = self.in_channels[start_level:]
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used
        )
        self.extra_convs = nn.ModuleList()
        if add_extra != "maxpool":
            for i in range(num_extra):
                c_in = used[-1] if i == 0 and add_extra == "conv_on_input" else out_channels
                self.extra_convs.append(nn.Conv2d(c_in, out_channels, 3, stride=2, padding=1))
        # Output convs of extra levels exist only when they join the top-down path (FPN_CARAFE).
        self.extra_fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1)
            for _ in range(num_extra if extra_in_top_down else 0)
        )
        # One upsampler per top-down step, coarse -> fine: step i upsamples level i+1 into i.
        num_top_down = num_outs if extra_in_top_down else num_used
        self.upsamplers = nn.ModuleList(factory(out_channels) for _ in range(num_top_down - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases on every conv (mmdet FPN ``init_cfg``).

        Convs inside injected upsamplers keep their own initialisation (CARAFE re-applies its
        ``init_weights`` after FPN's in mmdet).
        """
        for group in (self.lateral_convs, self.fpn_convs, self.extra_convs, self.extra_fpn_convs):
            for conv in group:
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, inputs: list[Tensor]) -> list[Tensor]:
        """Build the pyramid.

        Args:
            inputs: backbone maps ``[B, in_channels[i], H_i, W_i]``, finest first, one per
                entry of ``in_channels``.

        Returns:
            ``num_outs`` maps ``[B, out_channels, H, W]``, finest first.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} inputs, got {len(inputs)}")
        used = inputs[self.start_level :]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, used)]
        if self.extra_in_top_down:
            source = used[-1]
            for i, conv in enumerate(self.extra_convs):
                if i > 0 and self.relu_before_extra:
                    source = F.relu(source)
                source = conv(source)
                laterals.append(source)
        # Top-down: coarse to fine, each finer lateral gets the upsampled coarser one.
        for i in range(len(laterals) - 1, 0, -1):
            size = (laterals[i - 1].shape[-2], laterals[i - 1].shape[-1])
            laterals[i - 1] = laterals[i - 1] + self.upsamplers[i - 1](laterals[i], size)
        convs = list(self.fpn_convs) + list(self.extra_fpn_convs)
        outs = [conv(x) for conv, x in zip(convs, laterals)]
        if self.extra_in_top_down:
            return outs
        num_extra = self.num_outs - len(outs)
        if self.add_extra == "maxpool":
            for _ in range(num_extra):
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        elif num_extra > 0:
            source = used[-1] if self.add_extra == "conv_on_input" else outs[-1]
            outs.append(self.extra_convs[0](source))
            for conv in self.extra_convs[1:]:
                x = F.relu(outs[-1]) if self.relu_before_extra else outs[-1]
                outs.append(conv(x))
        return outs
