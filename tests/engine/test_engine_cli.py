"""``python -m glimpse train`` / ``evaluate``: metrics as JSON, one-line errors without a
traceback for bad files and names, and a short end-to-end training run on synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glimpse.cli import main

REPO = Path(__file__).resolve().parents[2]

GT = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"},
               {"id": 2, "width": 100, "height": 100, "file_name": "b.jpg"}],
    "categories": [{"id": 7, "name": "a"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "area": 1600,
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 60, 30, 30], "area": 900,
         "iscrowd": 0},
    ],
}  # fmt: skip
HIT = {"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9}


@pytest.fixture
def files(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(GT))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([HIT]))
    return ann, res


def _one_line_error(capsys, name: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert name in err, err
    return err


def test_evaluate_prints_metrics_as_json(files, capsys):
    ann, res = files
    assert main(["evaluate", "--ann", str(ann), "--results", str(res), "--iou-type", "bbox"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["AP"] == pytest.approx(51 / 101)  # recall 0.5 at precision 1
    assert main(["evaluate", "--ann", str(ann), "--results", str(res), "--iou-type", "proposal"]) == 0
    assert json.loads(capsys.readouterr().out)["AR@100"] == pytest.approx(0.5)
    # restricted to image 2 (no ground truth, no detections)
    assert main(["evaluate", "--ann", str(ann), "--results", str(res), "--img-ids", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] == 0.0


@pytest.mark.parametrize(
    "which, content, problem",
    [
        ("ann", None, "not found"),
        ("ann", "{not json", "not valid JSON"),
        ("ann", json.dumps({"images": []}), "categories"),
        ("ann", json.dumps({**GT, "annotations": [{**GT["annotations"][0], "image_id": 5}]}),
         "image id 5"),
        ("ann", json.dumps({**GT, "annotations": [{k: v for k, v in GT["annotations"][0].items()
                                                   if k != "area"}]}), "area"),
        ("res", None, "not found"),
        ("res", "[{", "not valid JSON"),
        ("res", json.dumps({"a": 1}), "must be a JSON list"),
        ("res", json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]), "category_id"),
        ("res", json.dumps([{**HIT, "bbox": [0, 0, 1]}]), "bbox"),
        ("res", json.dumps([{**HIT, "image_id": 99}]), "image ids not in the annotations"),
    ],
)  # fmt: skip
def test_evaluate_bad_files_give_one_line(files, capsys, which, content, problem):
    ann, res = files
    path = ann if which == "ann" else res
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert main(["evaluate", "--ann", str(ann), "--results", str(res)]) == 1
    err = _one_line_error(capsys, path.name)
    assert problem in err


def test_evaluate_segm_needs_masks(files, capsys):
    ann, res = files
    assert main(["evaluate", "--ann", str(ann), "--results", str(res), "--iou-type", "segm"]) == 1
    assert "segmentation" in _one_line_error(capsys, "res.json")


def test_evaluate_command_line_has_no_traceback(files, tmp_path):
    ann, _ = files
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "glimpse", "evaluate", "--ann", str(ann),
         "--results", str(tmp_path / "missing.json")],
        capture_output=True, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"glimpse evaluate: error: {tmp_path / 'missing.json'}: " \
                                  "results file not found"


def test_train_rejects_unknown_names(tmp_path, capsys):
    assert main(["train", "no_such_model", "--data", "synthetic-smoke",
                       "--work-dir", str(tmp_path)]) == 1  # fmt: skip
    assert "known models" in _one_line_error(capsys, "no_such_model")
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "nope",
                       "--work-dir", str(tmp_path)]) == 1  # fmt: skip
    _one_line_error(capsys, "nope")
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "coco", "--data-root",
                       str(tmp_path / "absent"), "--work-dir", str(tmp_path)]) == 1  # fmt: skip
    _one_line_error(capsys, "absent")
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "synthetic-smoke", "--batch-size", "0",
                       "--work-dir", str(tmp_path)]) == 1  # fmt: skip
    _one_line_error(capsys, "batch_size")


def test_train_end_to_end_on_synthetic_smoke(tmp_path, capsys):
    work = tmp_path / "run"
    argv = ["faster_rcnn_slim_fpn", "--data", "synthetic-smoke", "--max-iters", "4",
            "--batch-size", "2", "--checkpoint-every", "2", "--work-dir", str(work),
            "--device", "cpu", "--eval-batch-size", "8"]  # fmt: skip
    assert main(["train", *argv]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= v <= 1.0 or v == -1.0 for v in metrics["bbox"].values())
    assert json.loads((work / "metrics.json").read_text()) == metrics
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["iter_2.pt", "iter_4.pt"]
    ckpt = torch.load(work / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 4 and ckpt["config"]["batch_size"] == 2
    log = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log] == [1, 2, 3, 4]
    assert all(k.startswith("loss") for k in log[0] if k.startswith("loss"))
    assert sum(k.startswith("loss_") for k in log[0]) >= 4  # rpn and roi cls/box losses
    # resuming the finished run trains no further
    assert main(["train", *argv, "--resume", "--no-eval"]) == 0
    capsys.readouterr()
    # a cut-short last.pt: resumed from the newest intact checkpoint, said on one line
    (work / "last.pt").unlink()  # a hard link to iter_4.pt: cut a copy, keep iter_4.pt intact
    (work / "last.pt").write_bytes((work / "checkpoints" / "iter_2.pt").read_bytes()[:100])
    assert main(["train", *argv, "--resume", "--no-eval"]) == 0
    warning = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(warning) == 1 and warning[0].startswith("glimpse train: warning: resuming from ")
    assert "iter_4.pt" in warning[0] and "last.pt: not a readable checkpoint" in warning[0]
    # a run whose every checkpoint is cut short cannot resume: one line naming the problem
    for path in [work / "last.pt", *(work / "checkpoints").glob("*.pt")]:
        path.write_bytes(path.read_bytes()[:100])
    assert main(["train", *argv, "--resume", "--no-eval"]) == 1
    err = _one_line_error(capsys, "no intact checkpoint to resume from")
    assert err.startswith("glimpse train: error: ")


def test_train_with_a_time_budget_records_it(tmp_path, capsys):
    # a budget far below one step: --max-iters caps the run
    work = tmp_path / "budget"
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "synthetic-smoke", "--max-minutes",
                 "0.001", "--max-iters", "3", "--batch-size", "1", "--work-dir", str(work),
                 "--device", "cpu", "--no-eval"]) == 0  # fmt: skip
    capsys.readouterr()
    assert json.loads((work / "config.json").read_text())["max_minutes"] == 0.001
    ckpt = torch.load(work / "last.pt", weights_only=False)
    assert ckpt["iteration"] == ckpt["planned_iters"] == 3
    assert main(["train", "faster_rcnn_slim_fpn", "--data", "synthetic-smoke", "--max-minutes",
                 "0", "--work-dir", str(tmp_path / "bad")]) == 1
    _one_line_error(capsys, "max_minutes")
