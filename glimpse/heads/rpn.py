"""Region Proposal Network head over FPN levels (Ren et al., NeurIPS 2015; Lin et al., CVPR 2017)
with mmdetection v2's targets, losses and proposal post-processing.

The head speaks the dense-head protocol of :mod:`glimpse.heads.base`: :meth:`RPNHead.forward`
returns raw maps, :meth:`RPNHead.get_anchors` the anchors of every image,
:meth:`RPNHead.loss` the losses given anchors and targets, and :meth:`RPNHead.predict` the
proposals. Guided-anchoring RPNs and the HTC detector reuse these pieces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from glimpse.assign import (
    AnchorGenerator,
    DeltaXYWHBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    anchor_targets,
)
from glimpse.heads.base import (
    ImageAnchors,
    check_loss_weights,
    flatten_levels,
    grid_anchors_per_image,
)
from glimpse.losses import binary_cross_entropy, smooth_l1_loss
from glimpse.structures import Detection, Target

__all__ = ["RPNTrainConfig", "ProposalConfig", "RPNHead", "select_proposals"]


@dataclass(frozen=True)
class RPNTrainConfig:
    """Anchor assignment and sampling of the RPN (mmdet v2 ``train_cfg.rpn``).

    ``allowed_border=-1`` keeps anchors that cross the image border (mmdet v2/v3 configs;
    v1 used 0, which drops them).
    """

    pos_iou_thr: float = 0.7
    neg_iou_thr: float = 0.3
    min_pos_iou: float = 0.3
    match_low_quality: bool = True
    ignore_iof_thr: float = -1.0
    num_samples: int = 256
    pos_fraction: float = 0.5
    neg_pos_ub: float = -1
    add_gt_as_proposals: bool = False
    allowed_border: float = -1


@dataclass(frozen=True)
class ProposalConfig:
    """Proposal post-processing (mmdet v2 ``rpn_proposal`` / ``test_cfg.rpn``).

    Per level, the ``nms_pre`` highest-scoring anchors are decoded; boxes not wider and taller
    than ``min_box_size`` are dropped; NMS runs per level (``batched_nms`` with level ids) and
    the best ``max_per_image`` survive. mmdet v2 Faster R-CNN trains with 2000 / 1000 and tests
    with 1000 / 1000; Cascade R-CNN and HTC train with 2000 / 2000 (v1: 2000 / 2000 everywhere).
    """

    nms_pre: int = 1000
    max_per_image: int = 1000
    nms_iou: float = 0.7
    min_box_size: float = 0.0


def select_proposals(
    scores: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_size: tuple[int, int],
    box_coder: DeltaXYWHBoxCoder,
    cfg: ProposalConfig,
) -> tuple[Tensor, Tensor]:
    """Proposals of one image from per-level scores and deltas (mmdet v2 ``RPNHead``).

    Args:
        scores: per level, [N_l] objectness probabilities.
        deltas: per level, [N_l, 4] box deltas.
        anchors: per level, [N_l, 4] xyxy anchors.
        image_size: (height, width) to clip to.
        box_coder: box coder of the deltas.
        cfg: top-k / NMS settings.

    Returns:
        ``(boxes [P, 4] xyxy, scores [P])`` sorted by decreasing score.
    """
    keep_scores, keep_deltas, keep_anchors, level_ids = [], [], [], []
    for level, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
        if 0 < cfg.nms_pre < s.numel():
            s, idx = s.topk(cfg.nms_pre)  # sorted, like mmdet's sort + slice
            d, a = d[idx], a[idx]
        keep_scores.append(s)
        keep_deltas.append(d)
        keep_anchors.append(a)
        level_ids.append(torch.full_like(s, level, dtype=torch.long))
    s = torch.cat(keep_scores)
    boxes = box_coder.decode(torch.cat(keep_anchors), torch.cat(keep_deltas),
                             max_shape=image_size)
    ids = torch.cat(level_ids)
    if cfg.min_box_size >= 0:
        ok = ((boxes[:, 2] - boxes[:, 0]) > cfg.min_box_size) & \
            ((boxes[:, 3] - boxes[:, 1]) > cfg.min_box_size)
        boxes, s, ids = boxes[ok], s[ok], ids[ok]
    if boxes.numel() == 0:
        return boxes.new_zeros((0, 4)), s.new_zeros(0)
    keep = batched_nms(boxes, s, ids, cfg.nms_iou)[: cfg.max_per_image]
    return boxes[keep], s[keep]


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 objectness (sigmoid, A maps) and 1x1 deltas (4A maps).

    Defaults are mmdetection's R-50-FPN 1x: anchors of scale 8 and ratios 0.5/1/2 on strides
    4..64, deltas with stds 1, sigmoid cross-entropy, and L1 box loss (mmdet v2/v3 Faster and
    Mask R-CNN; pass ``box_loss_beta=1/9`` for the SmoothL1 of v1 and of the Cascade/HTC
    configs).

    Args:
        in_channels: channels of every input level.
        feat_channels: channels of the shared 3x3 conv.
        anchor_generator: anchors; its number of base anchors sets A.
        box_coder: box coder of the regression targets.
        train_cfg: assignment and sampling.
        train_proposals: proposal settings when feeding the R-CNN during training.
        test_proposals: proposal settings at inference.
        box_loss_beta: SmoothL1 beta of the regression loss; 0 is exactly L1.
        loss_weights: multiplier per loss key (``loss_rpn_cls``, ``loss_rpn_box``), default 1.
    """

    LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box")

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int = 256,
        *,
        anchor_generator: AnchorGenerator | None = None,
        box_coder: DeltaXYWHBoxCoder | None = None,
        train_cfg: RPNTrainConfig = RPNTrainConfig(),
        train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=1000),
        test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000),
        box_loss_beta: float = 0.0,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator(
            strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8,))
        self.box_coder = box_coder or DeltaXYWHBoxCoder()
        self.train_cfg = train_cfg
        self.train_proposals = train_proposals
        self.test_proposals = test_proposals
        self.box_loss_beta = box_loss_beta
        self.loss_weights = check_loss_weights(loss_weights, self.LOSS_KEYS, "RPNHead")
        self.assigner = MaxIoUAssigner(
            train_cfg.pos_iou_thr, train_cfg.neg_iou_thr, train_cfg.min_pos_iou,
            ignore_iof_thr=train_cfg.ignore_iof_thr,
            match_low_quality=train_cfg.match_low_quality)
        self.sampler = RandomSampler(train_cfg.num_samples, train_cfg.pos_fraction,
                                     train_cfg.neg_pos_ub, train_cfg.add_gt_as_proposals)

        num_anchors = self.anchor_generator.num_base_anchors
        self.conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.01) weights and zero biases on all three convs (mmdet ``RPNHead``)."""
        for conv in (self.conv, self.cls, self.reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw maps of every level.

        Args:
            features: per level, [B, C, H_l, W_l] (P2..P6).

        Returns:
            ``(objectness, deltas)``: per level [B, A, H_l, W_l] logits and
            [B, 4A, H_l, W_l] deltas (channel ``4a + k`` is coordinate k of anchor a).
        """
        if len(features) != self.anchor_generator.num_levels:
            raise ValueError(f"RPNHead got {len(features)} levels for anchor strides "
                             f"{self.anchor_generator.strides}")
        logits, deltas = [], []
        for x in features:
            x = torch.relu(self.conv(x))
            logits.append(self.cls(x))
            deltas.append(self.reg(x))
        return logits, deltas

    def get_anchors(
        self,
        raw: tuple[list[Tensor], list[Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]],
    ) -> list[ImageAnchors]:
        """Per image, per level [H_l * W_l * A, 4] grid anchors (one grid shared by the batch)
        and the flags of those inside the image's padded extent."""
        logits = raw[0]
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in logits]
        return grid_anchors_per_image(self.anchor_generator, sizes, pad_sizes, logits[0].device)

    def loss(
        self,
        raw: tuple[list[Tensor], list[Tensor]],
        anchors: Sequence[ImageAnchors],
        targets: Sequence[Target],
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """RPN losses of a batch.

        Both losses are normalised by the number of sampled anchors in the batch (mmdet).

        Args:
            raw: output of :meth:`forward`.
            anchors: output of :meth:`get_anchors`.
            targets: per image, ground truth in the network's input frame.
            image_sizes: per image, (height, width) before padding (for ``allowed_border``).
            pad_sizes: per image, (height, width) padded to the size divisor (already folded
                into the anchors' valid flags).

        Returns:
            ``loss_rpn_cls``, ``loss_rpn_box`` and ``stats_rpn_pos`` (positives per image).
        """
        logits = flatten_levels(raw[0], 1).squeeze(-1)  # [B, N]
        deltas = flatten_levels(raw[1], 4)  # [B, N, 4]
        per_image = []
        for image_anchors, target, size in zip(anchors, targets, image_sizes):
            flat_anchors, valid = image_anchors.flat()
            per_image.append(anchor_targets(
                flat_anchors, valid, target, self.assigner, self.box_coder, sampler=self.sampler,
                class_agnostic=True, image_size=size,
                allowed_border=self.train_cfg.allowed_border))
        labels = torch.stack([t.labels for t in per_image]).to(logits.dtype)
        label_weights = torch.stack([t.label_weights for t in per_image])
        box_targets = torch.stack([t.box_targets for t in per_image])
        box_weights = torch.stack([t.box_weights for t in per_image])
        num_samples = sum(t.num_pos + t.num_neg for t in per_image)
        num_pos = sum(t.num_pos for t in per_image)
        loss_cls = binary_cross_entropy(logits, labels, label_weights, avg_factor=num_samples)
        loss_box = smooth_l1_loss(deltas, box_targets, self.box_loss_beta, box_weights,
                                  avg_factor=num_samples)
        return {
            "loss_rpn_cls": loss_cls * self.loss_weights["loss_rpn_cls"],
            "loss_rpn_box": loss_box * self.loss_weights["loss_rpn_box"],
            "stats_rpn_pos": logits.new_tensor(num_pos / max(len(targets), 1)),
        }

    @torch.no_grad()
    def predict(
        self,
        raw: tuple[list[Tensor], list[Tensor]],
        anchors: Sequence[ImageAnchors],
        image_sizes: Sequence[tuple[int, int]],
        cfg: ProposalConfig | None = None,
    ) -> list[Detection]:
        """Proposals per image (no gradient: the R-CNN trains on fixed proposals, as mmdet).

        Every anchor competes, padding included (mmdet decodes all of them too).

        Args:
            raw: output of :meth:`forward`.
            anchors: output of :meth:`get_anchors`.
            image_sizes: per image, (height, width) to clip to.
            cfg: proposal settings; default ``train_proposals`` in training mode and
                ``test_proposals`` in eval mode.

        Returns:
            Per image ``boxes`` [P, 4] xyxy, ``scores`` [P] sorted by decreasing objectness and
            ``labels`` [P] (all 1).
        """
        cfg = cfg or (self.train_proposals if self.training else self.test_proposals)
        logits, deltas = raw
        out: list[Detection] = []
        for i, (image_anchors, size) in enumerate(zip(anchors, image_sizes)):
            scores = [x[i].permute(1, 2, 0).reshape(-1).sigmoid() for x in logits]
            dels = [x[i].permute(1, 2, 0).reshape(-1, 4) for x in deltas]
            boxes, s = select_proposals(scores, dels, image_anchors.anchors, size,
                                        self.box_coder, cfg)
            out.append({"boxes": boxes, "scores": s,
                        "labels": torch.ones_like(s, dtype=torch.long)})
        return out
