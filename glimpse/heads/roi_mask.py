"""Mask R-CNN's FCN mask head (He et al., ICCV 2017) with mmdetection's layout, targets and loss.

The upsampling layer is injectable: the CARAFE paper swaps mmdet's 2x2 stride-2 deconvolution
for CARAFE, HTC chains the head's convolutional features between stages. So the head exposes
:meth:`FCNMaskHead.features` (the four convs, before upsampling) and
:meth:`FCNMaskHead.logits` (upsample + 1x1 classifier) besides ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from glimpse.losses import mask_cross_entropy

__all__ = ["FCNMaskHead", "deconv_upsampler", "mask_targets"]


def deconv_upsampler(channels: int) -> nn.Module:
    """mmdet's default mask upsampler: ConvTranspose2d(k=2, s=2) + ReLU, [R, C, S, S] ->
    [R, C, 2S, 2S]."""
    return nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.ReLU(inplace=True))


def mask_targets(pos_boxes: Tensor, pos_gt_inds: Tensor, gt_masks: Tensor, size: int = 28
                 ) -> Tensor:
    """Binary mask targets of the positive RoIs of one image (mmdet v2 ``mask_target``).

    Each positive's ground-truth mask is RoI-aligned onto the positive box (``aligned=True``,
    adaptive sampling, as mmdet's ``BitmapMasks.crop_and_resize``) and thresholded at 0.5.

    Args:
        pos_boxes: [P, 4] xyxy positive RoIs in the mask's pixel frame.
        pos_gt_inds: int64[P] 0-based index of each positive's ground truth.
        gt_masks: uint8 [G, H, W] ground-truth masks.
        size: output side (28).

    Returns:
        float [P, size, size] in {0, 1}.
    """
    if pos_boxes.shape[0] == 0:
        return pos_boxes.new_zeros((0, size, size))
    used, inverse = torch.unique(pos_gt_inds, return_inverse=True)
    masks = gt_masks[used].to(pos_boxes.dtype)[:, None]  # [U, 1, H, W]
    rois = torch.cat((inverse.to(pos_boxes.dtype)[:, None], pos_boxes[:, :4]), 1)
    crops = roi_align(masks, rois, (size, size), 1.0, 0, aligned=True)[:, 0]
    return (crops >= 0.5).to(pos_boxes.dtype)


class FCNMaskHead(nn.Module):
    """``num_convs`` x (3x3 conv + ReLU), upsample x2, 1x1 conv to one logit map per class.

    Args:
        num_classes: K; the output has K channels (1 if ``class_agnostic``), class ``k`` at
            channel ``k - 1``.
        in_channels: channels of the pooled RoI features (14x14).
        conv_channels: channels of the convs (256).
        num_convs: number of 3x3 convs (4).
        class_agnostic: one mask per RoI instead of one per class.
        upsampler: factory ``upsampler(channels) -> nn.Module`` mapping [R, C, S, S] to
            [R, C, 2S, 2S], activation included; ``None`` is :func:`deconv_upsampler`
            (CARAFE plugs in here, with no ReLU after it, as in mmdet).
        loss_weight: weight of ``loss_mask``.
    """

    def __init__(
        self,
        num_classes: int = 80,
        in_channels: int = 256,
        conv_channels: int = 256,
        num_convs: int = 4,
        class_agnostic: bool = False,
        upsampler: Callable[[int], nn.Module] | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.loss_weight = loss_weight
        chans = [in_channels] + [conv_channels] * num_convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1],
                                                                                    chans[1:]))
        out_channels = chans[-1]
        self.upsample = (upsampler or deconv_upsampler)(out_channels)
        self.conv_logits = nn.Conv2d(out_channels, 1 if class_agnostic else num_classes, 1)
        self._default_upsampler = upsampler is None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU) weights and zero biases on the convs, the default
        deconv and the logits (mmdet ``ConvModule`` / ``FCNMaskHead.init_weights``); an injected
        upsampler keeps its own initialisation."""
        layers = list(self.convs) + [self.conv_logits]
        if self._default_upsampler:
            layers += [m for m in self.upsample.modules() if isinstance(m, nn.ConvTranspose2d)]
        for m in layers:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """[R, C_in, S, S] -> [R, C, S, S] after the convs (HTC passes these between stages)."""
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x

    def logits(self, x: Tensor) -> Tensor:
        """[R, C, S, S] conv features -> [R, K, 2S, 2S] mask logits."""
        return self.conv_logits(self.upsample(x))

    def forward(self, x: Tensor) -> Tensor:
        """[R, C_in, 14, 14] RoI features -> [R, K, 28, 28] logits."""
        return self.logits(self.features(x))

    def channel(self, labels: Tensor) -> Tensor:
        """Output channel of each label (labels 1..K; always 0 when class-agnostic)."""
        return torch.zeros_like(labels) if self.class_agnostic else labels - 1

    def loss(self, logits: Tensor, targets: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Binary cross-entropy on each positive RoI's own class channel, averaged over pixels.

        Args:
            logits: [P, K, M, M].
            targets: [P, M, M] binary.
            labels: int64[P] labels 1..K.

        Returns:
            ``loss_mask`` (exactly 0 without positives).
        """
        loss = mask_cross_entropy(logits, targets, self.channel(labels))
        return {"loss_mask": loss * self.loss_weight}

    @torch.no_grad()
    def probabilities(self, logits: Tensor, labels: Tensor) -> Tensor:
        """[D, K, M, M] logits -> [D, M, M] sigmoid probabilities of each detection's class."""
        if logits.shape[0] == 0:
            return logits.new_zeros((0, *logits.shape[-2:]))
        idx = torch.arange(logits.shape[0], device=logits.device)
        return logits[idx, self.channel(labels)].sigmoid()

    @staticmethod
    def targets(pos_boxes: Sequence[Tensor], pos_gt_inds: Sequence[Tensor],
                gt_masks: Sequence[Tensor], size: int) -> Tensor:
        """:func:`mask_targets` over a batch, concatenated in image order: [P, size, size]."""
        return torch.cat([mask_targets(b, i, m, size)
                          for b, i, m in zip(pos_boxes, pos_gt_inds, gt_masks)])
