"""The cascade's context seams, proven by an HTC-style subclass written before HTC itself:
interleaved execution (each stage's mask branch trains on the boxes that stage regressed,
re-assigned and re-sampled), mask information flow (stage t's mask-head conv features, through
a 1x1 conv + ReLU, added to stage t + 1's mask RoI features) and semantic features added to the
RoI features (mmdet ``HybridTaskCascadeRoIHead``; /work/shared/reference/ga_htc_mmdet.md
section 2.2-2.4). Every per-batch tensor lives in the :class:`CascadeContext`, none on the
module: the test checks the module's attributes before and after, and re-entry."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.assign import SamplingResult
from glimpse.heads.cascade import CASCADE_STDS, CascadeContext, CascadeRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_extractor import RoIExtractor, boxes_to_rois
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.structures import Target

C = 8  # channels of the pyramid, the semantic map and the mask heads
SIZES = [(256, 256), (192, 256)]


class InterleavedFlowRoIHead(CascadeRoIHead):
    """Cascade Mask R-CNN plus HTC's interleaved execution, mask information flow and semantic
    fusion, on the base class's hooks only.

    ``conv_res[t - 1]`` (1x1 conv + ReLU, HTC's ``conv_res``; stage 0 has none) maps stage
    ``t - 1``'s mask conv features into stage ``t``'s mask input. The semantic map is pooled
    14x14 from its single stride-8 level and added to the mask RoI features, and (averaged down
    to 7x7) to the box RoI features.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        in_channels = self.mask_heads[0].convs[0].in_channels
        conv_channels = self.mask_heads[0].convs[-1].out_channels
        self.conv_res = nn.ModuleList(
            nn.Sequential(nn.Conv2d(conv_channels, in_channels, 1), nn.ReLU())
            for _ in range(self.num_stages - 1))
        self.semantic_extractor = RoIExtractor(14, strides=(8,))

    def _semantic(self, context: CascadeContext, rois: Tensor) -> Tensor | None:
        """[R, C, 14, 14] semantic RoI features, or None without a semantic map."""
        if context.semantic_feat is None:
            return None
        return self.semantic_extractor([context.semantic_feat], rois)

    def box_forward(self, stage: int, context: CascadeContext, rois: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
        roi_feats = self.box_extractor(context.feats, rois)
        semantic = self._semantic(context, rois)
        if semantic is not None:
            roi_feats = roi_feats + F.adaptive_avg_pool2d(semantic, roi_feats.shape[-2:])
        logits, deltas = self.box_heads[stage](roi_feats)
        return logits, deltas, roi_feats

    def mask_features(self, stage: int, context: CascadeContext, rois: Tensor) -> Tensor:
        """Stage ``stage``'s mask conv features on ``rois``, fed by stage ``stage - 1``'s
        features on the same RoIs; recorded in ``context.mask_feats[stage]``."""
        x = self.mask_extractor(context.feats, rois)
        semantic = self._semantic(context, rois)
        if semantic is not None:
            x = x + semantic
        if stage > 0:
            x = x + self.conv_res[stage - 1](context.mask_feats[stage - 1])
        feats = self.mask_heads[stage].features(x)
        context.mask_feats[stage] = feats
        return feats

    def mask_forward(self, stage: int, context: CascadeContext, rois: Tensor) -> Tensor:
        return self.mask_heads[stage].logits(self.mask_features(stage, context, rois))

    def mask_loss(self, stage: int, context: CascadeContext, samples: Sequence[SamplingResult],
                  targets: Sequence[Target]) -> dict[str, Tensor]:
        # information flow in training: the earlier heads run again on this stage's positives
        rois = boxes_to_rois([s.pos_boxes for s in samples])
        for earlier in range(stage):
            self.mask_features(earlier, context, rois)
        return super().mask_loss(stage, context, samples, targets)

    def stage_loss(self, stage: int, context: CascadeContext, proposals: Sequence[Tensor],
                   targets: Sequence[Target]) -> tuple[dict[str, Tensor], list[Tensor]]:
        samples = self.sample(stage, proposals, targets)
        rois = boxes_to_rois([s.boxes for s in samples])
        logits, deltas, _ = self.box_forward(stage, context, rois)
        head = self.box_heads[stage]
        labels, box_targets = head.get_targets(samples)
        losses = head.loss(logits, deltas, labels, box_targets)
        # interleaved execution: regress first, re-assign and re-sample, then the mask branch
        refined = self.refine_samples(stage, samples, logits, deltas, labels,
                                      context.image_sizes)
        losses.update(self.mask_loss(stage, context, self.sample(stage, refined, targets),
                                     targets))
        return losses, refined if stage < self.num_stages - 1 else []


def _head(cls=InterleavedFlowRoIHead) -> InterleavedFlowRoIHead:
    torch.manual_seed(0)
    box_heads = [BoxHead(3, C, fc_channels=16, class_agnostic=True, target_stds=s,
                         box_loss_beta=1.0) for s in CASCADE_STDS]
    cfgs = [RCNNTrainConfig(pos_iou_thr=t, neg_iou_thr=t, min_pos_iou=t, num_samples=32)
            for t in (0.5, 0.6, 0.7)]
    return cls(box_heads, cfgs, [1.0, 0.5, 0.25],
               mask_heads=[FCNMaskHead(3, C, C) for _ in range(3)],
               test_cfg=RCNNTestConfig(score_thr=0.0, max_per_image=20))


def _scene(seed: int):
    """Pyramid (strides 4..64), stride-8 semantic map, proposals and targets of two images."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, C, 64 // 2**i, 64 // 2**i, generator=g) for i in range(5)]
    semantic = torch.randn(2, C, 32, 32, generator=g)
    xy = torch.rand(2, 20, 2, generator=g) * 150
    proposals = list(torch.cat((xy, xy + 20 + torch.rand(2, 20, 2, generator=g) * 60), -1))
    masks = torch.zeros(3, 256, 256, dtype=torch.uint8)
    masks[0, 10:60, 20:80] = 1
    masks[1, 100:200, 120:220] = 1
    masks[2, 30:90, 150:190] = 1
    targets = [
        {"boxes": torch.tensor([[20.0, 10.0, 80.0, 60.0], [120.0, 100.0, 220.0, 200.0]]),
         "labels": torch.tensor([1, 3]), "masks": masks[:2]},
        {"boxes": torch.tensor([[150.0, 30.0, 190.0, 90.0]]), "labels": torch.tensor([2]),
         "masks": masks[2:]},
    ]
    # plus each ground truth moved left by a tenth of its width (a good non-gt positive)
    for i, t in enumerate(targets):
        shift = (t["boxes"][:, 2:3] - t["boxes"][:, 0:1]) * 0.1
        proposals[i] = torch.cat((proposals[i], t["boxes"] - torch.cat((shift, 0 * shift,
                                                                        shift, 0 * shift), 1)))
    return feats, semantic, proposals, targets


def _state(module: nn.Module) -> dict:
    """Identity of every attribute of every submodule (and of container contents), so that
    rebinding or filling anything on the module during a call shows up."""
    def ids(value):
        if isinstance(value, dict):
            return id(value), tuple((k, id(v)) for k, v in value.items())
        if isinstance(value, (list, tuple, set)):
            return id(value), tuple(id(v) for v in value)
        return id(value)

    return {(name, key): ids(value) for name, m in module.named_modules()
            for key, value in vars(m).items()}


def _total(losses: dict[str, Tensor]) -> Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss_"))


def test_trains_with_flow_and_semantic_without_state_on_self():
    head = _head()
    feats, semantic, proposals, targets = _scene(1)
    semantic.requires_grad_(True)
    before = _state(head)
    context = CascadeContext(feats, SIZES, semantic_feat=semantic)
    losses = head.loss(feats, proposals, targets, SIZES, context=context)
    assert _state(head) == before
    assert set(context.mask_feats) == {0, 1, 2}  # the state lived in the context
    for t in range(3):
        for k in ("loss_cls", "loss_box", "loss_mask"):
            assert torch.isfinite(losses[f"{k}_s{t}"]) and losses[f"{k}_s{t}"] > 0, (k, t)
    # mask information flow: stage 1's mask loss reaches stage 0's mask convs through the 1x1
    # conv; stage 0's mask loss touches no 1x1 conv
    w0, res0 = head.mask_heads[0].convs[0].weight, head.conv_res[0][0].weight
    g_w0, g_res0 = torch.autograd.grad(losses["loss_mask_s1"], (w0, res0), retain_graph=True)
    assert g_w0.abs().sum() > 0 and g_res0.abs().sum() > 0
    g = torch.autograd.grad(losses["loss_mask_s0"], (res0,), retain_graph=True,
                            allow_unused=True)[0]
    assert g is None
    _total(losses).backward()
    for res in head.conv_res:
        assert torch.isfinite(res[0].weight.grad).all() and res[0].weight.grad.abs().sum() > 0
    assert semantic.grad.abs().sum() > 0
    assert _state(head) == before


def test_mask_branch_trains_on_the_boxes_its_stage_regressed():
    seen: dict[str, list] = {"refined": [], "mask_pos": []}

    class Spy(InterleavedFlowRoIHead):
        def refine_samples(self, *args, **kwargs):
            out = super().refine_samples(*args, **kwargs)
            seen["refined"].append(out)
            return out

        def mask_loss(self, stage, context, samples, targets):
            seen["mask_pos"].append([(s.pos_boxes, s.pos_is_gt) for s in samples])
            return super().mask_loss(stage, context, samples, targets)

    head = _head(Spy)
    for box_head in head.box_heads:  # move every box right by a tenth of its width
        nn.init.constant_(box_head.reg.weight, 0.0)
        box_head.reg.bias.data = torch.tensor([1.0, 0.0, 0.0, 0.0])
    feats, _, proposals, targets = _scene(2)
    head.loss(feats, proposals, targets, SIZES)
    assert len(seen["refined"]) == len(seen["mask_pos"]) == 3
    for stage, (refined, mask_pos) in enumerate(zip(seen["refined"], seen["mask_pos"])):
        inputs = proposals if stage == 0 else seen["refined"][stage - 1]
        for image, (boxes, is_gt) in enumerate(mask_pos):
            regressed = boxes[~is_gt]
            assert len(regressed) > 0, (stage, image)
            # each non-gt mask positive is a box this stage regressed, not one it was given
            hit = (regressed[:, None] == refined[image][None]).all(-1).any(1)
            assert hit.all(), (stage, image)
            given = (regressed[:, None] == inputs[image][None]).all(-1).any(1)
            assert not given.any(), (stage, image)


def _hand_mask_probs(head: InterleavedFlowRoIHead, feats, semantic, boxes, labels) -> Tensor:
    """Mask ensemble of HTC's inference written out: features chained stage by stage."""
    rois = boxes_to_rois(boxes)
    x = head.mask_extractor(feats, rois) + head.semantic_extractor([semantic], rois)
    channel = torch.cat(labels) - 1
    probs, prev = [], None
    for t, mask_head in enumerate(head.mask_heads):
        f = mask_head.features(x if t == 0 else x + head.conv_res[t - 1](prev))
        logits = mask_head.logits(f)
        probs.append(logits[torch.arange(len(channel)), channel].sigmoid())
        prev = f
    return sum(probs) / len(probs)


def test_inference_flow_matches_hand_loop_and_reentry():
    head = _head().eval()
    feats, semantic, proposals, _ = _scene(3)
    other_feats, other_semantic, other_proposals, _ = _scene(4)
    before = _state(head)

    def run(f, s, p):
        return head.predict(f, p, SIZES, context=CascadeContext(f, SIZES, semantic_feat=s))

    first = run(feats, semantic, proposals)
    assert all(len(d["boxes"]) > 0 for d in first)
    with torch.no_grad():
        ref = _hand_mask_probs(head, feats, semantic, [d["boxes"] for d in first],
                               [d["labels"] for d in first])
    torch.testing.assert_close(torch.cat([d["mask_probs"] for d in first]), ref)
    # the semantic map reaches the detections
    plain = head.predict(feats, proposals, SIZES)
    assert not torch.equal(plain[0]["scores"], first[0]["scores"])
    # another batch in between leaves nothing behind: the same outputs again
    run(other_feats, other_semantic, other_proposals)
    again = run(feats, semantic, proposals)
    for a, b in zip(first, again):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert _state(head) == before
    # no proposals: empty detections and masks through the flow
    none = run(feats, semantic, [torch.zeros(0, 4)] * 2)
    assert all(d["boxes"].shape == (0, 4) and d["mask_probs"].shape == (0, 28, 28)
               for d in none)

