"""Feature adaption of Guided Anchoring (Wang et al., CVPR 2019): features re-sampled to the
predicted anchor shape by a deformable convolution whose offsets come from that shape.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from glimpse.ops import deform_conv2d

__all__ = ["FeatureAdaption"]


class FeatureAdaption(nn.Module):
    """``relu(deform_conv(x, offsets=conv1x1(shape.detach())))`` (mmdet ``FeatureAdaption``).

    The 1x1 offset conv maps the 2-channel shape prediction (dw, dh) to ``deform_groups * 2 *
    k * k`` offsets, interleaved (dy, dx) per kernel tap as mmcv and
    ``torchvision.ops.deform_conv2d`` both expect. The shape prediction is detached: the
    adaption trains the offsets, never the shape branch. Neither conv has a bias (mmcv's
    DeformConv2d has none): ``2 * 2 G k^2 + C_out C_in k^2`` parameters, 144 + 589,824 for GA's
    256 channels, k = 3, G = 4. Module names are mmdet's (``conv_offset``, ``conv_adaption``).

    Init as mmdet: offset conv normal(0, 0.1), deformable conv normal(0, 0.01).

    Args:
        in_channels: C_in of ``x``.
        out_channels: C_out.
        kernel_size: k of the deformable conv (padding ``(k - 1) // 2``, stride 1).
        deform_groups: G offset groups; ``in_channels`` must be divisible by it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 deform_groups: int = 4) -> None:
        super().__init__()
        if deform_groups < 1 or in_channels % deform_groups:
            raise ValueError(f"FeatureAdaption: in_channels ({in_channels}) must be divisible by "
                             f"deform_groups ({deform_groups})")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"FeatureAdaption: kernel_size must be odd, got {kernel_size}")
        self.conv_offset = nn.Conv2d(2, deform_groups * 2 * kernel_size * kernel_size, 1,
                                     bias=False)
        # holds the weight; forward runs glimpse.ops.deform_conv2d (torchvision's op, with a
        # faster CPU path); offset groups = G
        self.conv_adaption = DeformConv2d(in_channels, out_channels, kernel_size,
                                          padding=(kernel_size - 1) // 2, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.conv_offset.weight, std=0.1)
        nn.init.normal_(self.conv_adaption.weight, std=0.01)

    def forward(self, x: Tensor, shape: Tensor) -> Tensor:
        """Adapted features.

        Args:
            x: [B, C_in, H, W] features.
            shape: [B, 2, H, W] shape prediction (dw, dh); not back-propagated into.

        Returns:
            [B, C_out, H, W].
        """
        offsets = self.conv_offset(shape.detach())
        return deform_conv2d(x, offsets, self.conv_adaption.weight,
                             padding=self.conv_adaption.padding[0]).relu()
