"""Every dense head speaks the protocol of glimpse.heads.base (the four calls, per-image anchors,
shapes, empty targets, an image without ground truth), the detectors make anchors once per
forward, and the builders compose parts passed in (heads, necks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glimpse.assign import AnchorGenerator
from glimpse.backbones import resnet_slim
from glimpse.detectors.retinanet import RetinaNet, retinanet
from glimpse.detectors.two_stage import RCNNConfig, RPNConfig, TwoStageDetector, faster_rcnn
from glimpse.heads.base import DenseHead, ImageAnchors
from glimpse.heads.retina import RetinaHead, RetinaTestConfig
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig
from glimpse.heads.rpn import RPNHead
from glimpse.heads.standard import StandardRoIHead
from glimpse.necks.fpn import FPN

C = 8
# (feature strides, head) per dense head; the RPN has 3 anchors per location, RetinaNet 9
HEADS = {
    "rpn": ((4, 8, 16, 32, 64), lambda: RPNHead(C, C)),
    "retina": ((8, 16, 32, 64, 128),
               lambda: RetinaHead(3, C, C, 1, test_cfg=RetinaTestConfig(score_thr=0.0))),
}
STATS_KEY = {"rpn": "stats_rpn_pos", "retina": "stats_pos"}
PAD_SIZES = [(64, 64), (32, 64)]  # the second image fills the top half of the 64x64 batch
IMAGE_SIZES = [(60, 64), (30, 50)]
WITH_GT = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 2.0, 60.0, 20.0]]),
           "labels": torch.tensor([1, 3])}
NO_GT = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def _features(strides, batch=2, size=64):
    torch.manual_seed(0)
    return [torch.randn(batch, C, -(-size // s), -(-size // s)) for s in strides]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_protocol_calls_and_per_image_anchors(name):
    strides, make = HEADS[name]
    head = make()
    assert isinstance(head, DenseHead)
    raw = head(_features(strides))
    anchors = head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES)
    assert len(anchors) == 2 and all(isinstance(a, ImageAnchors) for a in anchors)
    num_anchors = head.anchor_generator.num_base_anchors
    for image_anchors, (pad_h, pad_w) in zip(anchors, PAD_SIZES):
        assert image_anchors.num_levels == len(strides)
        for level, s in enumerate(strides):
            side = -(-64 // s)  # feature map side
            n = side * side * num_anchors
            boxes, valid = image_anchors.anchors[level], image_anchors.valid[level]
            assert boxes.shape == (n, 4) and valid.shape == (n,) and valid.dtype == torch.bool
            # valid: the feature locations inside the padded image, ceil(pad / stride) per axis
            inside = min(-(-pad_h // s), side) * min(-(-pad_w // s), side) * num_anchors
            assert int(valid.sum()) == inside
    # one anchor grid shared by the images (no copy per image)
    assert anchors[0].anchors[0] is anchors[1].anchors[0]
    assert not torch.equal(anchors[0].valid[0], anchors[1].valid[0])

    losses = head.loss(raw, anchors, [WITH_GT, NO_GT], IMAGE_SIZES, PAD_SIZES)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    loss_keys = [k for k in losses if k.startswith("loss_")]
    assert len(loss_keys) == 2 and set(losses) == {*loss_keys, STATS_KEY[name]}
    assert all(losses[k] > 0 for k in loss_keys)
    sum(losses[k] for k in loss_keys).backward()

    head.eval()
    with torch.no_grad():
        raw = head(_features(strides))
        dets = head.predict(raw, head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES), IMAGE_SIZES)
    assert len(dets) == 2
    for det, (h, w) in zip(dets, IMAGE_SIZES):
        d = det["boxes"].shape[0]
        assert d > 0 and det["boxes"].shape == (d, 4) and det["scores"].shape == (d,)
        assert det["labels"].dtype == torch.long and det["labels"].min() >= 1
        assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h
        assert torch.equal(det["scores"], det["scores"].sort(descending=True).values)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_no_ground_truth_anywhere_trains_only_the_classifier(name):
    strides, make = HEADS[name]
    head = make()
    raw = head(_features(strides))
    anchors = head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES)
    losses = head.loss(raw, anchors, [NO_GT, NO_GT], IMAGE_SIZES, PAD_SIZES)
    box_key, cls_key = sorted(k for k in losses if k.startswith("loss_"))
    assert losses[cls_key] > 0 and losses[box_key].item() == 0.0
    assert losses[STATS_KEY[name]] == 0


def test_loss_follows_the_per_image_valid_flags():
    """An image whose anchors are all invalid (as a guided-anchoring location mask may leave
    it) adds nothing but its one count to RetinaNet's per-image normaliser."""
    strides, make = HEADS["retina"]
    head = make()
    raw = head(_features(strides))
    anchors = head.get_anchors(raw, IMAGE_SIZES, PAD_SIZES)
    masked = ImageAnchors(anchors[1].anchors, tuple(torch.zeros_like(v)
                                                      for v in anchors[1].valid))
    both = head.loss(raw, [anchors[0], masked], [WITH_GT, WITH_GT], IMAGE_SIZES, PAD_SIZES)
    first = head.loss(tuple([x[:1] for x in part] for part in raw), anchors[:1], [WITH_GT],
                      IMAGE_SIZES[:1], PAD_SIZES[:1])
    num_pos = first["stats_pos"].item()
    for key in ("loss_cls", "loss_box"):
        torch.testing.assert_close(both[key] * (num_pos + 1), first[key] * num_pos)


def test_image_anchors_level_mismatch_is_an_error():
    with pytest.raises(ValueError, match="levels"):
        ImageAnchors((torch.zeros(3, 4),), ())


@pytest.mark.parametrize("name", sorted(HEADS))
def test_unknown_loss_weight_key_is_an_error(name):
    with pytest.raises(ValueError, match="loss_weights.*loss_typo"):
        (RPNHead if name == "rpn" else lambda **kw: RetinaHead(3, **kw))(
            loss_weights={"loss_typo": 2.0})


# ------------------------------------------------------------------------------ detectors
class CountingHead(nn.Module):
    """A dense head that is no RPNHead / RetinaHead: it wraps one and counts the calls, and
    counts how often anchors are laid out."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[str] = []
        self.grids = 0
        grid_anchors = inner.anchor_generator.grid_anchors

        def counted(*args, **kwargs):
            self.grids += 1
            return grid_anchors(*args, **kwargs)

        inner.anchor_generator.grid_anchors = counted

    def forward(self, features):
        self.calls.append("forward")
        return self.inner(features)

    def get_anchors(self, raw, image_sizes, pad_sizes):
        self.calls.append("get_anchors")
        return self.inner.get_anchors(raw, image_sizes, pad_sizes)

    def loss(self, raw, anchors, targets, image_sizes, pad_sizes):
        self.calls.append("loss")
        return self.inner.loss(raw, anchors, targets, image_sizes, pad_sizes)

    def predict(self, raw, anchors, image_sizes):
        self.calls.append("predict")
        return self.inner.predict(raw, anchors, image_sizes)


def _batch():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 96, generator=g), torch.rand(3, 50, 40, generator=g)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
               dict(NO_GT)]
    return images, targets


def _train_and_eval(model: nn.Module) -> tuple[dict, list]:
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2 and all(d["boxes"].shape[-1] == 4 for d in dets)
    return losses, dets


def test_retinanet_with_a_head_passed_in():
    torch.manual_seed(0)
    inner = RetinaHead(3, 16, 16, 1, test_cfg=RetinaTestConfig(score_thr=0.0),
                       anchor_generator=AnchorGenerator((8, 16, 32, 64, 128), scales=(2.0,)))
    head = CountingHead(inner)
    model = retinanet(resnet_slim(base_width=8), image_scale=(64, 64), fpn_channels=16,
                      head=head)
    assert isinstance(model, RetinaNet) and model.head is head
    losses, dets = _train_and_eval(model)
    assert set(losses) == {"loss_cls", "loss_box", "stats_pos"}
    assert head.calls == ["forward", "get_anchors", "loss", "forward", "get_anchors", "predict"]
    assert head.grids == 2  # once per forward, shared by loss / predict
    assert all(len(d["boxes"]) > 0 for d in dets)


def test_faster_rcnn_with_rpn_and_roi_heads_passed_in():
    torch.manual_seed(0)
    rpn_head = CountingHead(RPNHead(16, 16))
    roi_head = StandardRoIHead(BoxHead(3, 16, fc_channels=32),
                               test_cfg=RCNNTestConfig(score_thr=0.0))
    model = faster_rcnn(resnet_slim(base_width=8), image_scale=(64, 64), fpn_channels=16,
                        rpn_head=rpn_head, roi_head=roi_head)
    assert isinstance(model, TwoStageDetector)
    assert model.rpn_head is rpn_head and model.roi_head is roi_head
    losses, _ = _train_and_eval(model)
    assert {"loss_rpn_cls", "loss_rpn_box", "stats_rpn_pos", "loss_cls", "loss_box"} <= \
        set(losses)
    assert rpn_head.calls == ["forward", "get_anchors", "loss", "predict",
                              "forward", "get_anchors", "predict"]
    assert rpn_head.grids == 2


def test_builders_take_a_neck():
    torch.manual_seed(0)
    backbone = resnet_slim(base_width=8)
    neck = FPN(list(backbone.out_channels.values()), 16, num_outs=5, add_extra="maxpool")
    model = faster_rcnn(backbone, 3, image_scale=(64, 64), fpn_channels=16, fc_channels=32,
                        neck=neck)
    assert model.neck is neck
    _train_and_eval(model)


def test_a_part_and_its_settings_together_are_an_error():
    backbone = resnet_slim(base_width=8)
    head = RetinaHead(3, 16, 16, 1)
    with pytest.raises(ValueError, match="head=.*test_cfg"):
        retinanet(backbone, fpn_channels=16, head=head, test_cfg=RetinaTestConfig())
    with pytest.raises(ValueError, match="neck=.*upsampler"):
        retinanet(backbone, neck=nn.Identity(), upsampler=lambda c: nn.Identity())
    with pytest.raises(ValueError, match="rpn_head=.*rpn_cfg"):
        faster_rcnn(backbone, rpn_head=RPNHead(16, 16), rpn_cfg=RPNConfig())
    with pytest.raises(ValueError, match="roi_head=.*fc_channels, rcnn_cfg"):
        faster_rcnn(backbone, roi_head=nn.Identity(), rcnn_cfg=RCNNConfig(), fc_channels=32)
