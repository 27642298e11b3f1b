"""Real data nobody here shaped: a slim Faster R-CNN trains on a fixed COCO128 subset through the
engine, its losses fall, and COCOeval runs on the real annotations of the held-out split."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Subset

from glimpse import zoo
from glimpse.data import build_dataset
from glimpse.engine.coco_eval import evaluate_detector
from glimpse.engine.train import TrainConfig, fit

ITERS = 40


def test_slim_faster_rcnn_learns_on_coco128(coco128, tmp_path):
    train = build_dataset("coco128", split="train", data_root=coco128)
    val = build_dataset("coco128", split="val", data_root=coco128, train=False)
    # No ImageNet weights can be installed here, so "fine-tuning" starts from scratch; a fixed
    # four-image subset at 160 px keeps it to seconds and makes the fall of the losses certain.
    model = zoo.build("faster_rcnn_slim_fpn", num_classes=len(train.class_names),
                      image_scale=(160, 160))
    cfg = TrainConfig(max_iters=ITERS, batch_size=2, lr=0.01, warmup_iters=0,
                      checkpoint_every=0, seed=0, amp=False)
    history = fit(model, Subset(train, range(4)), cfg, tmp_path / "run").history

    assert len(history) == ITERS
    total = [h["loss"] for h in history]
    assert all(math.isfinite(v) for v in total)
    first, last = sum(total[:5]) / 5, sum(total[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert history[-1]["loss_rpn_cls"] < history[0]["loss_rpn_cls"]

    torch.manual_seed(0)
    metrics = evaluate_detector(model, val, iou_types=["bbox"], progress=False)["bbox"]
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # COCOeval gives -1 where a split has no object of that size; AP itself must be computed.
    assert 0.0 <= metrics["AP"] <= 1.0
    assert len(val.ids) == 16 and not set(val.ids) & set(train.ids)
