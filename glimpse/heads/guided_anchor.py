"""Guided-anchoring dense heads (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019)
with mmdetection v2's ``GuidedAnchorHead``, ``GARPNHead`` and ``GARetinaHead`` settings.

At every location of every level the head predicts

* a **location** logit (1x1 conv): is an object centred here? Trained with a sigmoid focal loss
  against centre / ignore / outside regions (:func:`~glimpse.assign.location_targets`);
* a **shape** (dw, dh) (1x1 conv): one anchor of side ``square * exp(std * d)``, trained with the
  bounded IoU loss against the ground truth that the location's best approximate anchor matches
  (:func:`~glimpse.assign.shape_targets`);
* classification and box deltas on features adapted to that shape
  (:class:`~glimpse.layers.FeatureAdaption`), trained on the guided anchors like an RPN /
  RetinaNet on fixed anchors.

The heads speak the dense-head protocol of :mod:`glimpse.heads.base`. ``get_anchors`` returns
each image's guided anchors at every location, and as ``valid`` the locations inside the
image's padded extent and, in eval mode, above ``loc_filter_thr`` (0.01). In training every
location has a guided anchor; in eval mode the classifier and regressor are computed only at the
kept locations (:func:`glimpse.ops.masked_conv2d`) and only they are decoded; a level without a
kept location is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from glimpse.assign import (
    ApproxMaxIoUAssigner,
    DeltaXYWHBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    anchor_targets,
    approx_anchor_generator,
    guided_anchors,
    location_targets,
    shape_targets,
    square_anchor_generator,
)
from glimpse.heads.base import ImageAnchors, check_loss_weights, flatten_levels
from glimpse.heads.retina import RetinaTestConfig
from glimpse.heads.roi_box import multiclass_nms
from glimpse.layers import FeatureAdaption
from glimpse.losses import (
    binary_cross_entropy,
    bounded_iou_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)
from glimpse.ops import masked_conv2d
from glimpse.structures import Detection, Target

__all__ = [
    "GA_RETINA_ANCHORING",
    "GA_RETINA_TRAIN",
    "GA_RPN_ANCHORING",
    "GA_RPN_TRAIN",
    "GAOutputs",
    "GAProposalConfig",
    "GARPNHead",
    "GARetinaHead",
    "GATrainConfig",
    "GuidedAnchorHead",
    "GuidedAnchoring",
]

_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # bias_init_with_prob(0.01) = -4.595


@dataclass(frozen=True)
class GuidedAnchoring:
    """Anchor settings of a guided-anchor head (defaults: GA-RPN).

    Attributes:
        strides: level strides.
        octave_base_scale: square side in strides; also the approxs' base scale.
        scales_per_octave: approx scales per location.
        ratios: approx height / width ratios.
        anchor_stds: stds of the shape deltas (only w, h are used; GA-RPN 0.14).
        target_stds: stds of the box-regression deltas on guided anchors (GA-RPN 0.11 on w, h).
        loc_filter_thr: eval-mode locations kept where sigmoid(location) >= this.
        deform_groups: offset groups of the feature adaption.
    """

    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    octave_base_scale: float = 8.0
    scales_per_octave: int = 3
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_stds: tuple[float, float, float, float] = (0.07, 0.07, 0.14, 0.14)
    target_stds: tuple[float, float, float, float] = (0.07, 0.07, 0.11, 0.11)
    loc_filter_thr: float = 0.01
    deform_groups: int = 4


GA_RPN_ANCHORING = GuidedAnchoring()
GA_RETINA_ANCHORING = GuidedAnchoring(strides=(8, 16, 32, 64, 128), octave_base_scale=4.0,
                                      anchor_stds=(1.0,) * 4, target_stds=(1.0,) * 4)


@dataclass(frozen=True)
class GATrainConfig:
    """Training targets of a guided-anchor head (mmdet v2 ``train_cfg``; defaults: GA-RPN).

    Attributes:
        center_ratio: side fraction of a ground truth's positive location region.
        ignore_ratio: side fraction of its ignored location region.
        ga_pos_iou_thr: shape assigner (approx max IoU) positive threshold.
        ga_neg_iou_thr: shape assigner negative threshold.
        ga_min_pos_iou: shape assigner low-quality match minimum.
        ga_num_samples: squares sampled per image for the shape loss.
        ga_pos_fraction: positive share of those.
        pos_iou_thr: cls / box assigner on guided anchors, positive threshold.
        neg_iou_thr: its negative threshold.
        min_pos_iou: its low-quality match minimum.
        num_samples: anchors sampled per image for cls / box; None trains every assigned anchor
            (GA-RetinaNet's focal loss).
        pos_fraction: positive share of the sampled anchors.
        allowed_border: anchors crossing the image by more than this are not trained;
            -1 keeps them (all GA configs).
    """

    center_ratio: float = 0.2
    ignore_ratio: float = 0.5
    ga_pos_iou_thr: float = 0.7
    ga_neg_iou_thr: float = 0.3
    ga_min_pos_iou: float = 0.3
    ga_num_samples: int = 256
    ga_pos_fraction: float = 0.5
    pos_iou_thr: float = 0.7
    neg_iou_thr: float = 0.3
    min_pos_iou: float = 0.3
    num_samples: int | None = 256
    pos_fraction: float = 0.5
    allowed_border: float = -1


GA_RPN_TRAIN = GATrainConfig()
GA_RETINA_TRAIN = GATrainConfig(ga_pos_iou_thr=0.5, ga_neg_iou_thr=0.4, ga_min_pos_iou=0.4,
                                pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.0,
                                num_samples=None)


@dataclass(frozen=True)
class GAProposalConfig:
    """GA-RPN proposal post-processing (mmdet v2 ``GARPNHead``): per level the ``nms_pre`` best
    kept locations are decoded, boxes not wider and taller than ``min_box_size`` dropped, NMS
    run and ``nms_post`` kept; over all levels the ``max_per_image`` best survive.

    Defaults: GA-RPN alone at test (v2/v3: 2000 / 1000 / 1000). GA-Faster R-CNN: 2000 / 1000 /
    300 in training and 1000 / 1000 / 300 at test.
    """

    nms_pre: int = 2000
    nms_post: int = 1000
    max_per_image: int = 1000
    nms_iou: float = 0.7
    min_box_size: float = 0.0


class GAOutputs(NamedTuple):
    """Raw per-level outputs of a guided-anchor head.

    Attributes:
        cls_scores: per level [B, K, H, W] logits (0 at eval-mode locations not kept).
        box_deltas: per level [B, 4, H, W] deltas w.r.t. the guided anchors (idem).
        shape_preds: per level [B, 2, H, W] (dw, dh).
        loc_preds: per level [B, 1, H, W] location logits.
    """

    cls_scores: list[Tensor]
    box_deltas: list[Tensor]
    shape_preds: list[Tensor]
    loc_preds: list[Tensor]


def _conv(conv: nn.Conv2d, x: Tensor, mask: Tensor | None) -> Tensor:
    """``conv(x)``, or only at ``mask`` (bool [B, H, W]) with zeros elsewhere; a map with no
    kept location is not computed at all."""
    if mask is None:
        return conv(x)
    if not bool(mask.any()):
        return x.new_zeros((x.shape[0], conv.out_channels, *mask.shape[1:]))
    return masked_conv2d(x, mask, conv.weight, conv.bias, conv.padding)


class GuidedAnchorHead(nn.Module):
    """mmdet's plain ``GuidedAnchorHead``: on each level, 1x1 location and shape convs, feature
    adaption, then 1x1 classifier (K sigmoid logits) and 1x1 regressor (4 deltas).

    The RPN and RetinaNet forms subclass it and replace the layers (:meth:`_build_layers`,
    :meth:`_forward_level`, :meth:`reset_parameters`); anchors, targets, losses and the
    detection decoding are shared.

    Args:
        num_classes: K foreground classes (1 for a proposal head).
        in_channels: channels of every input level.
        feat_channels: channels of the adapted features.
        anchoring: :class:`GuidedAnchoring`.
        train_cfg: :class:`GATrainConfig`.
        cls_loss: ``"sigmoid"`` cross-entropy over sampled anchors (GA-RPN) or ``"focal"``
            (GA-RetinaNet, normalised by the positives).
        box_loss_beta: SmoothL1 beta of the box loss (GA-RPN 1.0, GA-RetinaNet 0.04).
        loss_weights: multiplier per loss key, default 1 (the GA configs weigh all four 1).
        test_cfg: detection post-processing (:class:`~glimpse.heads.retina.RetinaTestConfig`).
        feature_adaption: ``False`` drops the :class:`~glimpse.layers.FeatureAdaption` (the
            paper's "GA-RPN w/o F.A." ablation; not an mmdet option): the classifier and
            regressor read the un-adapted features, which then need ``feat_channels ==
            in_channels``.
    """

    LOSS_KEYS = ("loss_cls", "loss_box", "loss_anchor_shape", "loss_anchor_loc")

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        *,
        anchoring: GuidedAnchoring = GA_RPN_ANCHORING,
        train_cfg: GATrainConfig = GA_RPN_TRAIN,
        cls_loss: Literal["sigmoid", "focal"] = "sigmoid",
        box_loss_beta: float = 1.0,
        loss_weights: Mapping[str, float] | None = None,
        test_cfg: RetinaTestConfig = RetinaTestConfig(),
        feature_adaption: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cls_loss not in ("sigmoid", "focal"):
            raise ValueError(f"cls_loss must be 'sigmoid' or 'focal', got {cls_loss!r}")
        if not 0.0 <= anchoring.loc_filter_thr <= 1.0:
            raise ValueError(f"loc_filter_thr must lie in [0, 1], got {anchoring.loc_filter_thr}")
        if not feature_adaption and feat_channels != in_channels:
            raise ValueError(f"feature_adaption=False needs feat_channels ({feat_channels}) == "
                             f"in_channels ({in_channels})")
        self.adapt_features = feature_adaption
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.anchoring = anchoring
        self.train_cfg = train_cfg
        self.cls_loss = cls_loss
        self.box_loss_beta = box_loss_beta
        self.test_cfg = test_cfg
        self.loss_weights = check_loss_weights(loss_weights, self.LOSS_KEYS, type(self).__name__)
        self.approx_generator = approx_anchor_generator(
            anchoring.strides, anchoring.octave_base_scale, anchoring.scales_per_octave,
            anchoring.ratios)
        self.square_generator = square_anchor_generator(anchoring.strides,
                                                        anchoring.octave_base_scale)
        self.anchor_coder = DeltaXYWHBoxCoder(stds=anchoring.anchor_stds)
        self.box_coder = DeltaXYWHBoxCoder(stds=anchoring.target_stds)
        cfg = train_cfg
        self.ga_assigner = ApproxMaxIoUAssigner(cfg.ga_pos_iou_thr, cfg.ga_neg_iou_thr,
                                                cfg.ga_min_pos_iou)
        self.ga_sampler = RandomSampler(cfg.ga_num_samples, cfg.ga_pos_fraction,
                                        add_gt_as_proposals=False)
        self.assigner = MaxIoUAssigner(cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou)
        self.sampler = (None if cfg.num_samples is None else
                        RandomSampler(cfg.num_samples, cfg.pos_fraction,
                                      add_gt_as_proposals=False))
        self._build_layers()
        self.reset_parameters()

    # ------------------------------------------------------------------------------ layers
    def _build_layers(self) -> None:
        c, f = self.in_channels, self.feat_channels
        self.conv_loc = nn.Conv2d(c, 1, 1)
        self.conv_shape = nn.Conv2d(c, 2, 1)
        self.feature_adaption = (FeatureAdaption(c, f, 3, self.anchoring.deform_groups)
                                 if self.adapt_features else None)
        self.conv_cls = nn.Conv2d(f, self.num_classes, 1)
        self.conv_reg = nn.Conv2d(f, 4, 1)

    def reset_parameters(self) -> None:
        """normal(0, 0.01) convs with zero biases, the location bias at the 0.01 prior, the
        feature adaption as :class:`~glimpse.layers.FeatureAdaption` (mmdet)."""
        for conv in (self.conv_loc, self.conv_shape, self.conv_cls, self.conv_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.conv_loc.bias, _PRIOR_BIAS)
        if self.feature_adaption is not None:
            self.feature_adaption.reset_parameters()

    def _forward_level(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(cls, box, shape, loc) maps of one level; cls / box only at kept locations in eval."""
        loc = self.conv_loc(x)
        shape = self.conv_shape(x)
        if self.feature_adaption is not None:
            x = self.feature_adaption(x, shape)
        mask = self._kept(loc)
        return _conv(self.conv_cls, x, mask), _conv(self.conv_reg, x, mask), shape, loc

    def _kept(self, loc: Tensor) -> Tensor | None:
        """Eval mode: bool [B, H, W] locations with sigmoid(loc) >= loc_filter_thr; training:
        None (every location)."""
        if self.training:
            return None
        return loc[:, 0].sigmoid() >= self.anchoring.loc_filter_thr

    def forward(self, features: Sequence[Tensor]) -> GAOutputs:
        """Raw maps of every level.

        Args:
            features: per level [B, C, H_l, W_l].

        Returns:
            :class:`GAOutputs`.
        """
        if len(features) != len(self.anchoring.strides):
            raise ValueError(f"{type(self).__name__} got {len(features)} levels for strides "
                             f"{self.anchoring.strides}")
        outs = [self._forward_level(x) for x in features]
        return GAOutputs(*(list(maps) for maps in zip(*outs)))

    # ----------------------------------------------------------------------------- anchors
    def get_anchors(
        self,
        raw: GAOutputs,
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]],
    ) -> list[ImageAnchors]:
        """Per image, per level [H_l * W_l, 4] guided anchors (every location; the shape
        prediction detached) and bool [H_l * W_l] valid locations.

        Valid: inside the image's padded extent (mmdet ``valid_flags``; with ``allowed_border
        >= 0`` in training also some approx inside the image) and, in eval mode, kept by the
        location filter. With one image per batch this is mmdet's mask; in mixed-size batches
        glimpse also drops padding locations at inference (mmdet tests one image at a time).
        """
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in raw.loc_preds]
        device = raw.loc_preds[0].device
        squares = self.square_generator.grid_anchors(sizes, device=device)
        approxs = None
        if self.training and self.train_cfg.allowed_border >= 0:
            approxs = self.approx_generator.grid_anchors(sizes, device=device)
        out = []
        for i, (size, pad) in enumerate(zip(image_sizes, pad_sizes)):
            valid = self.square_generator.valid_flags(sizes, pad, device)
            anchors, flags = [], []
            for level, sq in enumerate(squares):
                shape = raw.shape_preds[level][i].detach().permute(1, 2, 0).reshape(-1, 2)
                anchors.append(guided_anchors(sq, shape, self.anchor_coder))
                ok = valid[level]
                if approxs is not None:
                    ok = ok & self._approx_inside(approxs[level], size)
                if not self.training:
                    ok = ok & (raw.loc_preds[level][i, 0].sigmoid().reshape(-1)
                               >= self.anchoring.loc_filter_thr)
                flags.append(ok)
            out.append(ImageAnchors(tuple(anchors), tuple(flags)))
        return out

    def _approx_inside(self, approxs: Tensor, image_size: tuple[int, int]) -> Tensor:
        """bool [N] locations with some approx inside the image by ``allowed_border``."""
        h, w = image_size
        b = self.train_cfg.allowed_border
        inside = (approxs[:, 0] >= -b) & (approxs[:, 1] >= -b) & (approxs[:, 2] < w + b) \
            & (approxs[:, 3] < h + b)
        return inside.view(-1, self.approx_generator.num_base_anchors).any(dim=1)

    # -------------------------------------------------------------------------------- loss
    def loss(
        self,
        raw: GAOutputs,
        anchors: Sequence[ImageAnchors],
        targets: Sequence[Target],
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """The four losses of a batch (keys :attr:`LOSS_KEYS`, weighted) and ``stats_*``.

        * location: sigmoid focal loss (gamma 2, alpha 0.25) with the region weights, over
          ``sum_l B H_l W_l / 200``;
        * shape: bounded IoU (beta 0.2) of each sampled positive square's guided anchor against
          its ground truth, over ``sum_i max(pos_i, 1) + max(neg_i, 1)`` sampled squares;
        * cls / box on the guided anchors (detached shapes): sigmoid CE over the sampled
          anchors (GA-RPN) or focal over the positives (GA-RetinaNet); SmoothL1 on the deltas.

        Args:
            raw: output of :meth:`forward` in train mode.
            anchors: output of :meth:`get_anchors`.
            targets: per image ground truth in the network's input frame.
            image_sizes: per image (height, width) before padding.
            pad_sizes: per image (height, width) padded (folded into the anchors' flags).
        """
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in raw.loc_preds]
        device = raw.loc_preds[0].device
        cfg = self.train_cfg

        loc_t = location_targets([t["boxes"].to(device) for t in targets], sizes,
                                 self.anchoring.strides, self.anchoring.octave_base_scale,
                                 cfg.center_ratio, cfg.ignore_ratio)
        loc_logits = flatten_levels(raw.loc_preds, 1)  # [B, N, 1]
        loss_loc = sigmoid_focal_loss(loc_logits, flatten_levels(list(loc_t.targets), 1),
                                      weight=flatten_levels(list(loc_t.weights), 1),
                                      avg_factor=loc_t.avg_factor)

        approxs = torch.cat(self.approx_generator.grid_anchors(sizes, device=device))
        squares = torch.cat(self.square_generator.grid_anchors(sizes, device=device))
        shapes = flatten_levels(raw.shape_preds, 2)  # [B, N, 2]
        pred_boxes, gt_boxes = [], []
        shape_factor = 0
        for i, (image_anchors, target) in enumerate(zip(anchors, targets)):
            _, valid = image_anchors.flat()
            st = shape_targets(approxs, squares, valid, target, self.ga_assigner,
                               self.ga_sampler)
            pos = st.weights > 0
            pred_boxes.append(guided_anchors(squares[pos], shapes[i][pos], self.anchor_coder))
            gt_boxes.append(st.gt_boxes[pos])
            shape_factor += max(st.num_pos, 1) + max(st.num_neg, 1)
        loss_shape = bounded_iou_loss(torch.cat(pred_boxes), torch.cat(gt_boxes), beta=0.2,
                                      eps=1e-3, avg_factor=shape_factor)

        loss_cls, loss_box, num_pos = self._cls_box_loss(raw, anchors, targets, image_sizes)
        keys = self.LOSS_KEYS
        w = self.loss_weights
        return {
            keys[0]: loss_cls * w[keys[0]],
            keys[1]: loss_box * w[keys[1]],
            keys[2]: loss_shape * w[keys[2]],
            keys[3]: loss_loc * w[keys[3]],
            "stats_ga_pos": loc_logits.new_tensor(num_pos / max(len(targets), 1)),
        }

    def _cls_box_loss(
        self,
        raw: GAOutputs,
        anchors: Sequence[ImageAnchors],
        targets: Sequence[Target],
        image_sizes: Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor, int]:
        """Classification and box losses on the guided anchors, and the positives."""
        logits = flatten_levels(raw.cls_scores, self.num_classes)  # [B, N, K]
        deltas = flatten_levels(raw.box_deltas, 4)  # [B, N, 4]
        per_image = []
        for image_anchors, target, size in zip(anchors, targets, image_sizes):
            flat_anchors, valid = image_anchors.flat()
            per_image.append(anchor_targets(
                flat_anchors, valid, target, self.assigner, self.box_coder,
                sampler=self.sampler, class_agnostic=self.num_classes == 1, image_size=size,
                allowed_border=self.train_cfg.allowed_border))
        labels = torch.stack([t.labels for t in per_image])  # [B, N] 0..K
        label_weights = torch.stack([t.label_weights for t in per_image])[..., None]
        # mmdet v2 get_targets counts at least one positive (and negative) per image
        avg_factor = sum(max(t.num_pos, 1) for t in per_image)
        if self.sampler is not None:
            avg_factor += sum(max(t.num_neg, 1) for t in per_image)
        pos = labels > 0
        onehot = logits.new_zeros(logits.shape)
        onehot[pos, labels[pos] - 1] = 1.0
        if self.cls_loss == "sigmoid":
            loss_cls = binary_cross_entropy(logits, onehot, label_weights, avg_factor=avg_factor)
        else:
            loss_cls = sigmoid_focal_loss(logits, onehot, weight=label_weights,
                                          avg_factor=avg_factor)
        box_targets = torch.stack([t.box_targets for t in per_image])
        box_weights = torch.stack([t.box_weights for t in per_image])
        loss_box = smooth_l1_loss(deltas, box_targets, self.box_loss_beta, box_weights,
                                  avg_factor=avg_factor)
        return loss_cls, loss_box, sum(t.num_pos for t in per_image)

    # ---------------------------------------------------------------------------- predict
    def _kept_level(self, raw: GAOutputs, anchors: ImageAnchors, i: int, level: int
                    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """(scores [n, K], deltas [n, 4], anchors [n, 4]) at the valid locations of one level
        of image ``i``, or None when none is kept."""
        keep = anchors.valid[level]
        if not bool(keep.any()):
            return None
        scores = raw.cls_scores[level][i].permute(1, 2, 0).reshape(-1, self.num_classes)
        deltas = raw.box_deltas[level][i].permute(1, 2, 0).reshape(-1, 4)
        return scores[keep].sigmoid(), deltas[keep], anchors.anchors[level][keep]

    @torch.no_grad()
    def predict(
        self,
        raw: GAOutputs,
        anchors: Sequence[ImageAnchors],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detection]:
        """Detections per image in the resized-image frame (mmdet v2 ``GuidedAnchorHead``).

        Per level, of the kept locations the ``nms_pre`` with the best class score are decoded
        (clipped to the image); then class-wise NMS over all levels of the (location, class)
        pairs above ``score_thr`` keeps ``max_per_image``.
        """
        cfg = self.test_cfg
        out: list[Detection] = []
        for i, (image_anchors, size) in enumerate(zip(anchors, image_sizes)):
            boxes_all, scores_all = [], []
            for level in range(image_anchors.num_levels):
                kept = self._kept_level(raw, image_anchors, i, level)
                if kept is None:
                    continue
                scores, deltas, anc = kept
                if 0 < cfg.nms_pre < scores.shape[0]:
                    top = scores.max(dim=1).values.topk(cfg.nms_pre).indices
                    scores, deltas, anc = scores[top], deltas[top], anc[top]
                boxes_all.append(self.box_coder.decode(anc, deltas, max_shape=size))
                scores_all.append(scores)
            if not boxes_all:
                empty = raw.loc_preds[0].new_zeros((0, 4))
                out.append({"boxes": empty, "scores": empty[:, 0],
                            "labels": torch.zeros(0, dtype=torch.long, device=empty.device)})
                continue
            scores = torch.cat(scores_all)
            scores = torch.cat((scores.new_zeros((scores.shape[0], 1)), scores), dim=1)
            boxes, s, labels = multiclass_nms(torch.cat(boxes_all), scores, cfg.score_thr,
                                              cfg.nms_iou, cfg.max_per_image)
            out.append({"boxes": boxes, "scores": s, "labels": labels})
        return out


class GARPNHead(GuidedAnchorHead):
    """GA-RPN (mmdet ``GARPNHead``): a 3x3 conv + ReLU in front of :class:`GuidedAnchorHead`
    with one class, sigmoid cross-entropy on 256 sampled anchors, SmoothL1 (beta 1), and
    proposals as :class:`GAProposalConfig` says.

    With 256 channels it holds 1,182,104 parameters (mmdet's; RPNHead: 593,935).

    Args:
        in_channels: channels of the FPN levels (and of the shared conv).
        anchoring: :class:`GuidedAnchoring` (GA-RPN's: squares 8x stride on strides 4..64).
        train_cfg: :class:`GATrainConfig` (GA-RPN's).
        train_proposals: proposals fed to an R-CNN in training.
        test_proposals: proposals at inference.
        loss_weights: multiplier per key of :attr:`LOSS_KEYS`.
        feature_adaption: ``False``: the "GA-RPN w/o F.A." ablation (see
            :class:`GuidedAnchorHead`).
    """

    LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_anchor_shape", "loss_anchor_loc")

    def __init__(
        self,
        in_channels: int = 256,
        *,
        anchoring: GuidedAnchoring = GA_RPN_ANCHORING,
        train_cfg: GATrainConfig = GA_RPN_TRAIN,
        train_proposals: GAProposalConfig = GAProposalConfig(),
        test_proposals: GAProposalConfig = GAProposalConfig(),
        loss_weights: Mapping[str, float] | None = None,
        feature_adaption: bool = True,
    ) -> None:
        self.train_proposals = train_proposals
        self.test_proposals = test_proposals
        super().__init__(1, in_channels, in_channels, anchoring=anchoring, train_cfg=train_cfg,
                         cls_loss="sigmoid", box_loss_beta=1.0, loss_weights=loss_weights,
                         feature_adaption=feature_adaption)

    def _build_layers(self) -> None:
        self.rpn_conv = nn.Conv2d(self.in_channels, self.in_channels, 3, padding=1)
        super()._build_layers()

    def reset_parameters(self) -> None:
        """As :class:`GuidedAnchorHead`, plus normal(0, 0.01) on the shared conv."""
        nn.init.normal_(self.rpn_conv.weight, std=0.01)
        nn.init.zeros_(self.rpn_conv.bias)
        super().reset_parameters()

    def _forward_level(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return super()._forward_level(torch.relu(self.rpn_conv(x)))

    @torch.no_grad()
    def predict(
        self,
        raw: GAOutputs,
        anchors: Sequence[ImageAnchors],
        image_sizes: Sequence[tuple[int, int]],
        cfg: GAProposalConfig | None = None,
    ) -> list[Detection]:
        """Proposals per image (no gradient), by decreasing objectness, labels all 1.

        Args:
            raw: output of :meth:`forward`.
            anchors: output of :meth:`get_anchors`.
            image_sizes: per image (height, width) to clip to.
            cfg: default ``train_proposals`` in training mode, ``test_proposals`` in eval.
        """
        cfg = cfg or (self.train_proposals if self.training else self.test_proposals)
        out: list[Detection] = []
        for i, (image_anchors, size) in enumerate(zip(anchors, image_sizes)):
            boxes_all, scores_all = [], []
            for level in range(image_anchors.num_levels):
                kept = self._kept_level(raw, image_anchors, i, level)
                if kept is None:  # a level without a kept location is skipped (mmdet)
                    continue
                scores, deltas, anc = kept
                scores = scores[:, 0]
                if 0 < cfg.nms_pre < scores.numel():
                    scores, top = scores.topk(cfg.nms_pre)
                    deltas, anc = deltas[top], anc[top]
                boxes = self.box_coder.decode(anc, deltas, max_shape=size)
                if cfg.min_box_size >= 0:
                    ok = ((boxes[:, 2] - boxes[:, 0]) > cfg.min_box_size) & \
                        ((boxes[:, 3] - boxes[:, 1]) > cfg.min_box_size)
                    boxes, scores = boxes[ok], scores[ok]
                keep = nms(boxes, scores, cfg.nms_iou)[: cfg.nms_post]
                boxes_all.append(boxes[keep])
                scores_all.append(scores[keep])
            boxes = torch.cat(boxes_all) if boxes_all else raw.loc_preds[0].new_zeros((0, 4))
            scores = torch.cat(scores_all) if scores_all else boxes.new_zeros(0)
            scores, order = scores.topk(min(cfg.max_per_image, scores.numel()))
            out.append({"boxes": boxes[order], "scores": scores,
                        "labels": torch.ones_like(scores, dtype=torch.long)})
        return out


class GARetinaHead(GuidedAnchorHead):
    """GA-RetinaNet (mmdet ``GARetinaHead``): RetinaNet's two towers of ``stacked_convs`` 3x3
    convs + ReLU; location from the classification tower, shape from the box tower, one feature
    adaption per tower (both driven by the same shape), 3x3 classifier and regressor (masked at
    inference). Focal classification over the positives, SmoothL1 beta 0.04.

    With 256 channels and 80 classes it holds 6,094,967 parameters (mmdet's; RetinaHead:
    6,463,220).

    Args:
        num_classes: K foreground classes.
        in_channels: channels of the FPN levels.
        feat_channels: tower width.
        stacked_convs: convs per tower.
        anchoring: default GA-RetinaNet's (squares 4x stride on strides 8..128, stds 1).
        train_cfg: default GA-RetinaNet's.
        loss_weights: multiplier per key of :attr:`LOSS_KEYS`.
        test_cfg: :class:`~glimpse.heads.retina.RetinaTestConfig` (score 0.05, NMS 0.5, 100).
        tower_init: ``"normal"`` (mmdet) or ``"kaiming"`` for narrow towers trained from
            scratch (as :class:`~glimpse.heads.retina.RetinaHead`).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        *,
        anchoring: GuidedAnchoring = GA_RETINA_ANCHORING,
        train_cfg: GATrainConfig = GA_RETINA_TRAIN,
        loss_weights: Mapping[str, float] | None = None,
        test_cfg: RetinaTestConfig = RetinaTestConfig(),
        tower_init: Literal["normal", "kaiming"] = "normal",
    ) -> None:
        if tower_init not in ("normal", "kaiming"):
            raise ValueError(f"tower_init must be 'normal' or 'kaiming', got {tower_init!r}")
        self.stacked_convs = stacked_convs
        self.tower_init = tower_init
        super().__init__(num_classes, in_channels, feat_channels, anchoring=anchoring,
                         train_cfg=train_cfg, cls_loss="focal", box_loss_beta=0.04,
                         loss_weights=loss_weights, test_cfg=test_cfg)

    def _build_layers(self) -> None:
        c, f, g = self.in_channels, self.feat_channels, self.anchoring.deform_groups

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(self.stacked_convs):
                layers += [nn.Conv2d(c if i == 0 else f, f, 3, padding=1), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_convs = tower()
        self.reg_convs = tower()
        self.conv_loc = nn.Conv2d(f, 1, 1)
        self.conv_shape = nn.Conv2d(f, 2, 1)
        self.feature_adaption_cls = FeatureAdaption(f, f, 3, g)
        self.feature_adaption_reg = FeatureAdaption(f, f, 3, g)
        self.retina_cls = nn.Conv2d(f, self.num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(f, 4, 3, padding=1)

    def reset_parameters(self) -> None:
        """normal(0, 0.01) convs (Kaiming towers with ``tower_init="kaiming"``), zero biases,
        location and classifier biases at the 0.01 prior (mmdet v2)."""
        towers = [m for m in (*self.cls_convs, *self.reg_convs) if isinstance(m, nn.Conv2d)]
        for conv in (*towers, self.conv_loc, self.conv_shape, self.retina_cls, self.retina_reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        if self.tower_init == "kaiming":
            for conv in towers:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.constant_(self.conv_loc.bias, _PRIOR_BIAS)
        nn.init.constant_(self.retina_cls.bias, _PRIOR_BIAS)
        self.feature_adaption_cls.reset_parameters()
        self.feature_adaption_reg.reset_parameters()

    def _forward_level(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cls_feat = self.cls_convs(x)
        reg_feat = self.reg_convs(x)
        loc = self.conv_loc(cls_feat)
        shape = self.conv_shape(reg_feat)
        cls_feat = self.feature_adaption_cls(cls_feat, shape)
        reg_feat = self.feature_adaption_reg(reg_feat, shape)
        mask = self._kept(loc)
        return (_conv(self.retina_cls, cls_feat, mask), _conv(self.retina_reg, reg_feat, mask),
                shape, loc)
