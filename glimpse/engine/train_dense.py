"""Training loops of the CARAFE paper's dense-prediction models: semantic segmentors and
inpainters (Tables 5 and 7).

:func:`~glimpse.engine.train.fit` is the detectors' loop (SGD with warm-up and steps, one
optimiser). These models need other schedules, so they have this loop, which keeps ``fit``'s
files and guarantees: ``WORK_DIR/log.jsonl`` (one line per iteration), ``config.json``,
``checkpoints/iter_<N>.pt`` and ``last.pt`` written atomically (readable by
:func:`~glimpse.engine.train.load_checkpoint`: ``model``, ``iteration``, plus ``optimizers``
and ``rng``), ``resume=True`` continuing exactly from ``last.pt`` (from the newest intact
``iter_<N>.pt`` when ``last.pt`` is broken), the seeded data order of
:class:`~glimpse.engine.distributed.ShardedBatchSampler`, and :class:`NonFiniteLossError`
before a non-finite loss touches the weights. One process (no DDP), no AMP.

* :func:`fit_segmentor`: SGD (momentum 0.9), poly lr ``(lr - min_lr) (1 - t/T)^power +
  min_lr`` (:func:`poly_lr`). :data:`SEGMENTATION_RECIPES`: ``"csail"`` (the paper's UperNet:
  lr 0.02, batch 16, weight decay 1e-4, 20 epochs of 5,000 iterations) and
  ``"mmseg_512x512_80k"`` (lr 0.01, weight decay 5e-4, eta_min 1e-4, 80k iterations); their
  augmentation is :func:`glimpse.data.transforms.segmentation_train_pipeline`.
* :func:`fit_global_local`: mmediting's Global&Local phases (Adam 4e-4 for the generator and
  the discriminators): the generator alone with the L1 hole loss before ``completion_iters``
  (mmediting ``iter_tc``), the discriminators alone until ``disc_iters`` (``iter_td``), then
  each iteration a discriminator step followed by a generator step with L1 + GAN.
* :func:`fit_pconv`: Partial Conv's two stages (Adam 2e-4, then a fresh Adam at 5e-5 with the
  encoder's BatchNorm statistics frozen, mmediting ``norm_eval``) in one run.
* :func:`collate_inpainting`: ``[(image, mask), ...] -> (images [B,3,H,W], masks [B,1,H,W])``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from glimpse.engine.distributed import ShardedBatchSampler
from glimpse.engine.seed import get_rng_state, seed_everything, seed_worker, set_rng_state
from glimpse.engine.train import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    LOG_FILE,
    CheckpointError,
    NonFiniteLossError,
    TrainResult,
    load_newest_checkpoint,
    read_log,
    to_device,
)
from glimpse.io import atomic_write

__all__ = [
    "GLTrainConfig",
    "PConvTrainConfig",
    "SEGMENTATION_RECIPES",
    "SegTrainConfig",
    "collate_inpainting",
    "fit_dense",
    "fit_global_local",
    "fit_pconv",
    "fit_segmentor",
    "freeze_batchnorm_stats",
    "poly_lr",
]


@dataclass(frozen=True)
class _LoopConfig:
    """The fields :class:`_DenseLoop` reads, shared by every config below (documented on
    :class:`SegTrainConfig`)."""

    max_iters: int = 1000
    batch_size: int = 8
    checkpoint_every: int = 0
    log_every: int = 1
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for attr in ("max_iters", "batch_size", "log_every"):
            if getattr(self, attr) < 1:
                raise ValueError(f"{name}.{attr} must be >= 1, got {getattr(self, attr)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"{name}.checkpoint_every must be >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"{name}.num_threads must be >= 1 or None")


@dataclass(frozen=True)
class _AdamLoopConfig(_LoopConfig):
    """:class:`_LoopConfig` plus Adam's ``betas`` (the inpainting loops')."""

    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "betas", tuple(self.betas))


@dataclass(frozen=True)
class SegTrainConfig(_LoopConfig):
    """SGD with the poly schedule (defaults: the CSAIL UperNet recipe at a short length).

    Attributes:
        max_iters: optimiser steps T.
        batch_size: images per step (the recipes' 16 = 8 GPUs x 2).
        lr: peak lr; min_lr: the floor the poly curve ends at (mmseg eta_min); power: 0.9.
        momentum, weight_decay: SGD's (applied to every parameter, as mmseg does; CSAIL leaves
            biases and norms undecayed).
        checkpoint_every: also write ``iter_<N>.pt`` every this many steps (0: at the end only).
        log_every: write a line to ``log.jsonl`` every this many steps.
        seed: seed of the data order and every RNG.
        num_threads: torch threads while training (None: 1 on CPU, unchanged on GPU).
    """

    batch_size: int = 2
    lr: float = 0.02
    min_lr: float = 0.0
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"SegTrainConfig.min_lr must be in [0, lr], got {self.min_lr}")


SEGMENTATION_RECIPES: dict[str, SegTrainConfig] = {
    # CSAIL ade20k-resnet50-upernet (the paper's Table 5 UperNet, reference B1): 20 epochs of
    # 5,000 iterations of 16 images; random short side 300-600, long side <= 1000 (the data side)
    "csail": SegTrainConfig(max_iters=100_000, batch_size=16, lr=0.02, weight_decay=1e-4,
                            checkpoint_every=5_000),
    # mmsegmentation upernet_r50_4xb4-80k_ade20k-512x512 (reference B2), 512 x 512 crops
    "mmseg_512x512_80k": SegTrainConfig(max_iters=80_000, batch_size=16, lr=0.01, min_lr=1e-4,
                                        weight_decay=5e-4, checkpoint_every=8_000),
}


@dataclass(frozen=True)
class GLTrainConfig(_AdamLoopConfig):
    """Global&Local's phased adversarial schedule (mmediting ``gl_256x256_8x12_places``).

    Attributes:
        lr, disc_lr: Adam lr of the generator and of the discriminators (4e-4 both).
        betas: Adam betas (torch's defaults, as mmediting's config leaves them).
        completion_iters: steps training the generator alone with L1 (``iter_tc``); None:
            18 % of ``max_iters`` (90k of 500k).
        disc_iters: the step from which both train; the discriminators train alone from
            ``completion_iters`` to here (``iter_td``); None: 20 % (100k of 500k).
        the rest: as :class:`SegTrainConfig`.
    """

    lr: float = 4e-4
    disc_lr: float = 4e-4
    completion_iters: int | None = None
    disc_iters: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        tc, td = self.phases()
        if not 0 <= tc <= td <= self.max_iters:
            raise ValueError(f"GLTrainConfig needs 0 <= completion_iters ({tc}) <= disc_iters "
                             f"({td}) <= max_iters ({self.max_iters})")

    def phases(self) -> tuple[int, int]:
        """(``iter_tc``, ``iter_td``) in steps."""
        tc = round(0.18 * self.max_iters) if self.completion_iters is None \
            else self.completion_iters
        td = max(tc, round(0.2 * self.max_iters)) if self.disc_iters is None else self.disc_iters
        return tc, td


@dataclass(frozen=True)
class PConvTrainConfig(_AdamLoopConfig):
    """Partial Conv's two stages in one run (mmediting ``pconv_stage1`` / ``pconv_stage2``).

    Attributes:
        lr: Adam lr of stage 1 (2e-4); stage2_lr: of stage 2 (5e-5), a fresh Adam.
        stage2_iters: the last this many steps are stage 2 (encoder BN statistics frozen); None:
            5/13 of ``max_iters`` (500k after 800k).
        the rest: as :class:`SegTrainConfig`.
    """

    lr: float = 2e-4
    stage2_lr: float = 5e-5
    stage2_iters: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.stage1_iters() <= self.max_iters:
            raise ValueError(f"PConvTrainConfig.stage2_iters must be in [0, max_iters], got "
                             f"{self.stage2_iters}")

    def stage1_iters(self) -> int:
        """Steps of stage 1."""
        stage2 = round(self.max_iters * 5 / 13) if self.stage2_iters is None \
            else self.stage2_iters
        return self.max_iters - stage2


def poly_lr(iteration: int, *, max_iters: int, lr: float, min_lr: float = 0.0,
            power: float = 0.9) -> float:
    """``(lr - min_lr) * (1 - iteration / max_iters) ** power + min_lr`` (mmseg ``PolyLR``,
    CSAIL's ``adjust_learning_rate`` with ``min_lr`` 0); ``iteration`` is 0-based."""
    return (lr - min_lr) * (1 - iteration / max_iters) ** power + min_lr


def collate_inpainting(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """``[(image [3,H,W], mask [1,H,W]), ...] -> (images [B,3,H,W], masks [B,1,H,W])``."""
    if not batch:
        raise ValueError("collate_inpainting got an empty batch")
    sizes = {tuple(im.shape) for im, _ in batch}
    if len(sizes) != 1:
        raise ValueError(f"inpainting images of one batch must share a size, got {sorted(sizes)}")
    return torch.stack([im for im, _ in batch]), torch.stack([m for _, m in batch])


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode (running statistics frozen, affine
    parameters still trained: mmediting's ``norm_eval``)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _collate_segmentation(batch: Sequence[tuple[Tensor, Any]]) -> tuple[list[Tensor], list]:
    return [im for im, _ in batch], [t for _, t in batch]


def _loss_total(outputs: dict[str, Tensor], iteration: int) -> tuple[Tensor, dict[str, float]]:
    """Sum of the ``loss_*`` entries, and every entry as a float (the others are logged
    diagnostics, as in ``fit``); raises before any backward when a loss is not finite."""
    losses = {k: v for k, v in outputs.items() if k.startswith("loss_")}
    if not losses:
        raise ValueError(f"the model returned no 'loss_*' keys: {sorted(outputs)}")
    total = torch.stack([v.float() for v in losses.values()]).sum()
    values = {k: float(torch.as_tensor(v).detach()) for k, v in outputs.items()}
    if not all(math.isfinite(values[k]) for k in losses) or not math.isfinite(float(
            total.detach())):
        raise NonFiniteLossError(iteration + 1, values)
    return total, values


_Step = Callable[[int, Any], dict[str, float]]


class _DenseLoop:
    """Data order, logging, checkpoints and resume around a per-iteration ``step``."""

    def __init__(self, model: nn.Module, dataset: Dataset, cfg: Any, work_dir: Path,
                 device: torch.device, optimizers: dict[str, torch.optim.Optimizer],
                 collate_fn: Callable[[list[Any]], Any]) -> None:
        self.model, self.dataset, self.cfg = model, dataset, cfg
        self.work_dir, self.device = work_dir, device
        self.optimizers, self.collate_fn = optimizers, collate_fn
        self.log_path = work_dir / LOG_FILE

    def _save(self, iteration: int) -> Path:
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                    "rng": [get_rng_state()], "iteration": iteration, "world_size": 1,
                    "config": dataclasses.asdict(self.cfg)}, buffer)
        path = atomic_write(self.work_dir / CHECKPOINT_DIR / f"iter_{iteration}.pt",
                            buffer.getvalue())
        atomic_write(self.work_dir / LAST_CHECKPOINT, buffer.getvalue())
        return path

    def _resume(self) -> tuple[int, list[dict[str, float]]]:
        """Load ``last.pt``, else (truncated or corrupt) the newest intact ``iter_<N>.pt``
        (:func:`~glimpse.engine.train.load_newest_checkpoint`); (0, []) without any
        checkpoint."""
        found = load_newest_checkpoint(self.work_dir, stacklevel=4)
        if found is None:
            return 0, []
        path, ckpt = found
        if set(ckpt.get("optimizers", {})) != set(self.optimizers):
            raise CheckpointError(f"{path}: written by another training loop (optimizers "
                                  f"{sorted(ckpt.get('optimizers', {}))})")
        self.model.load_state_dict(ckpt["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        set_rng_state(ckpt["rng"][0])
        start = int(ckpt["iteration"])
        return start, read_log(self.log_path, start)

    def run(self, step: _Step, resume: bool) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        start, history = self._resume() if resume else (0, [])
        atomic_write(self.work_dir / "config.json",
                     json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n")
        if start == 0:
            atomic_write(self.log_path, "")
        result = TrainResult(history=history, work_dir=self.work_dir, iterations=start)
        if start >= cfg.max_iters:
            result.last_checkpoint = self.work_dir / LAST_CHECKPOINT
            return result
        generator = torch.Generator()
        generator.manual_seed(cfg.seed * 1_000_003 + start)
        batches = iter(DataLoader(
            self.dataset, batch_sampler=ShardedBatchSampler(
                len(self.dataset), cfg.batch_size, seed=cfg.seed, start_batch=start),
            collate_fn=self.collate_fn, worker_init_fn=seed_worker, generator=generator))
        self.model.train()
        with open(self.log_path, "a") as log, tqdm(total=cfg.max_iters, initial=start,
                                                   desc="train", disable=None) as bar:
            for it in range(start, cfg.max_iters):
                t0 = time.perf_counter()
                entry = {"iter": it + 1, **step(it, to_device(next(batches), self.device))}
                entry["time"] = time.perf_counter() - t0
                result.history.append(entry)
                result.iterations = it + 1
                if (it + 1) % cfg.log_every == 0 or it + 1 == cfg.max_iters:
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                bar.update(1)
                every = cfg.checkpoint_every
                if (every and (it + 1) % every == 0) or it + 1 == cfg.max_iters:
                    result.last_checkpoint = self._save(it + 1)
        return result


def _launch(model: nn.Module, dataset: Dataset, cfg: Any, work_dir: str | os.PathLike,
            device: str | torch.device, optimizers: Callable[[], dict[str, Any]],
            step: Callable[[dict[str, Any]], _Step], collate_fn: Callable, resume: bool
            ) -> TrainResult:
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    previous = torch.get_num_threads()
    threads = cfg.num_threads or (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model.to(device)
        opts = optimizers()
        loop = _DenseLoop(model, dataset, cfg, Path(work_dir), device, opts, collate_fn)
        return loop.run(step(opts), resume)
    finally:
        torch.set_num_threads(previous)


def fit_segmentor(model: nn.Module, dataset: Dataset, cfg: SegTrainConfig,
                  work_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                  resume: bool = False) -> TrainResult:
    """Train a segmentor (``model(images, targets) -> {"loss_seg", ...}``) on ``(image,
    {"sem_seg"})`` items with SGD and the poly schedule; see the module docstring.

    Returns:
        :class:`~glimpse.engine.train.TrainResult` (history entries: ``iter``, ``lr``,
        ``loss``, each ``loss_*``, ``time``).
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def optimizers() -> dict[str, Any]:
        return {"sgd": torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)}

    def step(opts: dict[str, Any]) -> _Step:
        sgd = opts["sgd"]

        def run(it: int, batch: Any) -> dict[str, float]:
            lr = poly_lr(it, max_iters=cfg.max_iters, lr=cfg.lr, min_lr=cfg.min_lr,
                         power=cfg.power)
            for group in sgd.param_groups:
                group["lr"] = lr
            total, values = _loss_total(model(*batch), it)
            sgd.zero_grad(set_to_none=True)
            total.backward()
            sgd.step()
            return {"lr": lr, "loss": float(total.detach()), **values}
        return run

    return _launch(model, dataset, cfg, work_dir, device, optimizers, step,
                   _collate_segmentation, resume)


def fit_global_local(model: nn.Module, dataset: Dataset, cfg: GLTrainConfig,
                     work_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                     resume: bool = False) -> TrainResult:
    """Train a :class:`~glimpse.inpainting.GlobalLocal` (with discriminators) on ``(image,
    mask)`` items in mmediting's three phases; see the module docstring.

    History entries: ``iter``, ``phase`` (0 generator alone, 1 discriminators alone, 2 both),
    ``loss`` (the generator's sum, or the discriminators' in phase 1), ``loss_l1_hole``,
    ``loss_gan`` and ``disc_loss`` where they were computed, ``time``.
    """
    if getattr(model, "discriminators", None) is None:
        raise ValueError("fit_global_local needs a GlobalLocal model with discriminators")
    tc, td = cfg.phases()

    def optimizers() -> dict[str, Any]:
        return {"generator": torch.optim.Adam(model.generator.parameters(), lr=cfg.lr,
                                              betas=cfg.betas),
                "discriminators": torch.optim.Adam(model.discriminators.parameters(),
                                                   lr=cfg.disc_lr, betas=cfg.betas)}

    def step(opts: dict[str, Any]) -> _Step:
        g_opt, d_opt = opts["generator"], opts["discriminators"]

        def run(it: int, batch: Any) -> dict[str, float]:
            images, masks = batch
            phase = 0 if it < tc else 1 if it < td else 2
            with torch.set_grad_enabled(phase != 1):  # phase 1 steps the discriminators only
                output, completed = model.complete(images, masks)
            entry: dict[str, float] = {"phase": phase}
            if phase >= 1:
                d_loss, d_values = _loss_total(
                    {"loss_disc": model.discriminator_loss(images, masks, completed.detach())},
                    it)
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
                entry["disc_loss"] = d_values["loss_disc"]
                entry["loss"] = d_values["loss_disc"]
            if phase != 1:
                total, values = _loss_total(model.generator_losses(
                    images, masks, output, completed, adversarial=phase == 2), it)
                g_opt.zero_grad(set_to_none=True)
                total.backward()
                g_opt.step()
                entry.update(loss=float(total.detach()), **values)
            return entry
        return run

    return _launch(model, dataset, cfg, work_dir, device, optimizers, step, collate_inpainting,
                   resume)


def fit_pconv(model: nn.Module, dataset: Dataset, cfg: PConvTrainConfig,
              work_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
              resume: bool = False) -> TrainResult:
    """Train a :class:`~glimpse.inpainting.PConvUNet` on ``(image, mask)`` items: stage 1, then
    stage 2 (fresh Adam at ``stage2_lr``, ``model.encoder``'s BN statistics frozen).

    History entries: ``iter``, ``stage`` (1 or 2), ``lr``, ``loss``, each ``loss_*``, ``time``.
    """
    stage1 = cfg.stage1_iters()
    params = [p for p in model.parameters() if p.requires_grad]

    def optimizers() -> dict[str, Any]:
        return {"stage1": torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas),
                "stage2": torch.optim.Adam(params, lr=cfg.stage2_lr, betas=cfg.betas)}

    def step(opts: dict[str, Any]) -> _Step:
        def run(it: int, batch: Any) -> dict[str, float]:
            stage = 1 if it < stage1 else 2
            model.train()
            if stage == 2:
                freeze_batchnorm_stats(model.encoder)
            opt = opts[f"stage{stage}"]
            total, values = _loss_total(model(*batch), it)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            return {"stage": stage, "lr": opt.param_groups[0]["lr"],
                    "loss": float(total.detach()), **values}
        return run

    return _launch(model, dataset, cfg, work_dir, device, optimizers, step, collate_inpainting,
                   resume)


def fit_dense(model: nn.Module, dataset: Dataset,
              cfg: SegTrainConfig | GLTrainConfig | PConvTrainConfig,
              work_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
              resume: bool = False) -> TrainResult:
    """:func:`fit_segmentor`, :func:`fit_global_local` or :func:`fit_pconv`, by the type of
    ``cfg``."""
    loops = {SegTrainConfig: fit_segmentor, GLTrainConfig: fit_global_local,
             PConvTrainConfig: fit_pconv}
    if type(cfg) not in loops:
        raise TypeError(f"cfg must be one of {[c.__name__ for c in loops]}, got "
                        f"{type(cfg).__name__}")
    return loops[type(cfg)](model, dataset, cfg, work_dir, device=device, resume=resume)
