"""Proposal files: glimpse's format round trip with its record, the two other layouts, best-first
order, the training limit, flipping with the image, and errors naming the file and image id."""

from __future__ import annotations

import json

import pytest
import torch

from glimpse.data import CocoDetection, DatasetError, build_dataset
from glimpse.data.proposals import (
    TRAIN_PROPOSALS,
    proposals_from_results,
    read_proposals,
    with_proposals,
    write_proposals,
)
from glimpse.data.transforms import RandomHorizontalFlip

# image 7 (32x24): three proposals given worst first; image 3: none kept
PROPOSALS = {7: torch.tensor([[1.0, 2.0, 5.0, 6.0, 0.1], [0.0, 0.0, 8.0, 8.0, 0.9],
                              [4.0, 4.0, 30.0, 20.0, 0.5]]),
             3: torch.zeros(0, 5)}


def test_round_trip_keeps_the_record_and_sorts_best_first(tmp_path):
    path = write_proposals(tmp_path / "p.pt", PROPOSALS, {"model": "ga_rpn_slim_fpn", "seed": 1})
    got = read_proposals(path)
    assert got.meta == {"model": "ga_rpn_slim_fpn", "seed": 1}
    assert got.proposals[7][:, 4].tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert got.proposals[3].shape == (0, 5)
    assert got.boxes(7, limit=2).tolist() == [[0, 0, 8, 8], [4, 4, 30, 20]]
    assert got.boxes(3).shape == (0, 4)
    with pytest.raises(DatasetError, match="no proposals for image id 5.*ga_rpn_slim_fpn"):
        got.boxes(5)


def test_plain_dict_and_coco_json_layouts(tmp_path):
    torch.save({"7": PROPOSALS[7][:, :4]}, tmp_path / "plain.pt")  # no scores: file order
    plain = read_proposals(tmp_path / "plain.pt")
    assert plain.meta == {} and plain.boxes(7).tolist() == PROPOSALS[7][:, :4].tolist()
    rows = [{"image_id": 7, "bbox": [1, 2, 4, 4], "score": 0.2},
            {"image_id": 7, "bbox": [0, 0, 8, 8], "score": 0.7}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    assert read_proposals(tmp_path / "p.json").boxes(7).tolist() == [[0, 0, 8, 8], [1, 2, 5, 6]]
    assert proposals_from_results(rows, image_ids=[3])[3].shape == (0, 5)


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    (b"junk", "cannot read proposals file"),
    ({"format": "other/9", "proposals": {}}, "unknown proposals format"),
    ({7: torch.zeros(2, 3)}, r"image 7 have shape \(2, 3\)"),
    ({7: torch.tensor([[0.0, 0.0, float("nan"), 1.0]])}, "image 7 are not all finite"),
])
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(DatasetError, match=match) as err:
        read_proposals(path)
    assert str(path) in str(err.value)


def test_dataset_targets_carry_the_best_proposals_and_flip_with_the_image(tiny_coco, tmp_path):
    path = write_proposals(tmp_path / "p.pt", PROPOSALS, {})
    base = CocoDetection(tiny_coco.image_dir, tiny_coco.ann_file, with_masks=False)
    ds = with_proposals(base, path, limit=2)
    assert base.proposals is None  # the dataset given is left alone
    i = ds.ids.index(7)
    assert ds.load_target(i)["proposals"].tolist() == [[0, 0, 8, 8], [4, 4, 30, 20]]
    assert with_proposals(base, path, limit=None).load_target(i)["proposals"].shape == (3, 4)
    ds.transforms = RandomHorizontalFlip(1.0)
    _, target = ds[i]
    assert target["proposals"].tolist() == [[24, 0, 32, 8], [2, 4, 28, 20]]  # width 32


def test_missing_image_is_named(tiny_coco, tmp_path):
    path = write_proposals(tmp_path / "p.pt", {7: PROPOSALS[7]}, {"model": "rpn_slim_fpn"})
    base = CocoDetection(tiny_coco.image_dir, tiny_coco.ann_file, with_masks=False)
    with pytest.raises(DatasetError, match=r"no proposals for image id 3 \(1 of the 2 images"):
        with_proposals(base, path, limit=None)


def test_build_dataset_limits_training_to_300(tmp_path):
    val = build_dataset("synthetic-smoke", split="val", train=False)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.5]]).repeat(400, 1)
    path = write_proposals(tmp_path / "p.pt", {i: boxes for i in val.ids}, {})
    as_train = build_dataset("synthetic-smoke", split="val", train=True, proposals=path)
    as_val = build_dataset("synthetic-smoke", split="val", train=False, proposals=path)
    assert TRAIN_PROPOSALS == 300
    assert as_train.load_target(0)["proposals"].shape == (300, 4)
    assert as_val.load_target(0)["proposals"].shape == (400, 4)
    with pytest.raises(ValueError, match="only detection datasets"):
        build_dataset("synthetic-smoke-seg", proposals=path)
