"""The CARAFE upsampler (Wang et al., "CARAFE: Content-Aware ReAssembly of FEatures", ICCV 2019),
mmcv's ``CARAFEPack`` layout.

For an input ``x`` of shape [B, C, H, W] and scale ``s``:

1. *channel compressor*: 1x1 conv C -> C_m (64), with bias;
2. *content encoder*: k_enc x k_enc conv C_m -> G * k_up^2 * s^2, with bias; channel
   ``m * s^2 + sy * s + sx`` holds mask channel ``m`` of the output sub-pixel ``(sy, sx)``;
3. *kernel normaliser*: ``pixel_shuffle`` by s gives [B, G * k_up^2, sH, sW]; a softmax over the
   k_up^2 taps of each group makes every kernel sum to 1 (taps that fall outside the map are
   included in the softmax and then read as zero, as in mmcv);
4. *reassembly*: :func:`glimpse.ops.carafe` of the uncompressed ``x`` with these kernels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.ops import carafe

__all__ = ["CARAFE"]


class CARAFE(nn.Module):
    """Content-aware reassembly upsampler, [B, C, H, W] -> [B, C, sH, sW].

    Args:
        channels: C, the input (and output) channels.
        scale_factor: s, integer upsampling factor (2).
        up_kernel: k_up, odd reassembly kernel size (5).
        up_group: G, channel groups sharing one kernel (1); must divide ``channels``.
        encoder_kernel: k_enc, odd content-encoder kernel size (3).
        encoder_dilation: dilation of the content encoder (1).
        compressed_channels: C_m, channels after the compressor (64).

    With the defaults and C = 256 it has 74,148 parameters (16,448 compressor + 57,700 encoder).
    """

    def __init__(
        self,
        channels: int,
        scale_factor: int = 2,
        up_kernel: int = 5,
        up_group: int = 1,
        encoder_kernel: int = 3,
        encoder_dilation: int = 1,
        compressed_channels: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("scale_factor", scale_factor),
                            ("up_group", up_group), ("encoder_dilation", encoder_dilation),
                            ("compressed_channels", compressed_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CARAFE: {name} must be a positive int, got {value!r}")
        for name, value in (("up_kernel", up_kernel), ("encoder_kernel", encoder_kernel)):
            if not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise ValueError(f"CARAFE: {name} must be an odd positive int, got {value!r}")
        if channels % up_group != 0:
            raise ValueError(f"CARAFE: up_group ({up_group}) must divide channels ({channels})")
        self.channels = channels
        self.scale_factor = scale_factor
        self.up_kernel = up_kernel
        self.up_group = up_group
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels, up_group * up_kernel**2 * scale_factor**2, encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2, dilation=encoder_dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv ``CARAFEPack.init_weights``: xavier-uniform compressor, normal(std 0.001)
        encoder, zero biases, so that the initial kernels are nearly uniform (1 / k_up^2)."""
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def kernels(self, x: Tensor) -> Tensor:
        """Normalised reassembly kernels of ``x``.

        Args:
            x: [B, C, H, W].

        Returns:
            [B, G * k_up^2, sH, sW]; channel ``g * k_up^2 + ky * k_up + kx`` is tap (ky, kx) of
            group g, and each group's k_up^2 taps sum to 1 at every output pixel.
        """
        self._check_input(x)
        masks = F.pixel_shuffle(self.content_encoder(self.channel_compressor(x)),
                                self.scale_factor)
        b, taps, h, w = masks.shape
        masks = masks.view(b, self.up_group, self.up_kernel**2, h, w).softmax(dim=2)
        return masks.view(b, taps, h, w)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, sH, sW]."""
        return carafe(x, self.kernels(x), self.up_kernel, self.up_group, self.scale_factor)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"CARAFE: x must be [B, {self.channels}, H, W], got "
                             f"{tuple(x.shape)}")

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, scale_factor={self.scale_factor}, "
                f"up_kernel={self.up_kernel}, up_group={self.up_group}")
