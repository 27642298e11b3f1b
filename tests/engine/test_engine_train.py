"""fit(): schedule, sampler, checkpoints, exact resume (also after SIGKILL), non-finite losses,
gradient accumulation, and DDP (2 gloo processes under torchrun) against one process."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glimpse.engine.distributed import ShardedBatchSampler
from glimpse.engine.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    fit,
    load_checkpoint,
    lr_factor,
)

TOYS = Path(__file__).with_name("engine_toys.py")
REPO = Path(__file__).resolve().parents[2]

# pytest runs with --import-mode=importlib: make the helper module next to this file importable
sys.path.insert(0, str(TOYS.parent))
from engine_toys import ToyDataset, ToyNet, toy_collate, toy_config  # noqa: E402


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- config and schedule


def test_config_defaults_are_mmdet_1x():
    cfg = TrainConfig(max_iters=12)
    assert (cfg.base_lr, cfg.base_batch_size) == (0.02, 16)
    assert (cfg.momentum, cfg.weight_decay) == (0.9, 1e-4)
    assert (cfg.warmup_iters, cfg.warmup_ratio, cfg.grad_clip) == (500, 1 / 3, 35.0)
    assert cfg.milestones() == (8, 11)
    assert TrainConfig(max_iters=90000).milestones() == (60000, 82500)
    # linear scaling: 0.02 per 16 images
    assert TrainConfig(batch_size=2).scaled_lr(world_size=8) == pytest.approx(0.02)
    assert TrainConfig(batch_size=2, accumulate=2).scaled_lr(world_size=1) == pytest.approx(0.005)
    assert TrainConfig(batch_size=2, lr=0.1).scaled_lr(world_size=8) == 0.1


def test_config_rejects_bad_values():
    with pytest.raises(TypeError):
        TrainConfig(max_iter=10)  # typo: unknown key
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr_steps"):
        TrainConfig(lr_steps=(10, 5))
    assert TrainConfig(lr_steps=[3, 4]).lr_steps == (3, 4)


def test_lr_factor_matches_mmcv_formula():
    kw = dict(milestones=(800, 1100), gamma=0.1, warmup_iters=500, warmup_ratio=1 / 3)
    # mmcv: lr * (1 - (1 - it / warmup_iters) * (1 - ratio))
    assert lr_factor(0, **kw) == pytest.approx(1 / 3)
    assert lr_factor(250, **kw) == pytest.approx(1 - 0.5 * (2 / 3))
    assert lr_factor(499, **kw) == pytest.approx(1 - (1 / 500) * (2 / 3))
    assert lr_factor(500, **kw) == 1.0
    assert lr_factor(799, **kw) == 1.0
    assert lr_factor(800, **kw) == pytest.approx(0.1)
    assert lr_factor(1100, **kw) == pytest.approx(0.01)


# ---------------------------------------------------------------- sampler


def test_sharded_sampler_union_of_ranks_is_the_single_process_batch():
    single = iter(ShardedBatchSampler(12, 4, seed=3))
    ranks = [iter(ShardedBatchSampler(12, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(9):  # three epochs
        assert sorted(next(single)) == sorted(next(ranks[0]) + next(ranks[1]))


def test_sharded_sampler_epochs_and_resume():
    stream = iter(ShardedBatchSampler(10, 3, seed=1))
    batches = [next(stream) for _ in range(10)]
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new permutation per epoch
    resumed = iter(ShardedBatchSampler(10, 3, seed=1, start_batch=4))
    assert [next(resumed) for _ in range(6)] == batches[4:]
    with pytest.raises(ValueError, match="empty"):
        ShardedBatchSampler(0, 2)


# ---------------------------------------------------------------- fit


def test_fit_logs_every_loss_and_follows_the_schedule(tmp_path):
    cfg = toy_config(max_iters=12, warmup_iters=4, lr_steps=(8, 10), checkpoint_every=0)
    threads = torch.get_num_threads()
    result = fit(ToyNet(), ToyDataset(), cfg, tmp_path, collate_fn=toy_collate)
    assert torch.get_num_threads() == threads
    assert [h["iter"] for h in result.history] == list(range(1, 13))
    for h in result.history:
        assert {"loss", "loss_mse", "loss_l1", "stats_pred_mean", "lr", "grad_norm"} <= h.keys()
        assert h["loss"] == pytest.approx(h["loss_mse"] + h["loss_l1"], rel=1e-5)
        factor = lr_factor(h["iter"] - 1, milestones=(8, 10), warmup_iters=4)
        assert h["lr"] == pytest.approx(0.05 * factor)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == result.history
    assert json.loads((tmp_path / "config.json").read_text())["max_iters"] == 12
    # checkpoint_every=0: only the final one
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_12.pt"]
    assert result.last_checkpoint == tmp_path / "checkpoints" / "iter_12.pt"


def test_one_step_equals_a_hand_written_sgd_step(tmp_path):
    """Clip to L2 norm, then SGD with weight decay: checked against plain autograd."""
    cfg = toy_config(
        max_iters=1, warmup_iters=0, lr_steps=(), grad_clip=0.05, lr=0.1, weight_decay=0.01
    )
    dataset = ToyDataset(augment=False)
    model = ToyNet(dropout=0.0)
    reference = copy.deepcopy(model)
    fit(model, dataset, cfg, tmp_path, collate_fn=toy_collate)

    batch = toy_collate([dataset[i] for i in next(iter(ShardedBatchSampler(24, 4, seed=0)))])
    losses = reference(*batch)
    (losses["loss_mse"] + losses["loss_l1"]).backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert norm > 0.05  # the clip is active
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * (p.grad * 0.05 / (norm + 1e-6) + 0.01 * p)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    cfg = toy_config(max_iters=5, lr=0.05)
    big = ToyNet(dropout=0.0)
    fit(big, ToyDataset(augment=False), cfg, tmp_path / "a", collate_fn=toy_collate)
    small = ToyNet(dropout=0.0)
    cfg2 = toy_config(max_iters=5, lr=0.05, batch_size=2, accumulate=2)
    result = fit(small, ToyDataset(augment=False), cfg2, tmp_path / "b", collate_fn=toy_collate)
    assert sorted(small.seen[0] + small.seen[1]) == sorted(big.seen[0])
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b)
    assert len(result.history) == 5


def test_checkpoints_are_complete_and_last_is_a_real_file(tmp_path):
    cfg = toy_config(max_iters=10, checkpoint_every=4, keep_checkpoints=2)
    model = ToyNet()
    fit(model, ToyDataset(), cfg, tmp_path, collate_fn=toy_collate)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_10.pt", "iter_8.pt"]  # iter_4 pruned by keep_checkpoints
    last = tmp_path / "last.pt"
    assert last.is_file() and not last.is_symlink()
    assert last.read_bytes() == (tmp_path / "checkpoints" / "iter_10.pt").read_bytes()
    ckpt = torch.load(last, weights_only=False)
    assert torch.load(last, weights_only=True).keys() == ckpt.keys()  # plain tensors and values
    keys = {"model", "optimizer", "scheduler", "scaler", "rng", "iteration", "config"}
    assert keys <= ckpt.keys()
    assert ckpt["iteration"] == 10 and ckpt["config"]["checkpoint_every"] == 4
    _assert_same_weights(ckpt["model"], model.state_dict())
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob("checkpoints/.*"))


def test_a_fresh_run_keeps_its_own_checkpoint_over_a_longer_stale_one(tmp_path):
    # a folder left by an earlier, longer run: pruning by iteration number must not keep the
    # stale iter_1000.pt and delete the checkpoint this run just wrote
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "iter_1000.pt").write_bytes(b"an older run")
    cfg = toy_config(max_iters=3, warmup_iters=1, keep_checkpoints=1)
    fit(ToyNet(), ToyDataset(), cfg, tmp_path, collate_fn=toy_collate)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_3.pt"]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["iteration"] == 3


def test_resume_from_a_middle_checkpoint_is_exact(tmp_path):
    cfg = toy_config(max_iters=20, checkpoint_every=5)
    full = ToyNet()
    fit(full, ToyDataset(), cfg, tmp_path / "full", collate_fn=toy_collate)

    # pretend the run died right after iteration 10 (plus a log line from iteration 11)
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", run)
    for p in (run / "checkpoints").glob("*.pt"):
        if int(p.stem.split("_")[1]) > 10:
            p.unlink()
    shutil.copyfile(run / "checkpoints" / "iter_10.pt", run / "last.pt")
    (run / "checkpoints" / ".iter_15.pt.tmp999").write_bytes(b"cut by the kill")
    resumed = ToyNet()
    result = fit(resumed, ToyDataset(), cfg, run, resume=True, collate_fn=toy_collate)
    assert resumed.seen == full.seen[10:]
    _assert_same_weights(resumed.state_dict(), full.state_dict())
    assert [h["iter"] for h in result.history] == list(range(1, 21))  # 1..10 read from the log
    assert not list((run / "checkpoints").glob(".*"))  # the killed write's temporary is gone
    full_log = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    run_log = (run / "log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]
    assert strip(run_log) == strip(full_log)
    # resuming a finished run is a no-op; resuming an empty dir starts from scratch
    again = fit(ToyNet(), ToyDataset(), cfg, run, resume=True, collate_fn=toy_collate)
    assert again.iterations == 20
    fresh = ToyNet()
    fit(fresh, ToyDataset(), cfg, tmp_path / "fresh", resume=True, collate_fn=toy_collate)
    _assert_same_weights(fresh.state_dict(), full.state_dict())


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_config(max_iters=20, checkpoint_every=5)
    model = ToyNet(nan_at=7)
    with pytest.raises(NonFiniteLossError, match="iteration 7") as err:
        fit(model, ToyDataset(), cfg, tmp_path, collate_fn=toy_collate)
    assert err.value.iteration == 7
    assert set(err.value.losses) == {"loss", "loss_mse", "loss_l1", "stats_pred_mean"}
    assert "loss_mse=nan" in str(err.value) and "loss_l1=" in str(err.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["iteration"] == 5
    iter_5 = load_checkpoint(tmp_path / "checkpoints" / "iter_5.pt")
    _assert_same_weights(last["model"], iter_5["model"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_5.pt"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 6


def test_load_checkpoint_names_the_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_truncated_checkpoints_to_the_newest_intact_one(tmp_path):
    cfg = toy_config(max_iters=20, checkpoint_every=5)
    full = ToyNet()
    fit(full, ToyDataset(), cfg, tmp_path / "full", collate_fn=toy_collate)

    # killed after iteration 15 with the disk full: last.pt and iter_15.pt are cut short
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", run)
    (run / "checkpoints" / "iter_20.pt").unlink()
    shutil.copyfile(run / "checkpoints" / "iter_15.pt", run / "last.pt")
    _truncate(run / "last.pt")
    _truncate(run / "checkpoints" / "iter_15.pt")
    resumed = ToyNet()
    with pytest.warns(UserWarning, match=r"resuming from .*iter_10\.pt.* skipped .*last\.pt: not "
                                         r"a readable checkpoint.*iter_15\.pt"):
        result = fit(resumed, ToyDataset(), cfg, run, resume=True, collate_fn=toy_collate)
    assert resumed.seen == full.seen[10:]
    _assert_same_weights(resumed.state_dict(), full.state_dict())
    assert [h["iter"] for h in result.history] == list(range(1, 21))
    assert torch.load(run / "last.pt", weights_only=False)["iteration"] == 20

    # nothing intact: an error naming the folder, not a silent restart from scratch
    for path in [run / "last.pt", *(run / "checkpoints").glob("*.pt")]:
        _truncate(path)
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from"):
        fit(ToyNet(), ToyDataset(), cfg, run, resume=True, collate_fn=toy_collate)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    run = tmp_path / "killed"
    cmd = [sys.executable, str(TOYS), str(run), "--max-iters", "30", "--checkpoint-every", "5"]
    proc = subprocess.Popen(cmd + ["--sleep", "0.05"], env=_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "iter_10.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["iteration"] < 30
    # the same code resumes in this process (one interpreter start less)
    resumed = ToyNet()
    fit(resumed, ToyDataset(), toy_config(max_iters=30), run, resume=True, collate_fn=toy_collate)

    reference = ToyNet()
    fit(reference, ToyDataset(), toy_config(max_iters=30), tmp_path / "ref", collate_fn=toy_collate)
    final = load_checkpoint(run / "last.pt")
    assert final["iteration"] == 30
    _assert_same_weights(final["model"], reference.state_dict())
    _assert_same_weights(resumed.state_dict(), reference.state_dict())


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """torchrun --nproc-per-node 2 with batch 2 each == one process with batch 4."""
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(TOYS), str(run), "--max-iters", "3", "--batch-size", "2", "--deterministic",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    single = ToyNet(dropout=0.0)
    cfg = toy_config(max_iters=3, batch_size=4)
    result = fit(single, ToyDataset(augment=False), cfg, tmp_path / "one", collate_fn=toy_collate)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ckpt["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    logged = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in logged] == pytest.approx([h["loss"] for h in result.history])
    assert [x["lr"] for x in logged] == pytest.approx([h["lr"] for h in result.history])


def test_dataloader_workers_are_seeded(tmp_path):
    """Two workers: the same batches as in-process loading, and augmentation repeats run to run."""
    plain = ToyNet(dropout=0.0)
    cfg = toy_config(max_iters=4)
    fit(plain, ToyDataset(augment=False), cfg, tmp_path / "a", collate_fn=toy_collate)
    workers = ToyNet(dropout=0.0)
    cfg_w = toy_config(max_iters=4, num_workers=2)
    fit(workers, ToyDataset(augment=False), cfg_w, tmp_path / "b", collate_fn=toy_collate)
    _assert_same_weights(plain.state_dict(), workers.state_dict())
    runs = []
    for name in ("c", "d"):
        model = ToyNet()
        fit(model, ToyDataset(augment=True), cfg_w, tmp_path / name, collate_fn=toy_collate)
        runs.append(model.state_dict())
    _assert_same_weights(*runs)


@pytest.mark.cuda
def test_amp_on_cuda(tmp_path):
    cfg = toy_config(max_iters=6, amp=True, checkpoint_every=3)
    model = ToyNet()
    result = fit(model, ToyDataset(), cfg, tmp_path, device="cuda", collate_fn=toy_collate)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert next(model.parameters()).device.type == "cuda"
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["scaler"]["scale"] > 0 and "cuda" in ckpt["rng"][0]
    resumed = ToyNet()
    shutil.copyfile(tmp_path / "checkpoints" / "iter_3.pt", tmp_path / "last.pt")
    fit(resumed, ToyDataset(), cfg, tmp_path, device="cuda", resume=True, collate_fn=toy_collate)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_a_classifier_trains_through_the_same_loop(tmp_path):
    """glimpse's ImageClassifier on synthetic stripes, with the default collate: it learns."""
    from torch import nn

    from glimpse.classification import ImageClassifier
    from glimpse.data.imagenet import SyntheticClassification

    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    )  # fmt: skip
    model = ImageClassifier(net, num_classes=4)
    data = SyntheticClassification(num_classes=4, num_images=32, size=24)
    cfg = TrainConfig(max_iters=40, batch_size=8, lr=0.1, warmup_iters=0, checkpoint_every=0)
    history = fit(model, data, cfg, tmp_path).history
    first = sum(h["loss_cls"] for h in history[:5]) / 5
    last = sum(h["loss_cls"] for h in history[-5:]) / 5
    assert "stats_top1" in history[0] and last < first


def test_resume_with_a_longer_schedule_warns_and_follows_the_new_config(tmp_path):
    short = toy_config(max_iters=10, warmup_iters=0, lr_steps=(8,), checkpoint_every=0)
    fit(ToyNet(), ToyDataset(), short, tmp_path, collate_fn=toy_collate)
    longer = toy_config(max_iters=14, warmup_iters=0, lr_steps=(12,), checkpoint_every=0, lr=0.1)
    with pytest.warns(UserWarning, match="lr, lr_steps, max_iters"):
        result = fit(ToyNet(), ToyDataset(), longer, tmp_path, resume=True, collate_fn=toy_collate)
    lrs = {h["iter"]: h["lr"] for h in result.history}
    assert lrs[8] == pytest.approx(0.05) and lrs[9] == pytest.approx(0.005)  # the first run
    assert [lrs[i] for i in (11, 12, 13, 14)] == pytest.approx([0.1, 0.1, 0.01, 0.01])


# ---------------------------------------------------------------- wall-time budget


class _FakeClock:
    """``perf_counter`` for :mod:`glimpse.engine.train`: step ``k`` (1-based) lasts
    ``seconds(k)`` (``_step`` reads the clock twice a step)."""

    def __init__(self, seconds):
        self.seconds, self.now, self.calls = seconds, 0.0, 0

    def perf_counter(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the end of step calls // 2
            self.now += self.seconds(self.calls // 2)
        return self.now


def _budget_fit(monkeypatch, work, seconds, **cfg):
    import glimpse.engine.train as train_module

    monkeypatch.setattr(train_module, "time", _FakeClock(seconds))
    net = ToyNet()
    result = fit(net, ToyDataset(), toy_config(**cfg), work, collate_fn=toy_collate)
    monkeypatch.undo()
    return net, result


def test_a_budget_run_fits_its_budget_and_completes_the_decay(monkeypatch, tmp_path):
    # 2 s for the first step, 0.5 s after: 1 + (30 - 2) / 0.5 = 57 steps in 30 s
    net, result = _budget_fit(monkeypatch, tmp_path, lambda k: 2.0 if k == 1 else 0.5,
                              max_iters=1000, max_minutes=0.5, checkpoint_every=0)
    assert result.iterations == 57
    assert sum(h["time"] for h in result.history) == pytest.approx(30.0)
    lrs = [h["lr"] for h in result.history]
    assert lrs[-1] == pytest.approx(0.05 * 0.01)  # both decays (at 38 and 52) happened
    assert [i for i in range(1, 57) if lrs[i] < lrs[i - 1] * 0.5] == [38, 52]
    assert load_checkpoint(result.last_checkpoint)["planned_iters"] == 57
    # capped by max_iters
    _, capped = _budget_fit(monkeypatch, tmp_path / "cap", lambda k: 0.5, max_iters=20,
                            max_minutes=0.5, checkpoint_every=0)
    assert capped.iterations == 20


def test_a_budget_run_repeats_by_its_iteration_count(monkeypatch, tmp_path):
    """The pace changes mid-run (the estimate moves several times before it freezes); a plain
    run of the count reached has the same lrs, data order and weights."""
    budget, result = _budget_fit(monkeypatch, tmp_path / "budget",
                                 lambda k: 1.0 if k <= 6 else (0.25 if k < 20 else 0.4),
                                 max_iters=1000, max_minutes=0.4, checkpoint_every=0)
    n = result.iterations
    assert 40 < n < 80
    plain = ToyNet()
    again = fit(plain, ToyDataset(), toy_config(max_iters=n, checkpoint_every=0),
                tmp_path / "plain", collate_fn=toy_collate)
    assert [h["lr"] for h in again.history] == [h["lr"] for h in result.history]
    assert plain.seen == budget.seen
    _assert_same_weights(plain.state_dict(), budget.state_dict())


def test_a_budget_run_resumes_exactly(monkeypatch, tmp_path):
    step = lambda k: 2.0 if k == 1 else 0.5  # noqa: E731
    full, result = _budget_fit(monkeypatch, tmp_path / "full", step, max_iters=1000,
                               max_minutes=0.5, checkpoint_every=10)
    run = tmp_path / "cut"  # died after iteration 20, before the estimate froze (at 29)
    shutil.copytree(tmp_path / "full", run)
    for p in (run / "checkpoints").glob("*.pt"):
        if int(p.stem.split("_")[1]) > 20:
            p.unlink()
    shutil.copyfile(run / "checkpoints" / "iter_20.pt", run / "last.pt")
    import glimpse.engine.train as train_module

    clock = _FakeClock(lambda k: 0.5)
    monkeypatch.setattr(train_module, "time", clock)
    resumed = ToyNet()
    again = fit(resumed, ToyDataset(), toy_config(max_iters=1000, max_minutes=0.5,
                                                  checkpoint_every=10),
                run, resume=True, collate_fn=toy_collate)
    assert again.iterations == result.iterations == 57
    assert resumed.seen == full.seen[20:]
    _assert_same_weights(resumed.state_dict(), full.state_dict())


def test_budget_config_errors():
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=0)
    with pytest.raises(ValueError, match="lr_steps must be None with max_minutes"):
        TrainConfig(max_minutes=1.0, lr_steps=(5,))
    assert TrainConfig(max_iters=30).milestones(12) == (8, 11)
