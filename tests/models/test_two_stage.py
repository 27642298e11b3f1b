"""Two-stage detectors end to end: preprocessing, eval output contract in original pixels,
empty ground truth, bad input, and training losses pinned under a fixed seed
(``GLIMPSE_ACCEPT=1`` rewrites ``tests/golden/losses_two_stage.json`` on purpose)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from glimpse.backbones import resnet_slim
from glimpse.detectors import two_stage
from glimpse.preprocess import DetectionPreprocessor
from glimpse.heads.roi_box import RCNNTestConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "losses_two_stage.json"
DETECTORS = ["faster_rcnn", "mask_rcnn", "fast_rcnn", "rpn", "cascade_rcnn", "cascade_mask_rcnn"]
MASKED = {"mask_rcnn", "cascade_mask_rcnn"}


def _build(name: str, num_classes: int = 3):
    builder = getattr(two_stage, name)
    kwargs = {"fpn_channels": 16, "image_scale": (64, 64)}
    if name != "rpn":
        kwargs["fc_channels"] = 32
    return builder(resnet_slim(base_width=8), num_classes, **kwargs)


def _batch(empty_second: bool = False):
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 100, 150, generator=g), torch.rand(3, 90, 80, generator=g)]
    targets = []
    for k, image in enumerate(images):
        h, w = image.shape[1:]
        boxes = torch.tensor([[10.0, 12.0, 70.0, 60.0], [40.0, 30.0, 78.0, 85.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        proposals = torch.tensor([[8.0, 10.0, 72.0, 63.0], [0.0, 0.0, 40.0, 40.0],
                                  [35.0, 28.0, 79.0, 80.0], [50.0, 5.0, 75.0, 30.0]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks,
                        "proposals": proposals, "image_id": k})
    if empty_second:
        h, w = images[1].shape[1:]
        targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                      "masks": torch.zeros(0, h, w, dtype=torch.uint8),
                      "proposals": targets[1]["proposals"], "image_id": 1}
    return images, targets


# ---------------------------------------------------------------------------- preprocessor
def test_preprocessor_resize_pad_and_inverse():
    pre = DetectionPreprocessor(image_scale=(64, 64), size_divisor=32)
    images = [torch.rand(3, 100, 150), torch.rand(3, 50, 40)]
    targets = [{"boxes": torch.tensor([[15.0, 10.0, 150.0, 100.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    batch = pre(images, targets)
    # long edge 150 -> 64 (factor 64/150): 100 -> 43; 50x40 -> 64x51 (factor 1.28)
    assert batch.image_sizes == [(43, 64), (64, 51)]
    assert batch.pad_sizes == [(64, 64), (64, 64)] and batch.tensor.shape == (2, 3, 64, 64)
    assert batch.original_sizes == [(100, 150), (50, 40)]
    torch.testing.assert_close(batch.targets[0]["boxes"],
                               torch.tensor([[15 * 64 / 150, 10 * 43 / 100, 64.0, 43.0]]))
    # padding is zero in the normalised tensor
    assert batch.tensor[0, :, 43:].abs().sum() == 0
    dets = [{"boxes": batch.targets[0]["boxes"], "scores": torch.ones(1),
             "labels": torch.ones(1, dtype=torch.long), "mask_probs": torch.ones(1, 28, 28)},
            {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
             "labels": torch.zeros(0, dtype=torch.long), "mask_probs": torch.zeros(0, 28, 28)}]
    out = pre.postprocess(dets, batch)
    torch.testing.assert_close(out[0]["boxes"], targets[0]["boxes"])
    # a box larger than 28 px loses its corner pixels to bilinear zero padding (mmdet too)
    masks = out[0]["masks"]
    assert masks.shape == (1, 100, 150) and masks[0, 11:99, 16:149].all()
    assert masks[0, :10].sum() == 0 and masks[0, :, :15].sum() == 0
    assert out[1]["masks"].shape == (0, 50, 40)


def test_preprocessor_clear_errors():
    pre = DetectionPreprocessor(image_scale=(64, 64))
    with pytest.raises(ValueError, match="image 1"):
        pre([torch.rand(3, 10, 10), torch.rand(10, 10)])
    with pytest.raises(ValueError, match="float"):
        pre([torch.zeros(3, 10, 10, dtype=torch.uint8)])
    bad = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0]),
           "image_id": 42}
    with pytest.raises(ValueError, match="image_id 42"):
        pre([torch.rand(3, 10, 10)], [bad])
    with pytest.raises(ValueError, match="empty list"):
        pre([])


# ------------------------------------------------------------------------------- detectors
@pytest.mark.parametrize("name", DETECTORS)
def test_eval_output_contract_original_pixels(name):
    torch.manual_seed(0)
    model = _build(name).eval()
    if model.roi_head is not None:
        model.roi_head.test_cfg = RCNNTestConfig(score_thr=0.0)  # random weights score low
    images, targets = _batch()
    kwargs = {"proposals": [t["proposals"] for t in targets]} if name == "fast_rcnn" else {}
    with torch.no_grad():
        dets = model(images, **kwargs)
    assert len(dets) == 2
    for det, image in zip(dets, images):
        h, w = image.shape[1:]
        n = len(det["boxes"])
        assert n > 0 and det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        assert det["boxes"].min() >= 0
        assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h
        assert torch.equal(det["scores"], det["scores"].sort(descending=True).values)
        assert det["labels"].dtype == torch.long
        if name == "rpn":
            assert (det["labels"] == 1).all()
        else:
            assert det["labels"].min() >= 1 and det["labels"].max() <= 3
            assert n <= 100
        if name in MASKED:
            assert det["masks"].shape == (n, h, w) and det["masks"].dtype == torch.uint8
        else:
            assert "masks" not in det


@pytest.mark.parametrize("name", DETECTORS)
def test_empty_targets_zero_regression_losses(name):
    torch.manual_seed(0)
    model = _build(name).train()
    images, targets = _batch(empty_second=True)
    targets[0] = targets[1] | {"proposals": targets[0]["proposals"]}
    targets[0]["masks"] = torch.zeros(0, 100, 150, dtype=torch.uint8)
    losses = model(images, targets)
    for key, value in losses.items():
        if not key.startswith("loss_"):
            continue
        if "cls" in key:
            assert value > 0, key
        else:
            assert value.item() == 0.0, key
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()


def test_fast_rcnn_and_train_mode_errors():
    model = _build("fast_rcnn").eval()
    images, targets = _batch()
    with pytest.raises(ValueError, match="proposals"):
        model(images)
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model(images)
    # proposals files carry a score column: it is dropped, not scaled
    scored = [t | {"proposals": torch.cat((t["proposals"], torch.rand(4, 1)), 1)}
              for t in targets]
    losses = model(images, scored)
    assert torch.isfinite(losses["loss_cls"]) and torch.isfinite(losses["loss_box"])
    for t in targets:
        del t["proposals"]
    with pytest.raises(ValueError, match="proposals"):
        model(images, targets)


def _losses(name: str) -> dict[str, float]:
    torch.manual_seed(1234)
    model = _build(name).train()
    images, targets = _batch(empty_second=False)
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()  # the graph must be complete
    return {k: round(float(v.detach()), 6) for k, v in sorted(losses.items())}


def test_training_losses_golden():
    got = {name: _losses(name) for name in DETECTORS}
    if os.environ.get("GLIMPSE_ACCEPT") == "1":
        tmp = GOLDEN.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, GOLDEN)
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; run with GLIMPSE_ACCEPT=1 to write it")
    expected = json.loads(GOLDEN.read_text())
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].keys() == expected[name].keys(), name
        for key in expected[name]:
            assert got[name][key] == pytest.approx(expected[name][key], rel=1e-4, abs=1e-5), \
                f"{name}.{key}"
    # sanity: something was learnt against, every detector has positive classification loss
    assert all(v > 0 for losses in got.values() for k, v in losses.items() if "cls" in k)
