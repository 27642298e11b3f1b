"""mmdetection's ``FPN_CARAFE`` layout (CARAFE, Wang et al., ICCV 2019) as a configured
:class:`~glimpse.necks.FPN`.

Differences from the Faster R-CNN FPN (mmdet ``configs/carafe``): an upsampler module in every
top-down step (CARAFE by default, scale 2, cropped to the finer lateral), and P6 made by a 3x3
stride-2 conv on C5 that joins the top-down path (it is upsampled into P5) and has its own 3x3
output conv, so 4 upsamplers run instead of 3. The detectors using it pad images to a multiple
of 64, so every level is exactly twice the next.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from glimpse.necks.fpn import FPN

__all__ = ["fpn_carafe"]


def fpn_carafe(
    in_channels: list[int],
    out_channels: int = 256,
    num_outs: int = 5,
    upsampler: Callable[[int], nn.Module] | str = "carafe",
) -> FPN:
    """The ``FPN_CARAFE`` neck.

    Args:
        in_channels: channels of the backbone maps C2..C5 (``[256, 512, 1024, 2048]``).
        out_channels: pyramid width (256).
        num_outs: levels returned (5: P2..P6, strides 4..64).
        upsampler: name of a Table 2 upsampler (:data:`glimpse.layers.UPSAMPLERS`; mmdet's
            ``upsample_cfg`` type) or an FPN-contract factory.

    Returns:
        An :class:`FPN`; with ResNet-50 and CARAFE it has 5,605,520 parameters more than mmdet's
        Faster R-CNN FPN (P6 conv 4,718,848, P6 output conv 590,080, 4 x 74,148 CARAFE).
    """
    return FPN(in_channels, out_channels, num_outs=num_outs, add_extra="conv_on_input",
               upsampler=upsampler, extra_in_top_down=True)
