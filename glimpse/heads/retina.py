"""RetinaNet head (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) with
mmdetection v2's ``RetinaHead`` training and test settings.

The head keeps three steps apart so that variants (GA-RetinaNet) can reuse them:

* :meth:`RetinaHead.forward` maps FPN levels to raw per-level classification / regression maps;
* :meth:`RetinaHead.loss` assigns anchors to ground truth and returns the focal and L1 losses;
* :meth:`RetinaHead.predict` decodes, filters and runs NMS per image.

Settings (mmdet v2 ``configs/_base_/models/retinanet_r50_fpn.py``): anchors with
``octave_base_scale=4`` and ``scales_per_octave=3`` (sizes ``4 * 2**(i/3) * stride``), ratios
0.5/1/2 on strides 8..128; ``MaxIoUAssigner(0.5, 0.4, min_pos_iou=0)`` without sampling; sigmoid
focal loss (gamma 2, alpha 0.25) and L1 on (dx, dy, dw, dh) deltas with stds 1, both normalised
by the number of positive anchors; test ``nms_pre=1000`` per level, score threshold 0.05,
NMS IoU 0.5, 100 detections per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from glimpse.assign import AnchorGenerator, DeltaXYWHBoxCoder, MaxIoUAssigner
from glimpse.losses import l1_loss, sigmoid_focal_loss
from glimpse.structures import Detection, Target

__all__ = ["RetinaHead", "RetinaTestConfig", "retina_anchor_generator"]


@dataclass(frozen=True)
class RetinaTestConfig:
    """Inference settings (mmdet v2 RetinaNet ``test_cfg``).

    Attributes:
        nms_pre: candidates kept per level before NMS, ranked by score.
        score_thr: minimum class score of a detection.
        nms_iou: IoU threshold of the per-class NMS.
        max_per_image: detections kept per image.
    """

    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_image: int = 100


def retina_anchor_generator(
    strides: Sequence[int] = (8, 16, 32, 64, 128),
    octave_base_scale: float = 4.0,
    scales_per_octave: int = 3,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> AnchorGenerator:
    """Anchors of RetinaNet: ``octave_base_scale * 2**(i / scales_per_octave)`` times the stride.

    Returns:
        An :class:`~glimpse.assign.AnchorGenerator` with 9 anchors per location by default
        (32 to 813 px sides across P3..P7 at ratio 1).
    """
    scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
    return AnchorGenerator(strides=strides, ratios=ratios, scales=scales)


class RetinaHead(nn.Module):
    """Classification and box towers shared across FPN levels.

    Each tower is ``stacked_convs`` 3x3 convs (with bias) + ReLU; the classifier is a 3x3 conv
    to ``A * K`` sigmoid logits whose bias starts at ``-log((1 - p) / p)`` with ``p = 0.01``
    (RetinaNet's prior, so that training starts stable), the regressor a 3x3 conv to ``4A``
    deltas. All convs are initialised normal(0, 0.01) (mmdet).

    Args:
        num_classes: K foreground classes (labels 1..K in targets and detections).
        in_channels: channels of the FPN levels.
        feat_channels: channels of the tower convs.
        stacked_convs: convs per tower.
        anchor_generator: anchors per level; default :func:`retina_anchor_generator`.
        box_coder: delta coder; default means 0 and stds 1.
        assigner: anchor assignment; default ``MaxIoUAssigner(0.5, 0.4, min_pos_iou=0)``.
        focal_alpha: focal-loss alpha (0.25).
        focal_gamma: focal-loss gamma (2.0).
        loss_weights: multipliers per loss key (``loss_cls``, ``loss_box``), default 1.
        test_cfg: :class:`RetinaTestConfig`.
        prior_prob: initial foreground probability of the classifier.
        tower_init: ``"normal"``: normal(0, 0.01) tower convs (mmdet); ``"kaiming"``:
            Kaiming-normal tower convs for narrow heads trained from scratch (the slim smoke
            models): with 64 channels, std 0.01 shrinks the signal about 1000-fold over four
            convs and the classifier barely learns (measured: an overfit of 4 synthetic images
            reaches AP 0.88 in 200 iterations with ``"kaiming"``, 0.0 in 300 with ``"normal"``).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        *,
        anchor_generator: AnchorGenerator | None = None,
        box_coder: DeltaXYWHBoxCoder | None = None,
        assigner: MaxIoUAssigner | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_weights: dict[str, float] | None = None,
        test_cfg: RetinaTestConfig = RetinaTestConfig(),
        prior_prob: float = 0.01,
        tower_init: Literal["normal", "kaiming"] = "normal",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator or retina_anchor_generator()
        self.box_coder = box_coder or DeltaXYWHBoxCoder()
        self.assigner = assigner or MaxIoUAssigner(
            pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, ignore_iof_thr=-1.0
        )
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loss_weights = dict(loss_weights or {})
        self.test_cfg = test_cfg
        self.num_anchors = self.anchor_generator.num_base_anchors

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(stacked_convs):
                layers.append(nn.Conv2d(in_channels if i == 0 else feat_channels,
                                        feat_channels, 3, padding=1))
                layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.cls_convs = tower()
        self.reg_convs = tower()
        self.retina_cls = nn.Conv2d(feat_channels, self.num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 3, padding=1)
        if tower_init not in ("normal", "kaiming"):
            raise ValueError(f"tower_init must be 'normal' or 'kaiming', got {tower_init!r}")
        self.prior_prob = prior_prob
        self.tower_init = tower_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """normal(0, 0.01) weights, zero biases, classifier bias at the prior (mmdet)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        if self.tower_init == "kaiming":
            for m in (*self.cls_convs, *self.reg_convs):
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        # bias_init_with_prob(0.01) = -log(0.99 / 0.01) = -4.595
        nn.init.constant_(self.retina_cls.bias, -math.log((1 - self.prior_prob) / self.prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw per-level outputs.

        Args:
            features: FPN levels ``[B, C, H_l, W_l]`` (P3..P7).

        Returns:
            (cls_logits, box_deltas): per level ``[B, A*K, H_l, W_l]`` and ``[B, A*4, H_l, W_l]``.
        """
        cls_logits = [self.retina_cls(self.cls_convs(f)) for f in features]
        box_deltas = [self.retina_reg(self.reg_convs(f)) for f in features]
        return cls_logits, box_deltas

    # ----------------------------------------------------------------------------------- anchors
    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Per-level anchors ``[H_l*W_l*A, 4]`` (xyxy, padded-batch pixels) for these maps."""
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        return self.anchor_generator.grid_anchors(sizes, device=features[0].device)

    def _flatten(self, maps: Sequence[Tensor], channels: int) -> Tensor:
        """Per-level ``[B, A*C, H, W]`` -> ``[B, sum_l H*W*A, C]`` in the anchor order."""
        out = []
        for m in maps:
            b, _, h, w = m.shape
            # [B, A*C, H, W] -> [B, H, W, A*C] -> [B, H*W*A, C]
            out.append(m.permute(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, channels))
        return torch.cat(out, dim=1)

    # -------------------------------------------------------------------------------------- loss
    def loss(
        self,
        cls_logits: list[Tensor],
        box_deltas: list[Tensor],
        targets: Sequence[Target],
        pad_shapes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Focal classification loss and L1 regression loss over all images.

        Args:
            cls_logits: per level ``[B, A*K, H_l, W_l]`` from :meth:`forward`.
            box_deltas: per level ``[B, A*4, H_l, W_l]``.
            targets: per image ``boxes`` (xyxy in the resized-image frame), ``labels`` 1..K and
                optionally ``boxes_ignore``.
            pad_shapes: per image (height, width) of the resized image padded to the size
                divisor; anchors on feature locations beyond it are not trained (mmdet
                ``valid_flags``, ``allowed_border=-1``).

        Returns:
            ``{"loss_cls", "loss_box"}`` scalars (``loss_box`` is exactly 0 without positives)
            and the detached diagnostic ``stats_num_pos``.
        """
        device = cls_logits[0].device
        anchors_per_level = self.anchors(cls_logits)
        anchors = torch.cat(anchors_per_level)  # [N, 4]
        sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_logits]
        logits = self._flatten(cls_logits, self.num_classes)  # [B, N, K]
        deltas = self._flatten(box_deltas, 4)  # [B, N, 4]

        cls_targets, cls_weights, box_targets, pos_masks = [], [], [], []
        avg_factor = 0
        for i, target in enumerate(targets):
            valid = torch.cat(self.anchor_generator.valid_flags(sizes, pad_shapes[i], device))
            labels_i, weights_i, box_t_i, pos_i = self._targets_single(anchors, valid, target)
            cls_targets.append(labels_i)
            cls_weights.append(weights_i)
            box_targets.append(box_t_i)
            pos_masks.append(pos_i)
            # mmdet v2 ``get_targets`` counts max(#pos, 1) per image
            avg_factor += max(int(pos_i.sum()), 1)

        onehot = logits.new_zeros(logits.shape)  # [B, N, K]
        for i, labels_i in enumerate(cls_targets):
            pos = labels_i > 0
            onehot[i, pos, labels_i[pos] - 1] = 1.0
        weights = torch.stack(cls_weights)[..., None]  # [B, N, 1]
        loss_cls = sigmoid_focal_loss(
            logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma,
            weight=weights, avg_factor=avg_factor,
        )
        pos_mask = torch.stack(pos_masks)  # [B, N]
        pos_deltas = deltas[pos_mask]  # [P, 4]
        pos_targets = torch.cat(box_targets)  # [P, 4] in the same (image, anchor) order
        loss_box = l1_loss(pos_deltas, pos_targets, reduction="sum") / avg_factor
        losses = {"loss_cls": loss_cls, "loss_box": loss_box}
        losses = {k: v * self.loss_weights.get(k, 1.0) for k, v in losses.items()}
        losses["stats_num_pos"] = torch.tensor(float(pos_mask.sum()), device=device)
        return losses

    @torch.no_grad()
    def _targets_single(
        self, anchors: Tensor, valid: Tensor, target: Target
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Targets of one image.

        Returns:
            labels int64[N] (1..K positives, 0 elsewhere), cls weights float[N] (1 on positive
            and negative valid anchors, 0 on ignored or invalid ones), box targets [P, 4] of the
            P positives in anchor order, and the bool[N] positive mask.
        """
        n = anchors.shape[0]
        gt_boxes = target["boxes"].to(anchors)
        gt_labels = target["labels"].to(anchors.device)
        gt_ignore = target.get("boxes_ignore")
        labels = torch.zeros(n, dtype=torch.long, device=anchors.device)
        weights = torch.zeros(n, dtype=anchors.dtype, device=anchors.device)
        result = self.assigner.assign(
            anchors[valid], gt_boxes, gt_labels,
            None if gt_ignore is None else gt_ignore.to(anchors),
        )
        valid_idx = valid.nonzero().squeeze(1)
        labels[valid_idx] = result.labels
        weights[valid_idx] = (result.gt_inds >= 0).to(weights.dtype)
        pos = torch.zeros(n, dtype=torch.bool, device=anchors.device)
        pos[valid_idx[result.gt_inds > 0]] = True
        labels[~pos] = 0
        pos_gt = gt_boxes[result.gt_inds[result.gt_inds > 0] - 1]
        box_targets = self.box_coder.encode(anchors[pos], pos_gt)
        return labels, weights, box_targets, pos

    # ------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self,
        cls_logits: list[Tensor],
        box_deltas: list[Tensor],
        image_shapes: Sequence[tuple[int, int]],
    ) -> list[Detection]:
        """Detections per image in the resized-image frame (before undoing the resize).

        Per level, the ``nms_pre`` best (anchor, class) pairs above ``score_thr`` are decoded
        (clipped to the resized image), then a per-class NMS over all levels keeps
        ``max_per_image`` (mmdet v2 ``filter_scores_and_topk`` + ``batched_nms``).

        Args:
            cls_logits: per level ``[B, A*K, H_l, W_l]``.
            box_deltas: per level ``[B, A*4, H_l, W_l]``.
            image_shapes: per image (height, width) of the resized image (without padding).

        Returns:
            Per image ``{"boxes": [D, 4] xyxy, "scores": [D], "labels": [D] in 1..K}``, sorted
            by descending score.
        """
        cfg = self.test_cfg
        anchors = self.anchors(cls_logits)
        results: list[Detection] = []
        for i, shape in enumerate(image_shapes):
            boxes_all, scores_all, labels_all = [], [], []
            for logit, delta, anchor in zip(cls_logits, box_deltas, anchors):
                _, h, w = logit.shape[1:]
                # Top-k of the raw logits first, then the threshold: the same set as threshold
                # then top-k (sigmoid is monotonic) without a mask over all H*W*A*K scores.
                flat = logit[i].reshape(-1)  # [A*K*H*W] in (a, k, y, x) order, no copy
                top, idx = flat.topk(min(cfg.nms_pre, flat.numel()), sorted=False)
                scores = top.sigmoid()
                keep = scores > cfg.score_thr
                scores, idx = scores[keep], idx[keep]
                channel, pixel = idx // (h * w), idx % (h * w)
                a = channel // self.num_classes
                labels = channel % self.num_classes + 1
                d = delta[i].reshape(self.num_anchors, 4, h * w)[a, :, pixel]  # [n, 4]
                # anchors are laid out (y, x, a)
                boxes = self.box_coder.decode(anchor[pixel * self.num_anchors + a], d,
                                              max_shape=shape)
                boxes_all.append(boxes)
                scores_all.append(scores)
                labels_all.append(labels)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            labels = torch.cat(labels_all)
            keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.max_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
