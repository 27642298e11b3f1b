"""HTC's fused semantic segmentation branch (Chen et al., CVPR 2019; mmdetection
``FusedSemanticHead``).

All pyramid levels are fused at one level (P3, stride 8): the fusion level through its own 1x1
conv + ReLU, every other level first resized bilinearly (``align_corners=True``) to the fusion
level's size and only then through its own 1x1 conv + ReLU; the sum goes through four 3x3
convs + ReLU. Two 1x1 convs read the result: ``conv_logits`` (the stuff + thing prediction, no
activation) and ``conv_embedding`` (+ ReLU, the semantic feature map that HTC's RoI head pools
and adds to its box and mask RoI features). Every conv is Kaiming-normal (fan_out, ReLU) with
zero bias, as mmcv's ``ConvModule`` and the head's ``init_cfg`` on ``conv_logits``.

The loss is softmax cross-entropy over the labelled pixels of the stride-8 map, weighted 0.2
(mmdet's configs; the paper's beta is 1, mmdet issue #1315).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FusedSemanticHead"]


class FusedSemanticHead(nn.Module):
    """Multi-level fused semantic segmentation head.

    Args:
        num_levels: pyramid levels fed in (5: P2-P6).
        fusion_level: index of the level the others are resized to (1: P3, stride 8).
        num_convs: 3x3 convs after the fusion (4).
        in_channels: channels of the pyramid (256).
        conv_channels: channels of the convs and of the embedding (256; the RoI features it is
            added to must have as many).
        num_classes: semantic classes (183 for COCO-stuff ``stuffthingmaps``: 0-based labels).
        ignore_index: unlabelled value of the maps (255).
        loss_weight: weight of ``loss_semantic_seg`` (0.2, mmdet).

    With mmdet's settings it has 2,802,103 parameters.
    """

    def __init__(
        self,
        num_levels: int = 5,
        fusion_level: int = 1,
        num_convs: int = 4,
        in_channels: int = 256,
        conv_channels: int = 256,
        num_classes: int = 183,
        ignore_index: int = 255,
        loss_weight: float = 0.2,
    ) -> None:
        super().__init__()
        if not 0 <= fusion_level < num_levels:
            raise ValueError(f"fusion_level must be in 0..{num_levels - 1}, got {fusion_level}")
        if num_classes <= 0 or 0 <= ignore_index < num_classes:
            raise ValueError(f"num_classes ({num_classes}) must be positive and below "
                             f"ignore_index ({ignore_index})")
        self.fusion_level = fusion_level
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.lateral_convs = nn.ModuleList(nn.Conv2d(in_channels, in_channels, 1)
                                           for _ in range(num_levels))
        chans = [in_channels] + [conv_channels] * num_convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.conv_embedding = nn.Conv2d(chans[-1], conv_channels, 1)
        self.conv_logits = nn.Conv2d(chans[-1], num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Pyramid [B, C, H_l, W_l] (finest first, ``num_levels`` of them) -> (logits
        [B, num_classes, H_f, W_f], semantic feature map [B, conv_channels, H_f, W_f]) at the
        fusion level's size."""
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"FusedSemanticHead expects {len(self.lateral_convs)} levels, "
                             f"got {len(feats)}")
        x = torch.relu(self.lateral_convs[self.fusion_level](feats[self.fusion_level]))
        size = x.shape[-2:]
        for level, (feat, lateral) in enumerate(zip(feats, self.lateral_convs)):
            if level != self.fusion_level:
                resized = F.interpolate(feat, size=size, mode="bilinear", align_corners=True)
                x = x + torch.relu(lateral(resized))
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.conv_logits(x), torch.relu(self.conv_embedding(x))

    def loss(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Weighted cross-entropy of the semantic prediction.

        Args:
            logits: [B, num_classes, h, w] from :meth:`forward`.
            labels: int64 [B, H, W] maps of the padded input batch (``ignore_index`` outside
                the images), rescaled here to ``h x w`` by nearest neighbour (mmdet's
                ``SegRescale(1/8)`` after padding).

        Returns:
            ``loss_semantic_seg``: mean over labelled pixels times ``loss_weight``; 0 when no
            pixel is labelled (where ``nn.CrossEntropyLoss`` gives NaN).

        Raises:
            ValueError: a label outside ``0..num_classes-1`` that is not ``ignore_index`` (COCO
                users meet it as a device-side assert or a negative loss, mmdet #5608, #9928).
        """
        if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels: expected [B, H, W] with B={logits.shape[0]}, got "
                             f"{tuple(labels.shape)}")
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            image = int(bad.flatten(1).any(1).nonzero()[0])
            value = int(labels[image][bad[image]][0])
            raise ValueError(f"sem_seg of image {image}: label {value} is outside "
                             f"0..{self.num_classes - 1} and not the ignore value "
                             f"{self.ignore_index}")
        labels = F.interpolate(labels[:, None].float(), size=logits.shape[-2:],
                               mode="nearest")[:, 0].long()
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")
        count = (labels != self.ignore_index).sum().clamp(min=1)
        return {"loss_semantic_seg": loss / count * self.loss_weight}
