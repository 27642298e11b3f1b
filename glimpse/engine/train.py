"""The one training loop of glimpse: iteration-based SGD with mmdetection's 1x schedule.

Every model (detector, classifier, segmentor) follows the same contract: in train mode
``model(images, targets)`` returns a dict of scalar tensors; keys starting with ``loss_`` are
summed and back-propagated, the others are detached diagnostics that are only logged.

What :func:`fit` does, in order:

- joins the ``torchrun`` process group if there is one (DDP; ``gloo`` on CPU, ``nccl`` on GPU);
- seeds Python, NumPy and torch with ``seed + rank`` and shards a seeded permutation of the
  dataset over ranks (:class:`~glimpse.engine.distributed.ShardedBatchSampler`);
- runs ``max_iters`` optimiser steps (or as many as a ``max_minutes`` budget holds) of SGD
  (momentum 0.9, weight decay 1e-4) with the lr linearly scaled from 0.02 per 16 images,
  linear warm-up and x0.1 steps, L2 gradient clipping at 35 (mmdetection v1
  ``faster_rcnn_r50_fpn_1x.py``), AMP on CUDA and gradient accumulation;
- with ``max_minutes``, sizes the run to a wall-time budget (see :class:`TrainConfig`): the
  iteration count is estimated from the measured step time and frozen by half-way, so the
  step decay still completes and the run is repeatable by its recorded iteration count;
- logs every named loss per iteration (``TrainResult.history`` and ``WORK_DIR/log.jsonl``);
- writes atomic checkpoints to ``WORK_DIR/checkpoints/iter_<N>.pt`` and ``WORK_DIR/last.pt``
  (rank 0 only), from which ``resume=True`` continues exactly (from the newest intact
  ``iter_<N>.pt`` when ``last.pt`` is truncated or corrupt);
- stops with :class:`NonFiniteLossError` at the first non-finite loss, before it touches the
  weights, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from glimpse.engine.distributed import DistInfo, ShardedBatchSampler, init_distributed
from glimpse.engine.seed import get_rng_state, seed_everything, seed_worker, set_rng_state
from glimpse.io import atomic_write

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "CheckpointError",
    "WarmupMultiStepLR",
    "lr_factor",
    "fit",
    "load_checkpoint",
    "load_newest_checkpoint",
    "read_log",
    "to_device",
    "LOG_FILE",
    "LAST_CHECKPOINT",
    "CHECKPOINT_DIR",
]

LOG_FILE = "log.jsonl"
LAST_CHECKPOINT = "last.pt"
CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are mmdetection's 1x schedule.

    Attributes:
        max_iters: number of optimiser steps (an iteration = ``accumulate`` micro-batches).
        batch_size: images per micro-batch on each process.
        base_lr: lr for a total batch of ``base_batch_size`` images (mmdet: 0.02 per 16).
        base_batch_size: the batch ``base_lr`` refers to.
        lr: an absolute lr; when set, linear scaling is skipped.
        momentum: SGD momentum.
        weight_decay: L2 weight decay on every trainable parameter (mmdet v1).
        warmup_iters: length of the linear warm-up (0 disables it).
        warmup_ratio: lr factor at iteration 0 of the warm-up.
        lr_steps: iterations at which the lr is multiplied by ``lr_gamma``; ``None`` means
            8/12 and 11/12 of ``max_iters`` (epochs 8 and 11 of 12).
        lr_gamma: step factor.
        grad_clip: max L2 norm of all gradients together (``None`` disables clipping).
        accumulate: micro-batches per optimiser step (gradient accumulation).
        amp: mixed precision (float16 autocast + GradScaler); only takes effect on CUDA.
        checkpoint_every: write a checkpoint every this many iterations (0: only at the end).
        keep_checkpoints: keep only the newest this many ``iter_<N>.pt`` (``None``: keep all).
        log_every: write a line to ``log.jsonl`` every this many iterations.
        seed: seed of the data order and of every RNG (each rank adds its rank).
        num_workers: DataLoader worker processes. Resuming is bit-exact with 0 workers; with
            workers, augmentations drawn inside workers are reseeded at the resume point.
        num_threads: torch intra-op threads during training; ``None``: 1 on CPU (several
            processes share the cores), unchanged on GPU.
        find_unused_parameters: forwarded to DDP (detectors skip branches on some batches).
        max_minutes: a training-time budget (the summed step times, evaluation excluded);
            ``None``: ``max_iters`` steps. With a budget the run takes ``N = min(max_iters,
            1 + (budget - first step) / mean later step)`` steps, with ``N`` re-estimated after
            every step until at least 10 steps are measured and half of ``N`` is done, then
            frozen. The lr milestones are 8/12 and 11/12 of ``N``, so the decay completes
            within the budget. Every estimate keeps both milestones after the next step, so
            the lr of every step equals that of a run with ``max_iters=N`` and no budget: the
            count reached (``TrainResult.iterations``, the runner's manifest) repeats the run
            exactly by iterations (and a budget of fewer than about 17 steps runs about 17,
            the least that satisfies this). An lr schedule by elapsed fraction of time would
            not: it would tie every lr to the machine's speed. ``lr_steps`` must then be
            ``None``.
    """

    max_iters: int = 1000
    batch_size: int = 2
    base_lr: float = 0.02
    base_batch_size: int = 16
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    lr_steps: tuple[int, ...] | None = None
    lr_gamma: float = 0.1
    grad_clip: float | None = 35.0
    accumulate: int = 1
    amp: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = None
    log_every: int = 1
    seed: int = 0
    num_workers: int = 0
    num_threads: int | None = None
    find_unused_parameters: bool = True
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        positive = ("max_iters", "batch_size", "base_batch_size", "accumulate", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_iters", "checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.warmup_ratio <= 1.0:
            raise ValueError(f"TrainConfig.warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        if self.lr_steps is not None:
            steps = tuple(int(s) for s in self.lr_steps)
            if list(steps) != sorted(steps):
                raise ValueError(f"TrainConfig.lr_steps must be increasing, got {steps}")
            object.__setattr__(self, "lr_steps", steps)
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError("TrainConfig.keep_checkpoints must be >= 1 or None")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("TrainConfig.num_threads must be >= 1 or None")
        if self.max_minutes is not None:
            if not self.max_minutes > 0:
                raise ValueError(f"TrainConfig.max_minutes must be > 0 or None, "
                                 f"got {self.max_minutes}")
            if self.lr_steps is not None:
                raise ValueError("TrainConfig.lr_steps must be None with max_minutes (the "
                                 "milestones follow the iteration count the budget holds)")

    def milestones(self, total_iters: int | None = None) -> tuple[int, ...]:
        """Iterations where the lr drops by ``lr_gamma`` in a run of ``total_iters`` steps
        (default ``max_iters``)."""
        if self.lr_steps is not None:
            return self.lr_steps
        total = self.max_iters if total_iters is None else total_iters
        return (total * 8 // 12, total * 11 // 12)

    def total_batch_size(self, world_size: int = 1) -> int:
        """Images per optimiser step over all processes."""
        return self.batch_size * world_size * self.accumulate

    def scaled_lr(self, world_size: int = 1) -> float:
        """The peak lr: ``lr`` if given, else the linear scaling rule (Goyal et al. 2017)."""
        if self.lr is not None:
            return self.lr
        return self.base_lr * self.total_batch_size(world_size) / self.base_batch_size


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per iteration (``iter``, ``lr``, ``loss`` = the summed loss, every
            named loss and diagnostic, ``grad_norm``, ``time`` in seconds). After a resume it
            starts with the entries read back from ``log.jsonl``.
        last_checkpoint: path of the checkpoint written at the end (``None`` on ranks > 0).
        work_dir: the run directory.
        iterations: the iteration the run stopped at (``max_iters``, or the count a
            ``max_minutes`` budget held).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    work_dir: Path | None = None
    iterations: int = 0


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the weights were not updated with it."""

    def __init__(self, iteration: int, losses: dict[str, float]) -> None:
        self.iteration = iteration
        self.losses = dict(losses)
        values = ", ".join(f"{k}={v!r}" for k, v in self.losses.items())
        super().__init__(f"non-finite loss at iteration {iteration}: {values}")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable (truncated, corrupt) or not one :func:`fit` wrote."""


def lr_factor(
    iteration: int,
    *,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_ratio: float = 1.0 / 3.0,
) -> float:
    """The lr multiplier of mmdetection's step policy with linear warm-up.

    ``regular = gamma ** #(milestones <= iteration)``; during warm-up (``iteration <
    warmup_iters``) it is ``regular * (1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio))``
    (mmcv ``LrUpdaterHook.get_warmup_lr``, ``warmup='linear'``).

    Args:
        iteration: 0-based index of the optimiser step about to be taken.
    """
    regular = gamma ** sum(iteration >= m for m in milestones)
    if iteration < warmup_iters:
        return regular * (1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio))
    return regular


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Closed-form :func:`lr_factor` schedule, stepped once per optimiser step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        *,
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_ratio: float = 1.0 / 3.0,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = tuple(milestones)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = lr_factor(
            self.last_epoch,
            milestones=self.milestones,
            gamma=self.gamma,
            warmup_iters=self.warmup_iters,
            warmup_ratio=self.warmup_ratio,
        )
        return [base * factor for base in self.base_lrs]


def _checkpoint_iteration(path: Path) -> int:
    """N of ``iter_<N>.pt`` (-1 for a name that does not parse, so it sorts first)."""
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` (on CPU).

    Returns:
        A dict with ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``, ``rng``
        (one state per rank), ``iteration``, ``world_size`` and ``config`` (dict).

    Raises:
        FileNotFoundError: the file is missing.
        CheckpointError: the file is unreadable (truncated, corrupt) or not a glimpse
            checkpoint; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "iteration" not in ckpt:
        raise CheckpointError(f"{path}: not a glimpse checkpoint (needs keys 'model', 'iteration')")
    return ckpt


def load_newest_checkpoint(work_dir: Path, *, stacklevel: int = 2
                           ) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest intact checkpoint of a run directory, to resume from.

    ``last.pt`` first, then ``checkpoints/iter_<N>.pt`` from the newest: a run killed while
    its disk filled up, or a copy cut short, leaves a truncated file, and the one before it
    still resumes exactly. Skipping a broken file warns with both names (``stacklevel`` as
    :func:`warnings.warn`'s, counted from the caller).

    Returns:
        ``(path, checkpoint)``, or ``None`` when ``work_dir`` holds no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none of them is readable.
    """
    candidates = [work_dir / LAST_CHECKPOINT] + sorted(
        (work_dir / CHECKPOINT_DIR).glob("iter_*.pt"), key=_checkpoint_iteration, reverse=True)
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        return None
    broken: list[str] = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
            break
        except CheckpointError as exc:
            broken.append(str(exc))
    else:
        raise CheckpointError(f"no intact checkpoint to resume from in {work_dir}: {broken[0]}")
    if broken:
        warnings.warn(f"resuming from {path}; skipped {'; '.join(broken)}",
                      stacklevel=stacklevel + 1)
    return path, ckpt


def read_log(log_path: Path, upto: int, *, rewrite: bool = True) -> list[dict[str, Any]]:
    """Entries of ``log.jsonl`` up to iteration ``upto``; with ``rewrite``, later ones (written
    after the last checkpoint by a killed run) and lines cut by a kill go from the file too."""
    if not log_path.is_file():
        return []
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if entry.get("iter", math.inf) <= upto:
            kept.append(entry)
    if rewrite:
        atomic_write(log_path, "".join(json.dumps(e) + "\n" for e in kept))
    return kept


def fit(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    work_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``cfg.max_iters`` iterations; see the module docstring.

    Args:
        model: follows the model contract (train mode returns a dict of scalar tensors).
        dataset: map-style dataset; items are whatever ``collate_fn`` turns into
            ``(images, targets)``.
        cfg: hyper-parameters.
        work_dir: run directory for ``log.jsonl``, ``config.json``, ``checkpoints/`` and
            ``last.pt``.
        device: ``"cpu"``, ``"cuda"`` (``cuda:LOCAL_RANK`` under torchrun), ``"auto"`` or a
            device.
        resume: continue from ``WORK_DIR/last.pt`` when it exists, from the newest intact
            ``checkpoints/iter_<N>.pt`` when ``last.pt`` is broken (with a warning naming
            both), from scratch when there is no checkpoint.
        collate_fn: batch collation; default :func:`glimpse.data.collate`
            (``(list[Tensor[3,H,W]], list[Target])``).

    Returns:
        The per-iteration history and the final checkpoint path. The model is trained in
        place and left on ``device``.

    Raises:
        NonFiniteLossError: a loss became NaN/inf (naming the iteration and every loss).
        CheckpointError: ``resume`` found checkpoints but none of them is readable.
    """
    if collate_fn is None:
        from glimpse.data import collate as collate_fn  # deferred: engine must not need data
    info = init_distributed(device)
    previous_threads = torch.get_num_threads()
    threads = cfg.num_threads or (1 if info.device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _Trainer(model, dataset, cfg, Path(work_dir), info, collate_fn).run(resume)
    finally:
        torch.set_num_threads(previous_threads)
        if info.created_group:
            dist.destroy_process_group()


class _Trainer:
    """State of one :func:`fit` call (kept private: ``fit`` is the interface)."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        cfg: TrainConfig,
        work_dir: Path,
        info: DistInfo,
        collate_fn: Callable[[list[Any]], Any],
    ) -> None:
        self.cfg = cfg
        self.info = info
        self.work_dir = work_dir
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.device = info.device
        self.model = model.to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.SGD(
            self.params,
            lr=cfg.scaled_lr(info.world_size),
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        # the run's length: max_iters, or with max_minutes the estimate, final once frozen
        self.total = cfg.max_iters
        self.frozen = cfg.max_minutes is None
        self.scheduler = WarmupMultiStepLR(
            self.optimizer,
            cfg.milestones(),
            gamma=cfg.lr_gamma,
            warmup_iters=cfg.warmup_iters,
            warmup_ratio=cfg.warmup_ratio,
        )
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.log_path = work_dir / LOG_FILE

    # ------------------------------------------------------------------ checkpoints

    def _state(self, iteration: int) -> dict[str, Any]:
        rng = get_rng_state()
        if self.info.world_size > 1:
            # every rank's generators, so that a resumed job continues each rank exactly
            states: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": states,
            "iteration": iteration,
            "planned_iters": self.total,
            "budget_frozen": self.frozen,
            "world_size": self.info.world_size,
            "config": dataclasses.asdict(self.cfg),
        }

    def _save(self, iteration: int) -> Path:
        state = self._state(iteration)  # collective: every rank takes part
        ckpt_dir = self.work_dir / CHECKPOINT_DIR
        path = ckpt_dir / f"iter_{iteration}.pt"
        if not self.info.is_main:
            return path
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # last.pt is a hard link (or a copy) swapped in atomically: never a dangling symlink
        last_tmp = self.work_dir / f".{LAST_CHECKPOINT}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            last_tmp.unlink()
        try:
            os.link(path, last_tmp)
        except OSError:
            shutil.copyfile(path, last_tmp)
        os.replace(last_tmp, self.work_dir / LAST_CHECKPOINT)
        if self.cfg.keep_checkpoints is not None:
            # never the one just written: a run started afresh in a folder that still holds a
            # longer run's iter_<N>.pt would otherwise keep that one and lose its own
            others = sorted((p for p in ckpt_dir.glob("iter_*.pt") if p != path),
                            key=_checkpoint_iteration)
            for stale in others[: max(len(others) - (self.cfg.keep_checkpoints - 1), 0)]:
                stale.unlink()
        return path

    def _resume(self) -> tuple[int, list[dict[str, float]]]:
        """Load the newest intact checkpoint (:func:`load_newest_checkpoint`); returns (start
        iteration, history from the log), (0, []) when there is no checkpoint at all.

        Raises:
            CheckpointError: checkpoints exist but none of them is readable.
        """
        found = load_newest_checkpoint(self.work_dir, stacklevel=3)
        if found is None:
            return 0, []
        path, ckpt = found
        changed = sorted(
            k for k, v in dataclasses.asdict(self.cfg).items()
            if _jsonable(ckpt["config"].get(k)) != _jsonable(v)
        )
        if changed:
            warnings.warn(
                f"{path}: resuming with a different config ({', '.join(changed)}); "
                "the run will not reproduce an uninterrupted one",
                stacklevel=3,
            )
        if ckpt.get("world_size", 1) != self.info.world_size:
            warnings.warn(
                f"{path}: written with world_size {ckpt.get('world_size')}, resuming with "
                f"{self.info.world_size}; the data order changes",
                stacklevel=3,
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.cfg.max_minutes is not None:
            self.total = min(self.cfg.max_iters, int(ckpt.get("planned_iters", self.total)))
            self.frozen = bool(ckpt.get("budget_frozen", False))
        self._apply_schedule()
        states = ckpt["rng"]
        set_rng_state(states[self.info.rank % len(states)])
        start = int(ckpt["iteration"])
        return start, read_log(self.log_path, start, rewrite=self.info.is_main)

    def _apply_schedule(self) -> None:
        """Make the current config the source of truth for the lr schedule after a resume
        (a loaded scheduler state carries the old milestones and peak lr); with an unchanged
        config this changes nothing."""
        cfg, sched = self.cfg, self.scheduler
        sched.milestones = cfg.milestones(self.total)
        sched.gamma = cfg.lr_gamma
        sched.warmup_iters = cfg.warmup_iters
        sched.warmup_ratio = cfg.warmup_ratio
        peak = cfg.scaled_lr(self.info.world_size)
        sched.base_lrs = [peak for _ in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, sched.get_lr()):
            group["initial_lr"] = peak
            group["lr"] = lr
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # ------------------------------------------------------------------ loop

    def _loader(self, start_iter: int) -> DataLoader:
        cfg, info = self.cfg, self.info
        sampler = ShardedBatchSampler(
            len(self.dataset),
            cfg.batch_size,
            seed=cfg.seed,
            rank=info.rank,
            world_size=info.world_size,
            start_batch=start_iter * cfg.accumulate,
        )
        # An explicit generator keeps the loader from drawing its worker base seed from the
        # global torch RNG, whose state the checkpoints restore.
        generator = torch.Generator()
        generator.manual_seed(cfg.seed * 1_000_003 + info.rank * 1009 + start_iter)
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            worker_init_fn=seed_worker,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def _reduce(self, outputs: dict[str, Any], total: Tensor) -> dict[str, float]:
        """Detached scalars of one micro-batch, averaged over ranks: ``loss`` then each key.

        Every rank must return the same keys (one ``all_reduce`` of the stacked values)."""
        keys = sorted(outputs)
        values = [total.detach().float().reshape(())]
        for k in keys:
            v = torch.as_tensor(outputs[k], device=self.device).detach().float()
            if v.numel() != 1:
                raise ValueError(f"model output {k!r} must be a scalar, got shape {tuple(v.shape)}")
            values.append(v.reshape(()))
        stacked = torch.stack(values)
        if self.info.world_size > 1:
            dist.all_reduce(stacked)
            stacked /= self.info.world_size
        return dict(zip(["loss", *keys], stacked.tolist()))

    def run(self, resume: bool) -> TrainResult:
        cfg, info = self.cfg, self.info
        seed_everything(cfg.seed + info.rank)
        start, history = self._resume() if resume else (0, [])
        if info.world_size > 1:
            starts: list[Any] = [None] * info.world_size
            dist.all_gather_object(starts, start)
            if len(set(starts)) != 1:
                raise RuntimeError(
                    f"ranks would resume from different iterations {starts}: "
                    f"{self.work_dir / LAST_CHECKPOINT} must be on storage every node sees"
                )
        if info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            # temporary files of a run killed mid-write
            for pattern in (".*.tmp*", "checkpoints/.*.tmp*"):
                for stale in self.work_dir.glob(pattern):
                    stale.unlink()
            atomic_write(
                self.work_dir / "config.json",
                json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n",
            )
            if start == 0:
                atomic_write(self.log_path, "")
        net: nn.Module = self.model
        if info.world_size > 1:
            net = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        self.model.train()
        result = TrainResult(history=history, work_dir=self.work_dir, iterations=start)
        if start >= self.total:
            result.last_checkpoint = self.work_dir / LAST_CHECKPOINT if info.is_main else None
            return result

        batches = iter(self._loader(start))
        bar = tqdm(
            total=self.total,
            initial=start,
            desc="train",
            dynamic_ncols=True,
            disable=None if info.is_main else True,
        )
        log = open(self.log_path, "a") if info.is_main else None
        try:
            it = start
            while it < self.total:
                entry = self._step(net, batches, it)
                result.history.append(entry)
                it = result.iterations = it + 1
                if not self.frozen:
                    self._plan(result.history, it)
                    bar.total = self.total
                if log is not None and (it % cfg.log_every == 0 or it == self.total):
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
                bar.update(1)
                every = cfg.checkpoint_every
                if (every and it % every == 0) or it == self.total:
                    path = self._save(it)
                    result.last_checkpoint = path if info.is_main else None
        finally:
            bar.close()
            if log is not None:
                log.close()
        return result

    def _plan(self, history: list[dict[str, float]], done: int) -> None:
        """Re-estimate the length of a ``max_minutes`` run after ``done`` steps (see
        :class:`TrainConfig`); frozen once 10 steps are measured and half of it is done.

        The pace is the mean step time without the first step (one-off costs: allocator,
        lazy initialisation). Under DDP rank 0's estimate is broadcast, so every rank stops at
        the same step."""
        cfg = self.cfg
        times = [h["time"] for h in history if "time" in h]
        later = [h["time"] for h in history if "time" in h and h.get("iter") != 1] or times
        pace = sum(later) / len(later)
        left = cfg.max_minutes * 60.0 - sum(times)
        estimate = done + max(0, int(left / pace)) if pace > 0 else cfg.max_iters
        # the first milestone (8/12 of the length) stays after the next step: no step so far
        # has seen a decay, so every lr equals that of a plain run of the final length
        least = (3 * (done + 1) + 1) // 2
        total = min(cfg.max_iters, max(estimate, least))
        if self.info.world_size > 1:
            agreed = torch.tensor([total], device=self.device)
            dist.broadcast(agreed, 0)
            total = int(agreed)
        if total != self.total:
            self.total = total
            self._apply_schedule()
        self.frozen = len(times) >= 10 and done >= self.total // 2

    def _step(self, net: nn.Module, batches: Any, it: int) -> dict[str, float]:
        """One optimiser step over ``accumulate`` micro-batches; returns its log entry."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(cfg.accumulate):
            batch = next(batches)
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError("collate_fn must return an (images, targets) pair")
            images, targets = to_device(batch, self.device)
            last_micro = micro == cfg.accumulate - 1
            sync = (
                net.no_sync()
                if isinstance(net, DistributedDataParallel) and not last_micro
                else contextlib.nullcontext()
            )
            with sync:
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    outputs = net(images, targets)
                if not isinstance(outputs, dict):
                    raise TypeError(
                        f"in train mode the model must return a dict of losses, "
                        f"got {type(outputs).__name__}"
                    )
                losses = [v for k, v in outputs.items() if k.startswith("loss_")]
                if not losses:
                    raise ValueError(f"the model returned no 'loss_*' keys: {sorted(outputs)}")
                total = torch.stack([v.float() for v in losses]).sum()
                values = self._reduce(outputs, total)
                checked = {k: v for k, v in values.items() if k == "loss" or k.startswith("loss_")}
                if not all(math.isfinite(v) for v in checked.values()):
                    raise NonFiniteLossError(it + 1, values)
                # DDP averages gradients over ranks and we average over micro-batches: the
                # step equals one on the whole batch when losses are per-image means.
                self.scaler.scale(total / cfg.accumulate).backward()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.accumulate
        self.scaler.unscale_(self.optimizer)
        # with grad_clip=None the norm is still computed (max_norm=inf), for the log
        max_norm = math.inf if cfg.grad_clip is None else cfg.grad_clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {
            "iter": it + 1,
            "lr": lr,
            **sums,
            "grad_norm": grad_norm,
            "time": time.perf_counter() - t0,
        }


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested lists/tuples/dicts to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _jsonable(value: Any) -> Any:
    """Normalise tuples to lists so configs read back from a checkpoint compare equal."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
