"""The experiment runner: paired comparison, resume by manifest, datasets left untouched."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from glimpse import zoo
from glimpse.engine.train import TrainConfig
from glimpse.papers import runner
from glimpse.papers.runner import Variant, compare_paired, run_variants

# ------------------------------------------------------------------------ paired comparison


def _runs(values: dict[str, dict[int, dict[str, float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, **m}
                         for v, by_seed in values.items() for s, m in by_seed.items()])


def test_compare_paired_hand_computed():
    # per seed (A, B): x: (10,12) (20,20) (30,35) -> d = 2, 0 (a tie), 5
    #                  y: d = 3, 4, 5;   z: d = 1, 1, 1;   w: every seed ties
    runs = _runs({
        "A": {0: {"x": 10, "y": 1, "z": 0, "w": 7}, 1: {"x": 20, "y": 1, "z": 5, "w": 7},
              2: {"x": 30, "y": 1, "z": 9, "w": 7}},
        "B": {0: {"x": 12, "y": 4, "z": 1, "w": 7}, 1: {"x": 20, "y": 5, "z": 6, "w": 7},
              2: {"x": 35, "y": 6, "z": 10, "w": 7}},
    })
    t2 = 4.302652729911275  # t_{0.975, 2 dof}
    out = compare_paired(runs, "A", "B", ["x", "y", "z", "w"]).set_index("metric")
    x = out.loc["x"]
    assert x["seeds"] == 3
    assert x["baseline_mean"] == pytest.approx(20) and x["baseline_std"] == pytest.approx(10)
    assert x["variant_mean"] == pytest.approx(67 / 3)
    assert x["diff_mean"] == pytest.approx(7 / 3)
    assert x["diff_std"] == pytest.approx(math.sqrt(((2 - 7 / 3) ** 2 + (7 / 3) ** 2
                                                     + (5 - 7 / 3) ** 2) / 2))
    # the tie counts for neither side; half-width 4.30 * 2.517 / sqrt(3) = 6.25 > 2.33
    assert (x["agree"], x["disagree"], x["verdict"]) == (2, 0, "inconclusive")
    y = out.loc["y"]  # mean 4, sd 1: 4 - 4.30 / sqrt(3) = 1.52 > 0
    assert y["diff_mean"] == pytest.approx(4) and y["diff_std"] == pytest.approx(1)
    assert 4 - t2 / math.sqrt(3) > 0 and y["verdict"] == "holds" and y["agree"] == 3
    assert out.loc["z", "diff_std"] == 0 and out.loc["z", "verdict"] == "holds"
    w = out.loc["w"]
    assert (w["diff_mean"], w["agree"], w["disagree"], w["verdict"]) == (0, 0, 0, "does not hold")

    # the paper claims B is lower: y's interval lies entirely on the other side
    lower = compare_paired(runs, "A", "B", ["x", "y"], sign=-1).set_index("metric")
    assert lower.loc["y", "verdict"] == "does not hold"
    assert (lower.loc["y", "agree"], lower.loc["y", "disagree"]) == (0, 3)
    assert lower.loc["x", "verdict"] == "inconclusive"
    per_metric = compare_paired(runs, "A", "B", ["x", "y"], sign={"x": 1, "y": -1})
    assert list(per_metric["sign"]) == [1, -1]


def test_compare_paired_single_seed_missing_seeds_and_nan():
    runs = _runs({"A": {0: {"m": 1.0}, 1: {"m": 2.0}, 2: {"m": 3.0}},
                  "B": {0: {"m": 5.0}, 1: {"m": float("nan")}, 5: {"m": 9.0}},
                  "C": {0: {"m": 9.0}}})
    one = compare_paired(runs, "A", "C", ["m"]).iloc[0]
    assert one["seeds"] == 1 and one["diff_mean"] == 8 and math.isnan(one["diff_std"])
    assert one["agree"] == 1 and one["verdict"] == "inconclusive"  # one seed: never decided
    # seed 1 is NaN for B and seeds 2 / 5 have no partner: only seed 0 is paired
    paired = compare_paired(runs, "A", "B", ["m"]).iloc[0]
    assert paired["seeds"] == 1 and paired["diff_mean"] == 4
    with pytest.raises(ValueError, match="'D'"):
        compare_paired(runs, "A", "D", ["m"])
    with pytest.raises(ValueError, match="metric"):
        compare_paired(runs, "A", "B", ["nope"])
    with pytest.raises(ValueError, match="sign"):
        compare_paired(runs, "A", "B", ["m"], sign=2)


# ------------------------------------------------------------------------ runs and resume


class _Toy(nn.Module):
    """One weight learning the mean image intensity (model contract: dict of losses)."""

    forwards = 0  # training forwards of every instance

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(()))
        self.scale = scale

    def forward(self, images, targets=None):
        mean = torch.stack([im.mean() for im in images])
        if self.training:
            type(self).forwards += 1
            return {"loss_l2": ((self.scale * self.w - mean) ** 2).mean()}
        return [{"score": self.w.detach()} for _ in images]


def toy_small():
    return _Toy(1.0)


def toy_large():
    return _Toy(2.0)


class _Images(torch.utils.data.Dataset):
    class_names = ["thing"]

    def __init__(self, n: int = 6) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = [torch.rand(3, 4, 4, generator=g) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i], {"labels": torch.tensor(0)}


class _Evaluator:
    """Counts its calls; metric: the learnt weight and its distance to the data mean."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, dataset, device):
        self.calls += 1
        target = torch.stack([dataset[i][0].mean() for i in range(len(dataset))]).mean()
        w = float(model.w.detach())
        return {"w": w, "err": abs(model.scale * w - float(target))}


def _variants(iters: int = 3) -> list[Variant]:
    cfg = TrainConfig(max_iters=iters, batch_size=2, lr=0.1, warmup_iters=0,
                      checkpoint_every=0, keep_checkpoints=1, grad_clip=None, amp=False)
    return [Variant("small", toy_small, cfg), Variant("large scale", toy_large, cfg)]


class _Killed(RuntimeError):
    pass


def test_killed_multi_seed_run_resumes_without_retraining(tmp_path):
    data = _Images()
    ev = _Evaluator()
    done = []

    def die_after_two(run):
        done.append((run.record.variant, run.record.seed))
        if len(done) == 2:
            raise _Killed

    with pytest.raises(_Killed):
        run_variants(_variants(), data, data, [0, 1], work_root=tmp_path, evaluate=ev,
                     on_run=die_after_two)
    assert done == [("small", 0), ("large scale", 0)] and ev.calls == 2
    manifest = runner.run_dir(tmp_path, "large scale", 0) / runner.MANIFEST
    assert manifest.is_file() and manifest.parent.name == "seed0"
    stamp = manifest.stat().st_mtime_ns

    forwards = _Toy.forwards
    runs = run_variants(_variants(), data, data, [0, 1], work_root=tmp_path, evaluate=ev)
    assert ev.calls == 4  # only the two seed-1 runs were evaluated (and trained)
    assert _Toy.forwards - forwards == 2 * 3  # 2 runs x 3 iterations
    assert manifest.stat().st_mtime_ns == stamp
    assert list(runs["variant"]) == ["small", "large scale"] * 2
    assert list(runs["seed"]) == [0, 0, 1, 1]
    assert list(runs["reused"]) == [True, True, False, False]
    assert (runs["iterations"] == 3).all() and {"w", "err"} <= set(runs.columns)

    # reused records are what a fresh, uninterrupted run measures (seeding is repeatable)
    fresh = run_variants(_variants(), data, data, [0, 1], work_root=None, evaluate=_Evaluator())
    assert fresh["w"].tolist() == runs["w"].tolist()
    assert fresh["checkpoint"].isna().all() and not fresh["reused"].any()
    # seeds differ: different initial weights
    assert runs["w"].iloc[0] != runs["w"].iloc[2]
    # the comparison table is made from this frame
    table = compare_paired(runs, "large scale", "small", ["err"])
    assert table.iloc[0]["seeds"] == 2


def test_corrupt_or_stale_manifest_is_retrained(tmp_path):
    data = _Images()
    ev = _Evaluator()
    first = run_variants(_variants(), data, data, [0], work_root=tmp_path, evaluate=ev)
    assert ev.calls == 2
    small = runner.run_dir(tmp_path, "small", 0)
    text = (small / runner.MANIFEST).read_text()
    (small / runner.MANIFEST).write_text(text[: len(text) // 2])  # cut by a kill
    assert runner.read_manifest(small) is None
    again = run_variants(_variants(), data, data, [0], work_root=tmp_path, evaluate=ev)
    assert ev.calls == 3 and list(again["reused"]) == [False, True]
    assert again["w"].tolist() == first["w"].tolist()
    assert runner.read_manifest(small) is not None  # rewritten whole

    # a changed schedule is another run: both retrained, from scratch
    longer = run_variants(_variants(iters=4), data, data, [0], work_root=tmp_path, evaluate=ev)
    assert ev.calls == 5 and not longer["reused"].any()
    assert (longer["iterations"] == 4).all()


def test_run_variants_checks_names_and_empty():
    cfg = TrainConfig(max_iters=1)
    with pytest.raises(ValueError, match="unique"):
        run_variants([Variant("a", toy_small, cfg), Variant("a", toy_large, cfg)], [], [], [0])
    empty = run_variants([], [], [], [0])
    assert len(empty) == 0 and "variant" in empty.columns
    with pytest.raises(ValueError, match="model_kwargs"):
        Variant("a", toy_small, cfg, {"image_scale": (64, 64)})
    with pytest.raises(ValueError, match="class_names"):
        Variant("b", "faster_rcnn_slim_fpn", cfg).build(num_classes=0)


def test_zoo_train_config_takes_the_zoos_base_lr():
    retina = runner.zoo_train_config("retinanet_slim_fpn", batch_size=2)
    faster = runner.zoo_train_config("faster_rcnn_slim_fpn", batch_size=2)
    assert retina.base_lr == zoo.base_lr("retinanet_slim_fpn") == 0.01
    assert faster.base_lr == 0.02
    assert retina.scaled_lr(world_size=8) == pytest.approx(0.01)


def test_zoo_detector_on_first_images_leaves_the_dataset_alone(tmp_path):
    from glimpse.data import build_dataset

    train = build_dataset("synthetic-smoke", split="train", train=True)
    val = build_dataset("synthetic-smoke", split="val", train=False)
    ids = list(val.ids)
    cfg = runner.zoo_train_config("faster_rcnn_slim_fpn", max_iters=2, batch_size=2,
                                  warmup_iters=0, checkpoint_every=0, amp=False)
    variant = Variant("faster", "faster_rcnn_slim_fpn", cfg, {"image_scale": (128, 128)})
    run = runner.train_and_evaluate(variant, train, val, seed=0, work_dir=tmp_path / "run",
                                    evaluate=runner.coco_metrics(batch_size=2),
                                    max_eval_images=3)
    assert list(val.ids) == ids  # never mutated
    assert {"box_AP", "box_AP50", "box_APs"} <= set(run.record.metrics)
    assert run.record.model == "faster_rcnn_slim_fpn" and run.record.iterations == 2
    assert run.record.checkpoint and not run.reused and not run.model.training
    sub = runner.first_images(val, 3)
    assert sub.ids == ids[:3] and sub.coco is val.coco and len(sub) == 3
    assert runner.first_images(val, None) is val and runner.first_images(val, 10**6) is val
    again = runner.train_and_evaluate(variant, train, val, seed=0, work_dir=tmp_path / "run",
                                      evaluate=runner.coco_metrics(batch_size=2),
                                      max_eval_images=3)
    assert again.reused
    assert dataclasses.replace(again.record, metrics={}) == dataclasses.replace(run.record,
                                                                                metrics={})
    pd.testing.assert_series_equal(pd.Series(again.record.metrics), pd.Series(run.record.metrics))
    # the reloaded model is the trained one
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_finished_run_reads_only_a_finished_run_of_the_same_spec(tmp_path):
    data = _Images()
    ev = _Evaluator()
    small = _variants()[0]
    work = runner.run_dir(tmp_path, small.name, 0)
    assert runner.finished_run(small, data, data, seed=0, work_dir=work, evaluate=ev) is None
    run_variants([small], data, data, [0], work_root=tmp_path, evaluate=ev)
    record = runner.finished_run(small, data, data, seed=0, work_dir=work, evaluate=ev)
    assert record is not None and record.seed == 0 and record.iterations == 3
    assert ev.calls == 1  # finished_run evaluates (and trains) nothing
    longer = _variants(iters=4)[0]
    assert runner.finished_run(longer, data, data, seed=0, work_dir=work, evaluate=ev) is None
    assert runner.finished_run(small, data, data, seed=1, work_dir=work, evaluate=ev) is None
    moved = tmp_path / "elsewhere" / "run"  # a run dir moved (or copied) is still finished
    moved.parent.mkdir()
    work.rename(moved)
    record = runner.finished_run(small, data, data, seed=0, work_dir=moved, evaluate=ev)
    assert record is not None and record.work_dir == str(moved)
    assert Path(record.checkpoint).is_relative_to(moved) and Path(record.checkpoint).is_file()
    moved.rename(work)
    (work / "last.pt").unlink()  # a run whose checkpoint has gone is not finished
    for p in (work / "checkpoints").glob("*.pt"):
        p.unlink()
    assert runner.finished_run(small, data, data, seed=0, work_dir=work, evaluate=ev) is None
