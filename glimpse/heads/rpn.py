"""Region Proposal Network head over FPN levels (Ren et al., NeurIPS 2015; Lin et al., CVPR 2017)
with mmdetection v2's targets, losses and proposal post-processing.

The head is split as the rest of glimpse's heads: :meth:`RPNHead.forward` returns raw maps,
:meth:`RPNHead.loss` turns them into losses given anchors and targets, and
:meth:`RPNHead.predict` decodes them into proposals. Guided-anchoring RPNs and the HTC detector
reuse these pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from glimpse.assign import AnchorGenerator, DeltaXYWHBoxCoder, MaxIoUAssigner, RandomSampler
from glimpse.losses import binary_cross_entropy, smooth_l1_loss
from glimpse.structures import Target

__all__ = ["RPNTrainConfig", "ProposalConfig", "RPNHead", "anchor_targets", "select_proposals"]


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


def anchor_targets(
    anchors: Tensor,
    valid: Tensor,
    target: Target,
    image_size: tuple[int, int],
    assigner: MaxIoUAssigner,
    sampler: RandomSampler,
    coder: DeltaXYWHBoxCoder,
    allowed_border: float = -1,
) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
    """Classification and regression targets of one image's anchors (mmdet ``AnchorHead``).

    Args:
        anchors: [N, 4] xyxy anchors of all levels.
        valid: bool[N] anchors on valid (non-padding) feature locations.
        target: ground truth in the same pixel frame (``boxes``, optional ``boxes_ignore``).
        image_size: (height, width) of the image before padding.
        assigner: anchor-to-gt assigner.
        sampler: anchor sampler.
        coder: box coder of the regression targets.
        allowed_border: anchors crossing the image by more than this many pixels are not
            used; negative keeps all valid anchors.

    Returns:
        ``(labels, label_weights, box_targets, box_weights, num_pos, num_neg)``:
        float[N] 1 for sampled positives, float[N] 1 for sampled anchors, [N, 4] deltas,
        [N, 4] 1 on positives, and the sampled counts.
    """
    n = anchors.shape[0]
    inside = valid
    if allowed_border >= 0:
        h, w = image_size
        inside = valid & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) \
            & (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border)
    inside_idx = inside.nonzero().flatten()
    cand = anchors[inside_idx]
    gt_boxes = target["boxes"].to(anchors)
    assign = assigner.assign(cand, gt_boxes, None, target.get("boxes_ignore"))
    sample = sampler.sample(assign, cand, gt_boxes)

    labels = anchors.new_zeros(n)
    label_weights = anchors.new_zeros(n)
    box_targets = anchors.new_zeros((n, 4))
    box_weights = anchors.new_zeros((n, 4))
    pos = inside_idx[sample.pos_inds]
    neg = inside_idx[sample.neg_inds]
    if pos.numel():
        box_targets[pos] = coder.encode(sample.pos_boxes, sample.pos_gt_boxes)
        box_weights[pos] = 1.0
        labels[pos] = 1.0
        label_weights[pos] = 1.0
    label_weights[neg] = 1.0
    return labels, label_weights, box_targets, box_weights, int(pos.numel()), int(neg.numel())


def select_proposals(
    scores: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_size: tuple[int, int],
    coder: DeltaXYWHBoxCoder,
    cfg: ProposalConfig,
) -> tuple[Tensor, Tensor]:
    """Proposals of one image from per-level scores and deltas (mmdet v2 ``RPNHead``).

    Args:
        scores: per level, [N_l] objectness probabilities.
        deltas: per level, [N_l, 4] box deltas.
        anchors: per level, [N_l, 4] xyxy anchors.
        image_size: (height, width) to clip to.
        coder: box coder of the deltas.
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
    boxes = coder.decode(torch.cat(keep_anchors), torch.cat(keep_deltas), max_shape=image_size)
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
        coder: box coder of the regression targets.
        train_cfg: assignment and sampling.
        train_proposals: proposal settings when feeding the R-CNN during training.
        test_proposals: proposal settings at inference.
        box_loss_beta: SmoothL1 beta of the regression loss; 0 is exactly L1.
        loss_cls_weight: weight of ``loss_rpn_cls``.
        loss_box_weight: weight of ``loss_rpn_box``.
    """

    def __init__(
        self,
        in_channels: int = 256,
        feat_channels: int = 256,
        anchor_generator: AnchorGenerator | None = None,
        coder: DeltaXYWHBoxCoder | None = None,
        train_cfg: RPNTrainConfig = RPNTrainConfig(),
        train_proposals: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_image=1000),
        test_proposals: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_image=1000),
        box_loss_beta: float = 0.0,
        loss_cls_weight: float = 1.0,
        loss_box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator(
            strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0), scales=(8,))
        self.coder = coder or DeltaXYWHBoxCoder()
        self.train_cfg = train_cfg
        self.train_proposals = train_proposals
        self.test_proposals = test_proposals
        self.box_loss_beta = box_loss_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_box_weight = loss_box_weight
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

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw maps of every level.

        Args:
            feats: per level, [B, C, H_l, W_l] (P2..P6).

        Returns:
            ``(objectness, deltas)``: per level [B, A, H_l, W_l] logits and
            [B, 4A, H_l, W_l] deltas (channel ``4a + k`` is coordinate k of anchor a).
        """
        if len(feats) != self.anchor_generator.num_levels:
            raise ValueError(f"RPNHead got {len(feats)} levels for anchor strides "
                             f"{self.anchor_generator.strides}")
        logits, deltas = [], []
        for x in feats:
            x = torch.relu(self.conv(x))
            logits.append(self.cls(x))
            deltas.append(self.reg(x))
        return logits, deltas

    def get_anchors(self, raw: tuple[list[Tensor], list[Tensor]]) -> list[Tensor]:
        """Per-level [H_l * W_l * A, 4] anchors matching the raw maps' sizes."""
        logits = raw[0]
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in logits]
        return self.anchor_generator.grid_anchors(sizes, device=logits[0].device)

    @staticmethod
    def _flatten(raw: tuple[list[Tensor], list[Tensor]]) -> tuple[Tensor, Tensor]:
        """[B, N] logits and [B, N, 4] deltas, anchors ordered (level, y, x, anchor)."""
        logits, deltas = raw
        b = logits[0].shape[0]
        flat_logits = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1) for x in logits], 1)
        flat_deltas = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1, 4) for x in deltas], 1)
        return flat_logits, flat_deltas

    def loss(
        self,
        raw: tuple[list[Tensor], list[Tensor]],
        anchors: Sequence[Tensor],
        targets: Sequence[Target],
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """RPN losses of a batch.

        Both losses are normalised by the number of sampled anchors in the batch (mmdet).

        Args:
            raw: output of :meth:`forward`.
            anchors: output of :meth:`get_anchors`.
            targets: per image, ground truth in the network's input frame.
            image_sizes: per image, (height, width) before padding.
            pad_sizes: per image, (height, width) padded to the size divisor; default
                ``image_sizes``. Anchors on feature locations beyond it are never sampled.

        Returns:
            ``loss_rpn_cls``, ``loss_rpn_box`` and ``stats_rpn_pos`` (positives per image).
        """
        logits, deltas = self._flatten(raw)
        all_anchors = torch.cat(list(anchors))
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in raw[0]]
        pad_sizes = pad_sizes if pad_sizes is not None else image_sizes
        labels, label_w, box_t, box_w = [], [], [], []
        num_samples = num_pos = 0
        for target, size, pad in zip(targets, image_sizes, pad_sizes):
            valid = torch.cat(self.anchor_generator.valid_flags(sizes, pad, all_anchors.device))
            lab, lw, bt, bw, npos, nneg = anchor_targets(
                all_anchors, valid, target, size, self.assigner, self.sampler, self.coder,
                self.train_cfg.allowed_border)
            labels.append(lab)
            label_w.append(lw)
            box_t.append(bt)
            box_w.append(bw)
            num_samples += npos + nneg
            num_pos += npos
        labels, label_w = torch.stack(labels), torch.stack(label_w)
        box_t, box_w = torch.stack(box_t), torch.stack(box_w)
        loss_cls = binary_cross_entropy(logits, labels, label_w, avg_factor=num_samples)
        loss_box = smooth_l1_loss(deltas, box_t, self.box_loss_beta, box_w,
                                  avg_factor=num_samples)
        return {
            "loss_rpn_cls": loss_cls * self.loss_cls_weight,
            "loss_rpn_box": loss_box * self.loss_box_weight,
            "stats_rpn_pos": logits.new_tensor(num_pos / max(len(targets), 1)),
        }

    @torch.no_grad()
    def predict(
        self,
        raw: tuple[list[Tensor], list[Tensor]],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        cfg: ProposalConfig | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Proposals per image (no gradient: the R-CNN trains on fixed proposals, as mmdet).

        Args:
            raw: output of :meth:`forward`.
            anchors: output of :meth:`get_anchors`.
            image_sizes: per image, (height, width) to clip to.
            cfg: proposal settings; default ``train_proposals`` in training mode and
                ``test_proposals`` in eval mode.

        Returns:
            Per image ``(boxes [P, 4] xyxy, scores [P])``, sorted by decreasing score.
        """
        cfg = cfg or (self.train_proposals if self.training else self.test_proposals)
        logits, deltas = raw
        out = []
        for i, size in enumerate(image_sizes):
            scores = [x[i].permute(1, 2, 0).reshape(-1).sigmoid() for x in logits]
            dels = [x[i].permute(1, 2, 0).reshape(-1, 4) for x in deltas]
            out.append(select_proposals(scores, dels, anchors, size, self.coder, cfg))
        return out
