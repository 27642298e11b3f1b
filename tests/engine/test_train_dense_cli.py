"""``python -m glimpse train`` with segmentors and inpainters: the dense loops run, write their
checkpoint and metrics, and wrong combinations of options fail with one line."""

from __future__ import annotations

import json
import re

import pytest

from glimpse.cli import main
from glimpse.engine.train import load_checkpoint


def test_train_segmentor_and_inpainters(tmp_path, capsys):
    work = tmp_path / "seg"
    assert main(["train", "upernet_slim_carafe", "--data", "synthetic-smoke-seg",
                 "--max-iters", "2", "--batch-size", "2", "--recipe", "mmseg_512x512_80k",
                 "--work-dir", str(work), "--device", "cpu", "--eval-batch-size", "8"]) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert set(metrics) == {"mIoU", "aAcc"} and 0 <= metrics["mIoU"] <= 1
    config = json.loads((work / "config.json").read_text())
    # the recipe's schedule, with the options given on the command line over it
    assert (config["lr"], config["min_lr"], config["max_iters"]) == (0.01, 1e-4, 2)
    assert load_checkpoint(work / "last.pt")["iteration"] == 2

    for model, phase_key in (("global_local_slim", "phase"), ("pconv_slim_carafe", "stage")):
        work = tmp_path / model
        assert main(["train", model, "--data", "inpaint-synthetic-smoke", "--max-iters", "2",
                     "--batch-size", "2", "--work-dir", str(work), "--device", "cpu",
                     "--eval-batch-size", "16"]) == 0
        metrics = json.loads((work / "metrics.json").read_text())
        assert set(metrics) == {"l1_hole", "l1_whole", "psnr_hole", "psnr_whole", "ssim"}
        log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
        assert len(log) == 2 and phase_key in log[0]
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["pconv_slim", "--data", "inpaint-synthetic-smoke", "--warmup-iters", "3"],
     "--warmup-iters: not used by 'pconv_slim'"),
    (["upernet_slim", "--data", "inpaint-synthetic-smoke"],
     "'inpaint-synthetic-smoke' does not fit model 'upernet_slim'; use one of .*ade20k"),
    (["pconv_slim", "--data", "synthetic-smoke-seg"],
     "'synthetic-smoke-seg' does not fit model 'pconv_slim'; use one of .*places365"),
    (["pconv_slim", "--data", "inpaint-synthetic-smoke", "--recipe", "csail"],
     "--recipe applies to segmentors only"),
    (["faster_rcnn_slim_fpn", "--data", "synthetic-smoke", "--recipe", "csail"],
     "--recipe applies to segmentors only"),
    (["upernet_nope", "--data", "synthetic-smoke-seg"], "unknown model 'upernet_nope'.*upernet_slim"),
])
def test_train_dense_errors(tmp_path, capsys, argv, message):
    status = main(["train", *argv, "--work-dir", str(tmp_path / "w"), "--max-iters", "1"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "w" / "last.pt").exists()
