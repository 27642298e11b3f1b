"""Pyramid pooling module (Zhao et al., PSPNet, CVPR 2017), used by PSPNet and UperNet.

The input map ``x`` [B, C_in, H, W] is average-pooled to ``b x b`` for every bin ``b`` (1, 2,
3, 6); each pooled map is brought back to H x W and reduced by a 1x1 conv-BN-ReLU to
``channels``; the branches are concatenated with ``x`` and fused by a 3x3 conv-BN-ReLU to
``out_channels``. The two published implementations differ in one place, selected by
``order``:

* ``"upsample_first"``: resize the pooled C_in-channel map, then the 1x1 conv (CSAIL's UperNet,
  the implementation behind the CARAFE paper's Table 5; the upsampler sees C_in channels);
* ``"conv_first"``: 1x1 conv on the pooled map, then resize (PSPNet, CSAIL's PPM decoder and
  mmsegmentation's PSPHead; the upsampler sees ``channels``).

The resize is the injectable upsampler (one module per bin; default bilinear,
``align_corners=False``): the CARAFE paper's "PPM" position. With ``"conv_first"`` the bin-1
branch normalises a 1x1 map, so training needs batches of at least 2 images (as in mmseg).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from glimpse.necks.sized_upsample import SizedUpsamplerSpec, sized_upsampler

__all__ = ["PyramidPooling", "conv_bn_relu", "init_decoder"]

PPMOrder = Literal["upsample_first", "conv_first"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, ``padding = kernel_size // 2`` (CSAIL / mmseg
    ``ConvModule``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def init_decoder(modules: Sequence[nn.Module]) -> None:
    """CSAIL's decoder init: kaiming-normal convs (zero bias), BatchNorm weight 1, bias 1e-4.

    Applied to the decoder's own modules only; injected upsamplers keep their own init."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 1e-4)


class PyramidPooling(nn.Module):
    """Pyramid pooling + 3x3 bottleneck: [B, C_in, H, W] -> [B, out_channels, H, W].

    Args:
        in_channels: C_in (2048 for ResNet-50 C5).
        channels: width of each branch (512).
        out_channels: width of the fused output (512).
        bins: pooled sizes (1, 2, 3, 6).
        order: ``"upsample_first"`` (CSAIL UperNet) or ``"conv_first"`` (PSPNet); see the module
            docstring.
        upsampler: the PPM upsampler: None (bilinear), a Table 2 name (its last x2 step is
            learned, see :mod:`glimpse.necks.sized_upsample`) or a to-size factory.
    """

    def __init__(self, in_channels: int, channels: int = 512, out_channels: int = 512,
                 bins: Sequence[int] = (1, 2, 3, 6), order: PPMOrder = "upsample_first",
                 upsampler: SizedUpsamplerSpec = None) -> None:
        super().__init__()
        if order not in ("upsample_first", "conv_first"):
            raise ValueError(f"order must be 'upsample_first' or 'conv_first', got {order!r}")
        if not bins or any(not isinstance(b, int) or b < 1 for b in bins):
            raise ValueError(f"bins must be positive ints, got {tuple(bins)}")
        self.bins = tuple(bins)
        self.order = order
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(b) for b in self.bins)
        self.convs = nn.ModuleList(conv_bn_relu(in_channels, channels, 1) for _ in self.bins)
        self.bottleneck = conv_bn_relu(in_channels + len(self.bins) * channels, out_channels)
        init_decoder([self.convs, self.bottleneck])
        factory = sized_upsampler(upsampler)
        up_channels = in_channels if order == "upsample_first" else channels
        self.upsamplers = nn.ModuleList(factory(up_channels) for _ in self.bins)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, out_channels, H, W]."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        branches = [x]
        for pool, conv, up in zip(self.pools, self.convs, self.upsamplers):
            pooled = pool(x)
            branches.append(conv(up(pooled, size)) if self.order == "upsample_first"
                            else up(conv(pooled), size))
        return self.bottleneck(torch.cat(branches, dim=1))
