"""``python -m glimpse test``: a glimpse or an mmdetection checkpoint over a COCO-format folder
(three COCO128 images) gives the same results file with COCO category ids, masks for mask
models, proposal recall for the RPN, and one-line errors for bad checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glimpse import zoo
from glimpse.checkpoints import glimpse_to_mmdet
from glimpse.cli import main

ARGS = ("--device", "cpu", "--score-thr", "0", "--no-progress")


@pytest.fixture
def three_images(coco128: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    ids = sorted(im["id"] for im in data["images"])[:3]
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return coco128 / "train2017", ann


def _checkpoints(name: str, tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(1)
    model = zoo.build(name, 80)
    ours, theirs = tmp_path / "glimpse.pth", tmp_path / "mmdet.pth"
    torch.save(model.state_dict(), ours)
    torch.save({"state_dict": glimpse_to_mmdet(model.state_dict(), model),
                "meta": {"mmdet_version": "3.3.0"}}, theirs)
    return ours, theirs


def _test(name, ckpt, images, ann, out, *extra):
    return main(["test", name, "--checkpoint", str(ckpt), "--image-dir", str(images),
                 "--ann", str(ann), "--out", str(out), *ARGS, *extra])


@pytest.mark.parametrize("name", ["mask_rcnn_slim_fpn", "retinanet_slim_fpn"])
def test_glimpse_and_mmdet_checkpoints_give_the_same_results(name, three_images, tmp_path,
                                                             capsys):
    images, ann = three_images
    ours, theirs = _checkpoints(name, tmp_path)
    assert _test(name, ours, images, ann, tmp_path / "a.json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert _test(name, theirs, images, ann, tmp_path / "b.json") == 0
    assert json.loads(capsys.readouterr().out) == metrics
    a = json.loads((tmp_path / "a.json").read_text())
    assert a == json.loads((tmp_path / "b.json").read_text())
    assert len(a) == 3 * 100  # score threshold 0: a full top-100 per image
    cat_ids = {c["id"] for c in json.loads(ann.read_text())["categories"]}
    assert {r["category_id"] for r in a} <= cat_ids and max(cat_ids) == 90
    if name.startswith("mask"):
        assert set(metrics) == {"bbox", "segm"} and all("segmentation" in r for r in a)
    else:
        assert set(metrics) == {"bbox"}


def test_rpn_reports_proposal_recall(three_images, tmp_path, capsys):
    images, ann = three_images
    ours, _ = _checkpoints("rpn_slim_fpn", tmp_path)
    assert _test("rpn_slim_fpn", ours, images, ann, tmp_path / "p.json") == 0
    assert set(json.loads(capsys.readouterr().out)["proposal"]) >= {"AR@100", "AR@1000"}


def test_bad_checkpoints_end_with_one_line(three_images, tmp_path, capsys):
    images, ann = three_images
    _, theirs = _checkpoints("faster_rcnn_slim_fpn", tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    for ckpt, model, expected in (
            (tmp_path / "none.pth", "faster_rcnn_slim_fpn", "checkpoint not found"),
            (junk, "faster_rcnn_slim_fpn", "not a readable checkpoint"),
            (theirs, "cascade_rcnn_slim_fpn", "unexpected tensor roi_head.bbox_head.fc_cls"),
            (theirs, "faster_rcnn_r50_fpn", "has shape")):
        assert _test(model, ckpt, images, ann, tmp_path / "x.json") == 1
        err = capsys.readouterr().err
        assert err.startswith("glimpse test: error: ") and expected in err, err
        assert err.count("\n") == 1
    assert _test("nope_fpn", theirs, images, ann, tmp_path / "x.json") == 2
    assert "unknown detector 'nope_fpn'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_give_the_same_file(three_images, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    images, ann = three_images
    ours, _ = _checkpoints("faster_rcnn_slim_fpn", tmp_path)
    assert _test("faster_rcnn_slim_fpn", ours, images, ann, tmp_path / "one.json") == 0
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "glimpse", "test", "faster_rcnn_slim_fpn",
         "--checkpoint", str(ours), "--image-dir", str(images), "--ann", str(ann),
         "--out", str(tmp_path / "two.json"), *ARGS],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
