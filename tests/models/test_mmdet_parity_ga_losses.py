"""GA-RPN's training losses and targets equal mmdetection 3.3.0's for the same weights (issue 10).

``ga_rpn_losses.npz`` (``make_fixtures.py --models ga_rpn_losses``): the slim ``ga_rpn`` weights
(seeded, pytorch style), the fixture image, four fixed ground truths (small, tall thin, large,
on the border), mmdetection's train mode. Both random samplers draw more candidates than there
are locations, so every positive and negative is kept and nothing random remains; glimpse is
built with the same sample counts (``GATrainConfig``). Compared:

* location targets and weights per FPN level (centre 1, ignore 0, elsewhere 0.1): equal;
* the loss normalisers (location ``sum H W / 200``, shape and cls/box ``sum max(pos, 1) +
  max(neg, 1)``) and the positives of the shape and cls/box assignments: equal;
* shape (bounded IoU), cls (sigmoid CE) and box (SmoothL1) losses: relative difference below
  1e-4 (measured: 3e-7 or less);
* the location loss: mmdetection 3.3.0 gives the focal loss the location targets as class
  indices (``loc_target.long()`` into ``FocalLoss`` with one class), and its one-hot of index 1
  with one class is all zero, so it trains the centre regions as NEGATIVES and everything else
  as positives (weights unchanged). glimpse keeps the paper's sense (centre positive): its loss
  on the fixture is 20.41 against mmdetection's 4.77, and the same focal loss with the targets
  flipped (``1 - target``) reproduces mmdetection's value, which the test checks.

The backbone and neck run in eval mode on both sides (the features of the ``ga_rpn`` fixture;
mmdetection's ``norm_eval`` fixes the BatchNorms in training anyway), the head in train mode.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse.assign import anchor_targets, location_targets, shape_targets
from glimpse.heads.base import flatten_levels
from glimpse.heads.guided_anchor import GATrainConfig
from glimpse.losses import sigmoid_focal_loss

_spec = importlib.util.spec_from_file_location(
    "mmdet_parity_shared_ga_losses", Path(__file__).with_name("test_mmdet_parity.py"))
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

ALL_SAMPLES = 10**6  # make_fixtures.LOSS_ALL_SAMPLES: the samplers keep every candidate
LOSS_RTOL = 1e-4
# glimpse's loss key -> mmdetection's (per-level losses summed in the fixture)
LOSS_NAMES = {"loss_rpn_cls": "rpn_cls", "loss_rpn_box": "rpn_bbox",
              "loss_anchor_shape": "anchor_shape"}


def _glimpse_side(record: np.lib.npyio.NpzFile, losses_record: np.lib.npyio.NpzFile,
                  tmp_path: Path) -> dict:
    """glimpse's GA-RPN losses, location targets, normalisers and positives on the fixture."""
    shapes = {k: tuple(int(x) for x in s.split(",") if x)
              for k, s in zip(record["keys"].tolist(), record["shapes"].tolist())}
    path = tmp_path / "ga_rpn.pth"
    torch.save({"state_dict": parity.weights.seeded_state_dict(shapes),
                "meta": {"mmdet_version": "3.3.0"}}, path)
    train_cfg = GATrainConfig(ga_num_samples=ALL_SAMPLES, num_samples=ALL_SAMPLES)
    model = parity.zoo.build("ga_rpn_slim_fpn", checkpoint=path, image_scale=parity.SCALE,
                             backbone_kwargs={"base_width": 8}, fpn_channels=16,
                             train_cfg=train_cfg).eval()
    head = model.rpn_head.train()  # as the fixture: backbone and neck in eval mode
    image = torch.from_numpy(np.array(Image.open(parity.FIXTURES / "image.png").convert("RGB")))
    image = image.permute(2, 0, 1).float() / 255.0
    boxes = torch.from_numpy(losses_record["gt_boxes"]).float()
    target = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.long)}
    torch.manual_seed(0)
    with torch.no_grad():
        batch = model.preprocessor([image], [target])
        assert tuple(batch.tensor.shape[-2:]) == (256, 320)  # no resize, no padding
        feats = model.features(batch.tensor)
        raw = head(feats)
        anchors = head.get_anchors(raw, batch.image_sizes, batch.pad_sizes)
        losses = head.loss(raw, anchors, batch.targets, batch.image_sizes, batch.pad_sizes)
    sizes = [tuple(x.shape[-2:]) for x in raw.loc_preds]
    gt = batch.targets[0]
    loc = location_targets([gt["boxes"]], sizes, head.anchoring.strides,
                           head.anchoring.octave_base_scale, train_cfg.center_ratio,
                           train_cfg.ignore_ratio)
    flat_anchors, valid = anchors[0].flat()
    st = shape_targets(torch.cat(head.approx_generator.grid_anchors(sizes)),
                       torch.cat(head.square_generator.grid_anchors(sizes)), valid, gt,
                       head.ga_assigner, head.ga_sampler)
    at = anchor_targets(flat_anchors, valid, gt, head.assigner, head.box_coder,
                        sampler=head.sampler, class_agnostic=True,
                        image_size=batch.image_sizes[0], allowed_border=-1)
    loc_logits = flatten_levels(raw.loc_preds, 1)
    loc_weights = flatten_levels(list(loc.weights), 1)
    loc_flipped = sigmoid_focal_loss(loc_logits, 1 - flatten_levels(list(loc.targets), 1),
                                     weight=loc_weights, avg_factor=loc.avg_factor)
    return {"losses": {k: float(losses[k]) for k in LOSS_NAMES}, "loc": loc,
            "loss_anchor_loc": float(losses["loss_anchor_loc"]),
            "loss_anchor_loc_flipped": float(loc_flipped),
            "shape_num_pos": st.num_pos,
            "shape_avg_factor": max(st.num_pos, 1) + max(st.num_neg, 1),
            "cls_num_pos": at.num_pos, "cls_avg_factor": max(at.num_pos, 1) + max(at.num_neg, 1)}


def test_slim_ga_rpn_losses_match_mmdet(tmp_path):
    paths = [parity.FIXTURES / f"{name}.npz" for name in ("ga_rpn", "ga_rpn_losses")]
    for path in paths:
        if not path.is_file():
            pytest.skip(f"{path} missing: regenerate with make_fixtures.py in the oracle venv")
    record, ref = (np.load(p) for p in paths)
    out = _glimpse_side(record, ref, tmp_path)
    for level, (t, w) in enumerate(zip(out["loc"].targets, out["loc"].weights)):
        assert torch.equal(t[0, 0], torch.from_numpy(ref[f"loc_targets_{level}"])), level
        assert torch.equal(w[0, 0], torch.from_numpy(ref[f"loc_weights_{level}"])), level
    assert out["loc"].avg_factor == pytest.approx(float(ref["loc_avg_factor"]))
    for key in ("shape_num_pos", "shape_avg_factor", "cls_num_pos", "cls_avg_factor"):
        assert out[key] == int(ref[key]), (key, out[key], ref[key])
    for ours, theirs in LOSS_NAMES.items():
        expected = float(ref[f"loss_{theirs}"])
        assert out["losses"][ours] == pytest.approx(expected, rel=LOSS_RTOL), (ours, out)
    # mmdetection's location loss is glimpse's with centre and outside swapped (see above)
    loc_ref = float(ref["loss_anchor_loc"])
    assert out["loss_anchor_loc_flipped"] == pytest.approx(loc_ref, rel=LOSS_RTOL), out
    assert out["loss_anchor_loc"] > 2 * loc_ref, out
