"""Partial Conv inpainting (Liu et al., ECCV 2018) as mmediting's ``PConvEncoderDecoder``
configures it (reference B3), with the decoder's nearest x2 upsampling replaceable by CARAFE.

U-Net of :class:`~glimpse.layers.PartialConv2d` (multi-channel masks), ``depth`` 8 levels:

* encoder ``enc1..enc8``: stride-2 partial convs 3 -> 64 (7x7, no BN), 128 (5x5), 256 (5x5),
  512 (3x3), then 512 (3x3) x4; BN + ReLU;
* decoder ``dec8..dec1``: ``up(d_{i+1})`` (features: ``upsampler``, default nearest; masks:
  always nearest) concatenated with the encoder map ``h_{i-1}`` (``h_0`` = the masked input)
  and its mask, a 3x3 partial conv to ``h_{i-1}``'s width, BN + LeakyReLU(0.2); ``dec1``
  outputs 3 channels with a bias, no BN, no activation.

Losses (mmediting ``base_pconv``): L1 on the hole x6, L1 on the valid pixels x1, masked TV x0.1
on the completed image; with VGG-16 features (``vgg=``, a local torchvision ``vgg16`` file:
:class:`VGG16Features`), perceptual x0.05 and style x120 on the relu outputs after pools 1-3
(``features`` indices 4, 9, 16) of both the output and the completed image. **Without VGG
weights those two terms are absent** (they are not computed from random features).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.inpainting.base import check_inpainting_inputs, composite, from_unit, to_unit
from glimpse.layers import PartialConv2d, upsampler_factory
from glimpse.losses import gram_matrix, masked_l1_loss, masked_tv_loss
from glimpse.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["PCONV_LOSS_WEIGHTS", "PConvBlock", "PConvUNet", "VGG16Features", "pconv",
           "pconv_slim"]

PCONV_LOSS_WEIGHTS = {"hole": 6.0, "valid": 1.0, "tv": 0.1, "perceptual": 0.05, "style": 120.0}
_VGG_LAYERS = (4, 9, 16)  # torchvision vgg16().features indices: after pool1, pool2, pool3


class PConvBlock(nn.Module):
    """Partial conv (multi-channel mask) -> optional BN -> activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 norm: bool, act: nn.Module | None) -> None:
        super().__init__()
        self.conv = PartialConv2d(in_channels, out_channels, kernel_size, stride,
                                  kernel_size // 2, bias=not norm, multi_channel=True)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        y, mask = self.conv(x, mask)
        return self.act(self.norm(y)), mask


class VGG16Features(nn.Module):
    """Frozen torchvision VGG-16 ``features`` up to pool3, returning the maps after pools 1-3.

    Args:
        weights: local path of a torchvision ``vgg16`` state dict (``features.*`` keys used;
            never downloaded).
    """

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        from torchvision.models import vgg16

        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VGG-16 weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = vgg16()
        model.load_state_dict(state)
        self.features = model.features[: _VGG_LAYERS[-1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / 255)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 255)

    def train(self, mode: bool = True) -> VGG16Features:
        super().train(mode)
        self.features.eval()  # a fixed loss network
        return self

    def forward(self, image: Tensor) -> list[Tensor]:
        """[B, 3, H, W] in [0, 1] -> the three maps."""
        x = (image - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_LAYERS:
                out.append(x)
        return out


class PConvUNet(nn.Module):
    """Partial Conv inpainting network and its losses (module docstring).

    Args:
        base_width: width of ``enc1`` (64); later levels double up to 8x.
        depth: number of stride-2 levels (8 for 256 px; sides must be divisible by 2**depth).
        upsampler: decoder feature upsampler: None (nearest) or a Table 2 name (``"carafe"``).
        vgg: optional :class:`VGG16Features` for the perceptual and style losses.
        loss_weights: overrides of :data:`PCONV_LOSS_WEIGHTS`.
    """

    def __init__(self, base_width: int = 64, depth: int = 8, upsampler: str | None = None,
                 vgg: VGG16Features | None = None,
                 loss_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        unknown = set(loss_weights or {}) - set(PCONV_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: "
                             f"{sorted(PCONV_LOSS_WEIGHTS)}")
        self.depth = depth
        self.loss_weights = {**PCONV_LOSS_WEIGHTS, **(loss_weights or {})}
        widths = [3] + [base_width * min(2**i, 8) for i in range(depth)]  # widths[i]: h_i
        kernels = [7, 5, 5] + [3] * depth
        self.encoder = nn.ModuleList(
            PConvBlock(widths[i], widths[i + 1], kernels[i], 2, norm=i > 0,
                       act=nn.ReLU(inplace=True)) for i in range(depth))
        # decoder[i] is dec_{i+1}: up(d_{i+2}) (+) h_i -> widths[i]
        self.decoder = nn.ModuleList()
        for i in range(depth):
            d_in = widths[depth] if i == depth - 1 else widths[i + 1]
            last = i == 0
            self.decoder.append(PConvBlock(
                d_in + widths[i], widths[i], 3, 1, norm=not last,
                act=None if last else nn.LeakyReLU(0.2, inplace=True)))
        self.upsamplers = nn.ModuleList(
            nn.Upsample(scale_factor=2, mode="nearest") if upsampler is None
            else upsampler_factory(upsampler, scale_factor=2)(
                widths[depth] if i == depth - 1 else widths[i + 1])
            for i in range(depth))
        self.vgg = vgg

    def forward(self, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """Losses (train) or ``{"output", "completed"}`` (eval); see :mod:`.base`."""
        check_inpainting_inputs(images, masks, 2**self.depth)
        output = to_unit(self.network(from_unit(images) * (1 - masks), masks))
        completed = composite(output, images, masks)
        if not self.training:
            return {"output": output, "completed": completed}
        w = self.loss_weights
        losses = {
            "loss_l1_hole": w["hole"] * masked_l1_loss(output, images, masks),
            "loss_l1_valid": w["valid"] * masked_l1_loss(output, images, 1 - masks),
            "loss_tv": w["tv"] * masked_tv_loss(completed, masks),
        }
        if self.vgg is not None:
            target = self.vgg(images)
            perceptual = style = images.new_zeros(())
            for pred in (self.vgg(output), self.vgg(completed)):
                for p, t in zip(pred, target):
                    perceptual = perceptual + F.l1_loss(p, t)
                    style = style + F.l1_loss(gram_matrix(p), gram_matrix(t))
            losses["loss_perceptual"] = w["perceptual"] * perceptual
            losses["loss_style"] = w["style"] * style
        return losses

    def network(self, x: Tensor, holes: Tensor) -> Tensor:
        """Masked input [B, 3, H, W] in [-1, 1] and holes [B, 1, H, W] -> raw output."""
        mask = (1 - holes).expand(-1, 3, -1, -1)
        feats: list[tuple[Tensor, Tensor]] = [(x, mask)]
        for block in self.encoder:
            feats.append(block(*feats[-1]))
        d, m = feats[-1]
        for i in reversed(range(self.depth)):
            skip, skip_mask = feats[i]
            d = torch.cat((self.upsamplers[i](d), skip), 1)
            m = torch.cat((F.interpolate(m, scale_factor=2, mode="nearest"), skip_mask), 1)
            d, m = self.decoder[i](d, m)
        return d


def pconv(upsampler: str | None = None, vgg_weights: str | os.PathLike | None = None,
          **kwargs) -> PConvUNet:
    """Partial Conv at the paper's size (8 levels, base 64, 256 px); ``vgg_weights`` enables
    the perceptual and style losses."""
    vgg = VGG16Features(vgg_weights) if vgg_weights is not None else None
    return PConvUNet(upsampler=upsampler, vgg=vgg, **kwargs)


def pconv_slim(upsampler: str | None = None, vgg_weights: str | os.PathLike | None = None,
               **kwargs) -> PConvUNet:
    """Smoke-profile Partial Conv: 5 levels of base width 16 (sides divisible by 32)."""
    kwargs.setdefault("base_width", 16)
    kwargs.setdefault("depth", 5)
    return pconv(upsampler, vgg_weights, **kwargs)
