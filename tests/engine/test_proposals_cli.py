"""Proposal files through the command line: ``glimpse test --proposals-out`` on an RPN, then
``glimpse test --proposals`` on a Fast R-CNN (four images), the option errors, and (``slow``,
about a minute) end to end at slim scale on synthetic-smoke: RPN checkpoint -> proposals of the
train and val splits -> ``glimpse train fast_rcnn_slim_fpn --proposals`` 20 iterations ->
evaluated on the val proposals."""

from __future__ import annotations

import json

import pytest
import torch

from glimpse import zoo
from glimpse.cli import main
from glimpse.data import ensure_synthetic, read_proposals

ARGS = ("--device", "cpu", "--no-progress", "--image-scale", "128,128")


def _error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def rpn_checkpoint(tmp_path_factory):
    work = tmp_path_factory.mktemp("rpn")
    assert main(["train", "rpn_slim_fpn", "--data", "synthetic-smoke", "--max-iters", "2",
                 "--batch-size", "2", "--work-dir", str(work), "--device", "cpu",
                 "--no-eval"]) == 0
    return work / "last.pt"


@pytest.fixture
def four_images(tmp_path):
    val = ensure_synthetic("synthetic-smoke", "val")
    data = json.loads(val.ann_file.read_text())
    ids = sorted(im["id"] for im in data["images"])[:4]
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    ann = tmp_path / "four.json"
    ann.write_text(json.dumps(data))
    return val.image_dir, ann, ids


def test_rpn_writes_proposals_fast_rcnn_reads_them(rpn_checkpoint, four_images, tmp_path,
                                                   capsys):
    images, ann, ids = four_images
    props = tmp_path / "p.pt"
    common = ["--image-dir", str(images), "--ann", str(ann), *ARGS]
    assert main(["test", "rpn_slim_fpn", "--checkpoint", str(rpn_checkpoint), "--out",
                 str(tmp_path / "rpn.json"), "--proposals-out", str(props), *common]) == 0
    recall = json.loads(capsys.readouterr().out)["proposal"]
    source = read_proposals(props)
    assert sorted(source.proposals) == ids
    assert (source.meta["model"], source.meta["ann"]) == ("rpn_slim_fpn", str(ann))
    rows = json.loads((tmp_path / "rpn.json").read_text())
    assert sum(len(p) for p in source.proposals.values()) == len(rows)
    assert main(["evaluate", "--ann", str(ann), "--results", str(props), "--iou-type",
                 "proposal"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(recall)

    torch.manual_seed(0)
    fast = tmp_path / "fast.pt"
    torch.save(zoo.build("fast_rcnn_slim_fpn", 6).state_dict(), fast)
    assert main(["test", "fast_rcnn_slim_fpn", "--checkpoint", str(fast), "--out",
                 str(tmp_path / "fast.json"), "--proposals", str(props), "--score-thr", "0",
                 *common]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"bbox"}
    assert {r["image_id"] for r in json.loads((tmp_path / "fast.json").read_text())} == set(ids)


@pytest.mark.slow
def test_rpn_proposals_train_fast_rcnn(rpn_checkpoint, tmp_path, capsys):
    files = {}
    for split in ("train", "val"):
        paths = ensure_synthetic("synthetic-smoke", split)
        files[split] = tmp_path / f"rpn_{split}.pt"
        assert main(["test", "rpn_slim_fpn", "--checkpoint", str(rpn_checkpoint),
                     "--image-dir", str(paths.image_dir), "--ann", str(paths.ann_file),
                     "--out", str(tmp_path / f"{split}.json"), "--proposals-out",
                     str(files[split]), *ARGS]) == 0
        recall = json.loads(capsys.readouterr().out)["proposal"]
        source = read_proposals(files[split])
        ids = {im["id"] for im in json.loads(paths.ann_file.read_text())["images"]}
        assert set(source.proposals) == ids  # every image, also one without proposals
        assert source.meta["model"] == "rpn_slim_fpn"
        assert source.meta["checkpoint"] == str(rpn_checkpoint)
        assert source.meta["image_scale"] == [128, 128]
        assert source.meta["test_proposals"]["max_per_image"] == 1000
        counts = [len(p) for p in source.proposals.values()]
        assert max(counts) > 300  # all of them, not Fast R-CNN's 300
        for p in source.proposals.values():
            assert (p[1:, 4] <= p[:-1, 4]).all()  # best first
        if split == "val":  # the file scores as the results JSON it was made from
            assert main(["evaluate", "--ann", str(paths.ann_file), "--results",
                         str(files[split]), "--iou-type", "proposal"]) == 0
            assert json.loads(capsys.readouterr().out) == pytest.approx(recall)

    work = tmp_path / "fast"
    assert main(["train", "fast_rcnn_slim_fpn", "--data", "synthetic-smoke", "--max-iters",
                 "20", "--batch-size", "2", "--work-dir", str(work), "--device", "cpu",
                 "--eval-batch-size", "8", "--proposals", str(files["train"]),
                 "--val-proposals", str(files["val"])]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"bbox"}
    losses = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(x["loss"])) for x in losses)

    # the trained Fast R-CNN through `test` on the val proposals
    val = ensure_synthetic("synthetic-smoke", "val")
    assert main(["test", "fast_rcnn_slim_fpn", "--checkpoint", str(work / "last.pt"),
                 "--image-dir", str(val.image_dir), "--ann", str(val.ann_file),
                 "--out", str(tmp_path / "fast.json"), "--proposals", str(files["val"]),
                 "--score-thr", "0", *ARGS]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"bbox"}


def test_proposal_option_errors(rpn_checkpoint, tmp_path, capsys):
    val = ensure_synthetic("synthetic-smoke", "val")
    common = ["--image-dir", str(val.image_dir), "--ann", str(val.ann_file),
              "--out", str(tmp_path / "o.json"), *ARGS]
    assert main(["test", "fast_rcnn_slim_fpn", "--checkpoint", str(rpn_checkpoint),
                 *common]) == 2
    _error(capsys, "needs --proposals")
    assert main(["test", "faster_rcnn_slim_fpn", "--checkpoint", str(rpn_checkpoint),
                 "--proposals-out", str(tmp_path / "p.pt"), *common]) == 2
    _error(capsys, "--proposals-out is for RPN models")
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "synthetic-smoke", "--work-dir",
                 str(tmp_path / "w"), "--proposals", str(tmp_path / "p.pt")]) == 2
    _error(capsys, "--proposals is for Fast R-CNN models")
    assert main(["test", "rpn_slim_fpn", "--checkpoint", str(rpn_checkpoint),
                 "--image-scale", "128", *common[:-2]]) == 2
    _error(capsys, "--image-scale")
    # a file without one of the images: the image id is named
    ids = sorted(im["id"] for im in json.loads(val.ann_file.read_text())["images"])
    from glimpse.data import write_proposals

    partial = tmp_path / "partial.pt"
    write_proposals(partial, {i: torch.zeros(0, 5) for i in ids[1:]}, {"model": "rpn_x"})
    assert main(["test", "fast_rcnn_slim_fpn", "--checkpoint", str(rpn_checkpoint),
                 "--proposals", str(partial), *common]) == 1
    _error(capsys, f"no proposals for image id {ids[0]}", "1 of the 50 images", "rpn_x")
