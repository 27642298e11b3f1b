"""Hybrid Task Cascade's RoI head (Chen et al., CVPR 2019; mmdetection v2
``HybridTaskCascadeRoIHead`` and ``HTCMaskHead``) on :class:`~glimpse.heads.cascade.CascadeRoIHead`.

Three changes to Cascade Mask R-CNN, each a flag, so that the paper's ablation is one head:

* **interleaved execution** (``interleaved``): in training, stage ``t`` first regresses its
  sampled RoIs (ground-truth RoIs dropped), re-assigns and re-samples them with its own
  assigner and sampler, and trains its mask branch on the new positives; the regressed RoIs are
  also stage ``t + 1``'s proposals. Without it the mask branch trains on the RoIs the box
  branch was given (Cascade Mask R-CNN).
* **mask information flow** (``mask_info_flow``): mask head ``t`` adds, through its own 1x1
  conv + ReLU (:class:`HTCMaskHead` ``conv_res``), mask head ``t - 1``'s conv features of the
  same RoIs to its input. In training the earlier heads run again (with gradients) on stage
  ``t``'s positives; at inference the heads run in order on the final boxes.
* **semantic fusion**: when the call's :class:`~glimpse.heads.cascade.CascadeContext` carries a
  ``semantic_feat`` (the detector's :class:`~glimpse.heads.semantic.FusedSemanticHead`), its
  14x14 RoIAlign on the single stride-8 map is added to the mask RoI features and, averaged down
  to 7x7, to the box RoI features.

Inference is the cascade's: the stages' class logits averaged, the last stage's boxes, and the
mask heads' sigmoid masks on the final detections averaged over the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.assign import SamplingResult
from glimpse.heads.cascade import CascadeContext, CascadeRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_extractor import RoIExtractor, boxes_to_rois
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.structures import Target

__all__ = ["HTCMaskHead", "HTCRoIHead"]


class HTCMaskHead(FCNMaskHead):
    """:class:`FCNMaskHead` that can receive the previous stage's conv features.

    Args:
        with_conv_res: own the 1x1 conv + ReLU (``conv_res``, 65,792 parameters at 256
            channels) mapping the previous stage's [R, conv_channels, S, S] features onto this
            head's [R, in_channels, S, S] input; mmdet v2 builds the first stage without it.
        Others: as :class:`FCNMaskHead`.
    """

    def __init__(self, num_classes: int = 80, in_channels: int = 256, conv_channels: int = 256,
                 num_convs: int = 4, class_agnostic: bool = False,
                 upsampler: Callable[[int], nn.Module] | None = None, loss_weight: float = 1.0,
                 with_conv_res: bool = True) -> None:
        super().__init__(num_classes, in_channels, conv_channels, num_convs, class_agnostic,
                         upsampler, loss_weight)
        self.conv_res = (nn.Sequential(nn.Conv2d(conv_channels, in_channels, 1),
                                       nn.ReLU(inplace=True)) if with_conv_res else None)
        self._reset_conv_res()

    @property
    def with_conv_res(self) -> bool:
        return self.conv_res is not None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_conv_res()

    def _reset_conv_res(self) -> None:
        """mmcv ConvModule's Kaiming init (FCNMaskHead.__init__ resets before conv_res
        exists, hence the getattr)."""
        if getattr(self, "conv_res", None) is not None:
            nn.init.kaiming_normal_(self.conv_res[0].weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.conv_res[0].bias)

    def features(self, x: Tensor, previous: Tensor | None = None) -> Tensor:
        """[R, C_in, S, S] RoI features (plus ``conv_res`` of the previous stage's [R, C, S, S]
        conv features when given) -> [R, C, S, S] after the convs."""
        if previous is not None:
            if not self.with_conv_res:
                raise ValueError("this mask head has no conv_res (with_conv_res=False), so it "
                                 "cannot receive the previous stage's features")
            x = x + self.conv_res(previous)
        return super().features(x)


class HTCRoIHead(CascadeRoIHead):
    """Cascade RoI head with HTC's interleaved execution, mask information flow and semantic
    fusion.

    Args:
        box_heads, train_cfgs, stage_loss_weights, box_extractor, mask_extractor, test_cfg: as
            :class:`CascadeRoIHead`.
        mask_heads: one :class:`HTCMaskHead` per stage (mask information flow needs
            ``with_conv_res`` in every stage but the first).
        interleaved: interleaved execution in training (see the module docstring).
        mask_info_flow: mask information flow.
        semantic_extractor: RoI extractor of the semantic feature map; default 14x14 on one
            stride-8 level (mmdet #3709: other strides break the masks).

    With ``interleaved=False, mask_info_flow=False`` and no semantic map this is Cascade Mask
    R-CNN, step by step.
    """

    def __init__(
        self,
        box_heads: Sequence[BoxHead],
        train_cfgs: Sequence[RCNNTrainConfig],
        stage_loss_weights: Sequence[float],
        mask_heads: Sequence[FCNMaskHead],
        *,
        interleaved: bool = True,
        mask_info_flow: bool = True,
        box_extractor: RoIExtractor | None = None,
        mask_extractor: RoIExtractor | None = None,
        semantic_extractor: RoIExtractor | None = None,
        test_cfg: RCNNTestConfig = RCNNTestConfig(),
    ) -> None:
        super().__init__(box_heads, train_cfgs, stage_loss_weights, box_extractor, mask_heads,
                         mask_extractor, test_cfg)
        if mask_info_flow:
            for t, head in enumerate(self.mask_heads[1:], start=1):
                if not (isinstance(head, HTCMaskHead) and head.with_conv_res):
                    raise ValueError(f"mask_info_flow: mask head {t} must be an HTCMaskHead "
                                     "with with_conv_res=True")
        self.interleaved = interleaved
        self.mask_info_flow = mask_info_flow
        self.semantic_extractor = semantic_extractor or RoIExtractor(14, strides=(8,))

    def _semantic_roi_features(self, context: CascadeContext, rois: Tensor) -> Tensor | None:
        """[R, C, 14, 14] semantic RoI features, or None without a semantic map."""
        if context.semantic_feat is None:
            return None
        return self.semantic_extractor([context.semantic_feat], rois)

    def box_forward(self, stage: int, context: CascadeContext, rois: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
        roi_feats = self.box_extractor(context.feats, rois)
        semantic = self._semantic_roi_features(context, rois)
        if semantic is not None:
            if semantic.shape[-2:] != roi_feats.shape[-2:]:
                semantic = F.adaptive_avg_pool2d(semantic, roi_feats.shape[-2:])
            roi_feats = roi_feats + semantic
        logits, deltas = self.box_heads[stage](roi_feats)
        return logits, deltas, roi_feats

    def mask_roi_features(self, context: CascadeContext, rois: Tensor) -> Tensor:
        """[R, C, 14, 14] mask RoI features (plus the semantic RoI features) of [R, 5] RoIs."""
        x = self.mask_extractor(context.feats, rois)
        semantic = self._semantic_roi_features(context, rois)
        return x if semantic is None else x + semantic

    def mask_head_features(self, stage: int, context: CascadeContext, x: Tensor) -> Tensor:
        """Mask head ``stage``'s conv features of the RoI features ``x``; with mask information
        flow, fed by ``context.mask_feats[stage - 1]`` (the previous head on the same RoIs)
        and recorded as ``context.mask_feats[stage]``."""
        if not self.mask_info_flow:
            return self.mask_heads[stage].features(x)
        previous = context.mask_feats.get(stage - 1) if stage > 0 else None
        if stage > 0 and (previous is None or previous.shape[0] != x.shape[0]):
            raise RuntimeError(f"mask information flow: stage {stage - 1}'s features of these "
                               f"RoIs are missing; run the mask stages in order on one set of "
                               f"RoIs")
        feats = self.mask_heads[stage].features(x, previous)
        context.mask_feats[stage] = feats
        return feats

    def mask_forward(self, stage: int, context: CascadeContext, rois: Tensor) -> Tensor:
        x = self.mask_roi_features(context, rois)
        return self.mask_heads[stage].logits(self.mask_head_features(stage, context, x))

    def mask_loss(self, stage: int, context: CascadeContext, samples: Sequence[SamplingResult],
                  targets: Sequence[Target]) -> dict[str, Tensor]:
        if self.mask_info_flow and stage > 0:
            # the earlier heads run again, with gradients, on this stage's positives
            # (mmdet #476 -> #478: stages have different RoIs)
            x = self.mask_roi_features(context, boxes_to_rois([s.pos_boxes for s in samples])
                                       .to(context.feats[0]))
            for earlier in range(stage):
                self.mask_head_features(earlier, context, x)
        return super().mask_loss(stage, context, samples, targets)

    def stage_loss(self, stage: int, context: CascadeContext, proposals: Sequence[Tensor],
                   targets: Sequence[Target]) -> tuple[dict[str, Tensor], list[Tensor]]:
        if not self.interleaved:
            return super().stage_loss(stage, context, proposals, targets)
        samples = self.sample(stage, proposals, targets)
        rois = boxes_to_rois([s.boxes for s in samples])
        logits, deltas, _ = self.box_forward(stage, context, rois)
        head = self.box_heads[stage]
        labels, box_targets = head.get_targets(samples)
        losses = head.loss(logits, deltas, labels, box_targets)
        # interleaved: regress, then re-assign and re-sample the regressed RoIs for the mask
        # branch ("re-assign and sample 512 RoIs from 512 RoIs"); they feed the next stage too
        refined = self.refine_samples(stage, samples, logits, deltas, labels,
                                      context.image_sizes)
        losses.update(self.mask_loss(stage, context, self.sample(stage, refined, targets),
                                     targets))
        return losses, refined if stage < self.num_stages - 1 else []

    @torch.no_grad()
    def predict_mask_probs(self, context: CascadeContext, boxes: Sequence[Tensor],
                           labels: Sequence[Tensor]) -> list[Tensor]:
        """As :meth:`CascadeRoIHead.predict_mask_probs`, with the RoI features extracted once
        and the heads chained on them (mmdet v2 ``simple_test``).

        The mean over the stages is mmdet v1/v2's (whose model zoo reported HTC's numbers);
        mmdet 3.3.0 keeps the last stage's masks alone (its ``aug_masks.append`` sits after the
        loop over the heads), a departure measured in ``tests/models/test_mmdet_parity_htc.py``.
        """
        rois = boxes_to_rois(boxes).to(context.feats[0])
        x = self.mask_roi_features(context, rois)
        flat_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        probs = sum(head.probabilities(head.logits(self.mask_head_features(t, context, x)),
                                       flat_labels)
                    for t, head in enumerate(self.mask_heads)) / self.num_stages
        return list(probs.split([b.shape[0] for b in boxes]))
