"""bench detectors: the slim training-step rows time torchvision models of the same sizes."""

from __future__ import annotations

import pytest
import torch

from glimpse import cli, zoo
from glimpse.bench import detectors as bench


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cli_lists_the_bench_models():
    assert cli._BENCH_SLIM_MODELS == bench.SLIM_TRAIN_MODELS


@pytest.mark.parametrize("name", ["faster_rcnn_slim_fpn", "retinanet_slim_fpn",
                                  "mask_rcnn_slim_fpn"])
def test_torchvision_counterpart_has_the_same_sizes(name):
    """Same backbone, FPN, RPN, box head and RetinaNet towers: equal parameter counts, but for
    torchvision's background outputs (a box regressor on the 256-wide FC, a 64-channel mask)."""
    ours = zoo.build(name, bench._SLIM_CLASSES)
    theirs = bench._torchvision_slim(name)
    extra = 0
    if not name.startswith("retinanet"):
        extra += 4 * (256 + 1)
    if name.startswith("mask"):
        extra += 64 + 1
    assert _params(theirs) == _params(ours) + extra
    if not name.startswith("retinanet"):
        assert theirs.roi_heads.fg_bg_sampler.batch_size_per_image == 128
        assert theirs.rpn._post_nms_top_n["training"] == 300
        assert theirs.rpn._pre_nms_top_n["training"] == 1000


def test_slim_row_runs():
    table = bench.run(repeats=1, warmup=0, models=(), train=False,
                      slim=("faster_rcnn_slim_fpn",), slim_batch=1)
    row = table.iloc[0]
    assert row["model"] == "faster_rcnn_slim_fpn (batch 1)"
    assert row["mode"] == "train step" and row["input"] == "128x128"
    assert row["ratio"] == pytest.approx(row["glimpse_s"] / row["torchvision_s"])


def test_unknown_slim_model():
    with pytest.raises(ValueError, match="slim: unknown models"):
        bench.run(slim=("faster_rcnn_r50_fpn",))
