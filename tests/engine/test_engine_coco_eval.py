"""COCO evaluation: COCO results and COCOeval on real COCO128 (ground truth fed back scores
AP 1), hand-computed AP / AR, empty and malformed inputs."""

from __future__ import annotations

import contextlib
import functools
import io
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from torch import nn

from glimpse.engine.coco_eval import (
    coco_evaluate,
    coco_from_dict,
    coco_results,
    evaluate_detector,
    inference,
    proposal_recall,
)

# pycocotools' decode trips a NumPy 2 deprecation warning that is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


@functools.lru_cache(maxsize=1)
def _load_gt(ann_file: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ann_file)


@pytest.fixture
def coco128_gt(coco128) -> COCO:
    """COCO128's ground truth read by pycocotools itself (not by glimpse's loader)."""
    return _load_gt(str(coco128 / "annotations" / "instances_train2017.json"))


def _gt_as_detections(coco: COCO, img_ids, with_masks: bool):
    """Every non-crowd annotation as a score-1 detection, through glimpse's label mapping."""
    cat_ids = sorted(coco.getCatIds())
    label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
    cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
    results = []
    for img_id in img_ids:
        anns = [a for a in coco.imgToAnns[img_id] if not a["iscrowd"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        det = {
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([cat_to_label[a["category_id"]] for a in anns]),
        }
        if with_masks:
            info = coco.imgs[img_id]
            det["masks"] = torch.from_numpy(
                np.stack([coco.annToMask(a) for a in anns]) if anns
                else np.zeros((0, info["height"], info["width"]), np.uint8)
            )
        results += coco_results([det], [img_id], label_to_cat, with_masks=with_masks)
    return results


def test_ground_truth_scores_ap_one_on_coco128(coco128_gt):
    img_ids = sorted(coco128_gt.getImgIds())
    results = _gt_as_detections(coco128_gt, img_ids, with_masks=True)
    assert len(results) == sum(1 for a in coco128_gt.anns.values() if not a["iscrowd"])
    json.dumps(results)  # RLE counts are str: the results are JSON-serialisable
    for iou_type in ("bbox", "segm"):
        metrics = coco_evaluate(coco128_gt, results, iou_type)
        assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        for name, value in metrics.items():
            assert value == pytest.approx(1.0, abs=1e-3), (iou_type, name)


def test_img_ids_restrict_the_evaluation(coco128_gt):
    val_ids = sorted(coco128_gt.getImgIds())[-16:]
    results = _gt_as_detections(coco128_gt, val_ids, with_masks=False)
    assert coco_evaluate(coco128_gt, results, "bbox", img_ids=val_ids)["AP"] == pytest.approx(1.0)
    # over all 128 images most ground truth is missed
    assert coco_evaluate(coco128_gt, results, "bbox")["AP"] < 0.3


def test_proposal_recall_of_ground_truth_boxes_is_one(coco128_gt):
    img_ids = sorted(coco128_gt.getImgIds())
    results = _gt_as_detections(coco128_gt, img_ids, with_masks=False)
    for r in results:
        r["category_id"] = 1  # proposals are class-agnostic
    recall = proposal_recall(coco128_gt, results)
    assert set(recall) == {"AR@100", "AR@300", "AR@1000", "AR_S", "AR_M", "AR_L"}
    for name, value in recall.items():
        assert value == pytest.approx(1.0, abs=1e-3), name
    assert proposal_recall(coco128_gt, []) == dict.fromkeys(recall, 0.0)


def _tiny_gt() -> COCO:
    """Two boxes on image 1 (with box-shaped segmentations), nothing on image 2."""
    return coco_from_dict({
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 7, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "area": 1600,
             "iscrowd": 0, "segmentation": [[10, 10, 50, 10, 50, 50, 10, 50]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 60, 30, 30], "area": 900,
             "iscrowd": 0, "segmentation": [[60, 60, 90, 60, 90, 90, 60, 90]]},
        ],
    })  # fmt: skip


def test_ap_by_hand_on_a_tiny_set():
    gt = _tiny_gt()
    one_hit = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9}]
    # recall reaches 0.5 at precision 1: 51 of COCO's 101 recall points (0.00 .. 0.50)
    assert coco_evaluate(gt, one_hit, "bbox")["AP"] == pytest.approx(51 / 101)
    # a higher-scored false positive first: precision 1/2 up to recall 0.5
    with_fp = one_hit + [{"image_id": 1, "category_id": 7, "bbox": [0, 70, 20, 20], "score": 0.95}]
    assert coco_evaluate(gt, with_fp, "bbox")["AP"] == pytest.approx(0.5 * 51 / 101)
    # a box with IoU 0.62 counts at the IoU thresholds 0.50, 0.55 and 0.60 only
    shifted = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 24.8], "score": 0.9}]
    m = coco_evaluate(gt, shifted, "bbox")
    assert (m["AP50"], m["AP75"]) == (pytest.approx(51 / 101), 0.0)
    assert m["AP"] == pytest.approx(3 / 10 * 51 / 101)


def test_empty_and_bad_results():
    gt = _tiny_gt()
    assert coco_evaluate(gt, [], "bbox") == dict.fromkeys(
        ["AP", "AP50", "AP75", "APs", "APm", "APl"], 0.0
    )
    assert coco_evaluate(gt, [], "segm")["AP"] == 0.0
    with pytest.raises(ValueError, match="image ids not in the annotations"):
        coco_evaluate(gt, [{"image_id": 99, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 1}],
                      "bbox")
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(gt, [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 1}],
                      "segm")
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(gt, [], "keypoints")


def test_coco_results_converts_boxes_labels_and_masks():
    masks = torch.zeros(2, 6, 8, dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 1
    det = {
        "boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 8.0, 6.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
    }
    rows = coco_results([det], [42], {1: 18, 2: 90}, with_masks=True)
    assert [r["category_id"] for r in rows] == [18, 90]
    assert rows[0]["bbox"] == [2.0, 1.0, 3.0, 2.0] and rows[0]["image_id"] == 42
    assert rows[1]["score"] == pytest.approx(0.2)
    assert isinstance(rows[0]["segmentation"]["counts"], str)
    decoded = mask_utils.decode({**rows[0]["segmentation"],
                                 "counts": rows[0]["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded, masks[0].numpy())
    assert mask_utils.area(rows[1]["segmentation"]) == 0
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0),
             "masks": torch.zeros(0, 6, 8, dtype=torch.uint8)}
    assert coco_results([empty], [1], {1: 18}, with_masks=True) == []
    with pytest.raises(ValueError, match="label 3"):
        coco_results([{**det, "labels": torch.tensor([1, 3])}], [42], {1: 18, 2: 90})


class _Oracle(nn.Module):
    """Eval mode: returns each image's ground truth stored under its mean pixel value."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        assert not self.training
        return [self.answers[round(float(im.mean()) * 100)] for im in images]


class _TinyDataset(torch.utils.data.Dataset):
    def __init__(self):
        self.coco = _tiny_gt()
        self.ids = [1, 2]
        self.label_to_cat_id = {1: 7}

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.full((3, 100, 100), (i + 1) / 100), {"image_id": self.ids[i]}


def test_inference_and_evaluate_detector():
    answers = {
        1: {"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]]),
            "scores": torch.tensor([0.8, 0.7]), "labels": torch.tensor([1, 1])},
        2: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64)},
    }  # fmt: skip
    model = _Oracle(answers).train()
    out = inference(model, _TinyDataset(), batch_size=2, progress=False)
    assert [i for i, _ in out] == [1, 2] and model.training  # mode restored
    metrics = evaluate_detector(model, _TinyDataset(), iou_types=("bbox", "proposal"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["proposal"]["AR@100"] == pytest.approx(1.0)
    assert set(evaluate_detector(model, _TinyDataset())) == {"bbox"}
    # masks (the ground-truth boxes filled) switch on segm; an empty image may omit them
    masks = torch.zeros(2, 100, 100, dtype=torch.uint8)
    masks[0, 10:50, 10:50] = 1
    masks[1, 60:90, 60:90] = 1
    answers[1]["masks"] = masks
    metrics = evaluate_detector(model, _TinyDataset(), progress=False)
    assert set(metrics) == {"bbox", "segm"}
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    masks[1] = 0  # the second mask misses entirely
    assert evaluate_detector(model, _TinyDataset())["segm"]["AP"] == pytest.approx(51 / 101)
