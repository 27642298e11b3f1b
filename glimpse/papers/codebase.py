"""The codebase behind the four papers: profiles, the baseline experiments, tables and figures
of ``notebooks/00_codebase.ipynb``.

Two tables are regenerated:

* :func:`codebase_table`: which detection methods each codebase lists (mmdetection,
  maskrcnn-benchmark, Detectron, SimpleDet), as transcribed into
  ``results/codebase/paper/methods.csv``, with a ``glimpse`` column computed from
  :func:`glimpse.zoo.names` (never typed in).
* :func:`baseline_table`: box / mask AP (and RPN AR@1000) of each detector trained at the chosen
  profile, beside the mmdetection R-50-FPN 1x model-zoo values
  (``results/codebase/paper/mmdet_r50_1x.csv``).

The figures step through a two-stage detector: anchors over the FPN levels, RPN proposals, the
R-CNN assignment of proposals to ground truth, the final boxes and masks, and the boxes of each
cascade stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from glimpse.papers import resolve_profile
from glimpse.papers.figures import COLORS, draw_box, show_image
from glimpse.papers.runner import (
    Evaluator,
    RunRecord,
    Variant,
    coco_metrics,
    finished_run,
    run_dir,
    train_and_evaluate,
    zoo_train_config,
)
from glimpse.report import load_paper, repo_root

__all__ = [
    "CODEBASES",
    "METHOD_PATTERNS",
    "PROFILES",
    "CodebaseConfig",
    "DetectorRun",
    "BaselineRuns",
    "baseline_evaluator",
    "baseline_table",
    "baseline_variant",
    "build_model",
    "codebase_table",
    "dry_check",
    "figure_anchors",
    "figure_cascade_stages",
    "figure_rpn",
    "pyramid_table",
    "figure_roi_assignment",
    "full_commands",
    "work_dir_of",
    "glimpse_methods",
    "load_data",
    "paper_baselines",
    "paper_methods",
    "pick_example",
    "resolve",
    "run_baselines",
    "target_table",
    "CPU_MAX_SEED_STD",
    "CPU_MINUTES",
    "CPU_TARGETS",
    "two_stage_internals",
]

PAPER = "codebase"

# Codebases of the talk's comparison, in its column order.
CODEBASES = ("mmdetection", "maskrcnn-benchmark", "Detectron", "SimpleDet")

# Method (row of the comparison) -> pattern over glimpse.zoo.names() that implements it. The
# glimpse column of the table is computed from these, so it follows the zoo as it grows.
METHOD_PATTERNS: dict[str, str] = {
    "RPN": r"^rpn_",
    "Fast R-CNN": r"^fast_rcnn_",
    "Faster R-CNN": r"^faster_rcnn_",
    "Mask R-CNN": r"^mask_rcnn_",
    "RetinaNet": r"^retinanet_",
    "Cascade R-CNN": r"^cascade_rcnn_",
    "Cascade Mask R-CNN": r"^cascade_mask_rcnn_",
    "Hybrid Task Cascade": r"^htc_",
    "Guided Anchoring": r"^ga_",
    "CARAFE": r"carafe",
    "FishNet": r"fishnet",
}


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorRun:
    """One baseline to train and evaluate.

    Attributes:
        model: a :func:`glimpse.zoo.names` entry.
        max_iters: optimiser steps.
        batch_size: images per step (per process).
        lr: absolute peak learning rate; ``None`` applies mmdet's linear scaling rule to the
            zoo's base lr (:func:`glimpse.zoo.base_lr`).
        warmup_iters: linear warm-up length (mmdet: 500).
        model_kwargs: extra keywords of the zoo builder (e.g. fewer sampled RoIs for smoke).
        data: dataset trained and evaluated on instead of the profile's (e.g. ``"coco128"``).
        max_minutes: a training-time budget; ``max_iters`` is then a cap and the run's length
            is estimated from its step time (:class:`~glimpse.engine.train.TrainConfig`).
    """

    model: str
    max_iters: int
    batch_size: int = 4
    lr: float | None = None
    warmup_iters: int = 500
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data: str | None = None
    max_minutes: float | None = None

    @property
    def label(self) -> str:
        """Row label: the model name, plus the dataset when the run overrides it."""
        return self.model if self.data is None else f"{self.model} ({self.data})"

    @property
    def family(self) -> str:
        """Detector family: the zoo name without its ``_<backbone>_fpn`` suffix."""
        from glimpse import zoo

        return zoo.MODELS[self.model].detector


@dataclass(frozen=True)
class CodebaseConfig:
    """Resolved configuration of the codebase notebook (stored in its manifest).

    Attributes:
        profile: ``"smoke"``, ``"cpu"`` or ``"full"``.
        train_data: dataset name for :func:`glimpse.data.build_dataset` (training split).
        val_data: dataset name evaluated on (its ``val`` split).
        data_root: data folder (``""``: the dataset's default).
        device: resolved device string.
        seed: seed of every run (the first seed with ``num_seeds`` > 1).
        runs: the baselines.
        image_scale: detector input scale; ``None`` uses the dataset's default.
        eval_batch_size: images per inference batch.
        work_dir: where checkpoints and training logs go
            (``""``: ``<repo>/work_dirs/codebase/<profile>``).
        deterministic: call ``torch.use_deterministic_algorithms(True)`` (CPU runs repeat bit
            for bit, so nbval can check the notebook).
        dry_run: only resolve and build (the ``full`` profile on a machine without its data).
        reuse_finished: reuse runs already finished in ``work_dir`` with the same spec and
            resume unfinished ones (see :mod:`glimpse.papers.runner`); ``False`` retrains
            every run (smoke: the notebook check must exercise training).
        num_seeds: every run is trained with seeds ``seed .. seed + num_seeds - 1``; the tables
            report the mean (and :func:`target_table` mean and std) over them.
    """

    profile: str
    train_data: str
    val_data: str
    data_root: str = ""
    device: str = "cpu"
    seed: int = 0
    runs: tuple[DetectorRun, ...] = ()
    image_scale: tuple[int, int] | None = None
    eval_batch_size: int = 4
    work_dir: str = ""
    deterministic: bool = True
    dry_run: bool = False
    reuse_finished: bool = False
    num_seeds: int = 1

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds every run is trained with."""
        return tuple(range(self.seed, self.seed + self.num_seeds))

    @property
    def data(self) -> str:
        """One-line description of the data, for manifests and table rows."""
        return (self.train_data if self.train_data == self.val_data
                else f"{self.train_data} -> {self.val_data}")


# Smoke: slim backbones on 128 px synthetic shapes, fixed small iteration counts, so that the
# whole notebook runs in about 4 minutes on 2 CPU cores. Faster R-CNN, the running example,
# trains longest. The slim zoo rows carry the fast R-CNN recipe (128 RoIs sampled from 300
# proposals, 256-wide FCs; see glimpse.zoo).
def _smoke_runs() -> tuple[DetectorRun, ...]:
    return (
        DetectorRun("faster_rcnn_slim_fpn", 300, 4, lr=0.02, warmup_iters=50),
        DetectorRun("mask_rcnn_slim_fpn", 120, 4, lr=0.02, warmup_iters=50),
        # RetinaNet is about 5x cheaper per iteration than the two-stage models
        DetectorRun("retinanet_slim_fpn", 200, 4, lr=0.01, warmup_iters=50),
        DetectorRun("cascade_rcnn_slim_fpn", 100, 4, lr=0.02, warmup_iters=50),
    )


# cpu: issue 14's learning targets. Every detector trains for CPU_MINUTES of one thread on
# 256 px synthetic shapes, over 3 seeds, in priority order (Faster R-CNN, RetinaNet, Mask R-CNN,
# Cascade R-CNN, then Cascade Mask R-CNN, the RPN and Faster R-CNN on COCO128). The budget sets
# each run's iteration count (recorded in its manifest; max_iters only caps it).
CPU_MINUTES = 10.0
_CPU_ITERS_CAP = 100_000


def _cpu_runs() -> tuple[DetectorRun, ...]:
    def run(model: str, lr: float, **kw: Any) -> DetectorRun:
        return DetectorRun(model, _CPU_ITERS_CAP, 4, lr=lr, warmup_iters=200,
                           max_minutes=CPU_MINUTES, **kw)

    # RetinaNet at half its zoo lr: at 0.01 the classification loss rose from step 100 on and
    # a 10-minute run reached box AP 0.4; probes at seed 0, 600 steps: 7.9 at 0.005, 2.2 at
    # 0.0025 (issue 14's note)
    return (run("faster_rcnn_slim_fpn", 0.02), run("retinanet_slim_fpn", 0.005),
            run("mask_rcnn_slim_fpn", 0.02), run("cascade_rcnn_slim_fpn", 0.02),
            run("cascade_mask_rcnn_slim_fpn", 0.02), run("rpn_slim_fpn", 0.02),
            # real images: the first 112 COCO128 images, evaluated on its last 16 (glimpse.data)
            run("faster_rcnn_slim_fpn", 0.02, data="coco128"))


# The cpu profile's targets (issue 14), COCO AP x 100: (run label, metric, at least this value,
# or above the mean of this run's same metric). Every target also asks for a seed standard
# deviation of at most CPU_MAX_SEED_STD.
CPU_TARGETS: tuple[tuple[str, str, float | str], ...] = (
    ("faster_rcnn_slim_fpn", "box_AP", 60.0),
    ("retinanet_slim_fpn", "box_AP", 50.0),
    ("mask_rcnn_slim_fpn", "mask_AP", 50.0),
    ("cascade_rcnn_slim_fpn", "box_AP", "faster_rcnn_slim_fpn"),
)
CPU_MAX_SEED_STD = 2.0


# full: mmdetection's R-50-FPN 1x: 12 epochs at 16 images per step (8 GPUs x 2, lr 0.02,
# RetinaNet 0.01). Training skips the images without instances, leaving 117266 of COCO
# train2017's 118287, i.e. ceil(117266 / 16) = 7330 iterations per epoch (as mmdet's logs show).
_COCO_TRAIN_IMAGES_WITH_INSTANCES = 117266
_FULL_ITERS = math.ceil(_COCO_TRAIN_IMAGES_WITH_INSTANCES / 16) * 12  # 87960
_FULL_RUNS = tuple(
    DetectorRun(f"{family}_r50_fpn", max_iters=_FULL_ITERS, batch_size=2, lr=None,
                warmup_iters=500)
    for family in ("rpn", "faster_rcnn", "mask_rcnn", "retinanet", "cascade_rcnn",
                   "cascade_mask_rcnn")
)

PROFILES: dict[str, CodebaseConfig] = {
    "smoke": CodebaseConfig("smoke", "synthetic-smoke", "synthetic-smoke", runs=_smoke_runs()),
    "cpu": CodebaseConfig("cpu", "synthetic-cpu", "synthetic-cpu", runs=_cpu_runs(),
                          reuse_finished=True, num_seeds=3),
    # the notebook only checks the full configuration; training runs through torchrun
    # (see full_commands) and evaluation through `python -m glimpse evaluate`
    "full": CodebaseConfig("full", "coco", "coco", runs=_FULL_RUNS, eval_batch_size=2,
                           deterministic=False, dry_run=True),
}


def resolve(profile: str, *, device: str = "auto", data_root: str = "", seed: int = 0,
            **overrides: Any) -> CodebaseConfig:
    """The configuration of ``profile`` with the notebook parameters applied.

    Args:
        profile: a key of :data:`PROFILES`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        data_root: data folder (``""``: the dataset's default location).
        seed: seed of every run.
        **overrides: any other :class:`CodebaseConfig` field (``runs``, ``dry_run``, ...).

    Raises:
        ValueError: unknown profile or device.
        TypeError: unknown override.
    """
    return resolve_profile(PROFILES, profile, "codebase", device=device,
                           data_root=str(data_root or ""), seed=int(seed), **overrides)


def work_dir_of(cfg: CodebaseConfig) -> Path:
    """Where ``cfg``'s checkpoints and logs go: ``cfg.work_dir``, else
    ``<repo>/work_dirs/codebase/<profile>``."""
    if cfg.work_dir:
        return Path(cfg.work_dir)
    base = repo_root() or Path.cwd()
    return base / "work_dirs" / PAPER / cfg.profile


# --------------------------------------------------------------------------------------------
# Table 1: methods per codebase
# --------------------------------------------------------------------------------------------


def paper_methods(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Transcribed ``paper/methods.csv``: one row per (codebase, method) with ``listed`` and
    ``source``."""
    df = load_paper(PAPER, "methods", root=root)
    bad = sorted(set(df["listed"]) - {"yes", "no"})
    if bad:
        raise ValueError(f"methods.csv: 'listed' must be yes/no, found {bad}")
    return df


def glimpse_methods(names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Method -> the zoo models implementing it (by :data:`METHOD_PATTERNS`)."""
    if names is None:
        from glimpse import zoo

        names = zoo.names()
    return {method: sorted(n for n in names if re.search(pattern, n))
            for method, pattern in METHOD_PATTERNS.items()}


def codebase_table(names: Sequence[str] | None = None,
                   root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Methods (rows) x codebases (columns, "yes"/"no"), plus glimpse's column from the zoo.

    Args:
        names: zoo model names (default :func:`glimpse.zoo.names`).
        root: results folder holding ``codebase/paper/methods.csv``.

    Returns:
        Columns ``method``, one per :data:`CODEBASES`, ``glimpse`` ("yes"/"no") and
        ``glimpse_models`` (how many zoo models implement the method); rows in the order of
        :data:`METHOD_PATTERNS`, then a ``total`` row counting the "yes" cells.
    """
    paper = paper_methods(root)
    wide = paper.pivot(index="method", columns="codebase", values="listed")
    missing = [c for c in CODEBASES if c not in wide.columns]
    if missing:
        raise ValueError(f"methods.csv has no rows for codebase(s) {missing}")
    ours = glimpse_methods(names)
    rows = []
    for method in METHOD_PATTERNS:
        if method not in wide.index:
            raise ValueError(f"methods.csv has no rows for method {method!r}")
        row = {"method": method, **{c: wide.loc[method, c] for c in CODEBASES}}
        row["glimpse"] = "yes" if ours[method] else "no"
        row["glimpse_models"] = len(ours[method])
        rows.append(row)
    table = pd.DataFrame(rows)
    total = {"method": "total"}
    for col in (*CODEBASES, "glimpse"):
        total[col] = str(int((table[col] == "yes").sum()))
    total["glimpse_models"] = int(table["glimpse_models"].sum())
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Training and evaluation of the baselines
# --------------------------------------------------------------------------------------------


def paper_baselines(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Transcribed mmdetection R-50-FPN 1x model-zoo values (``paper/mmdet_r50_1x.csv``)."""
    return load_paper(PAPER, "mmdet_r50_1x", root=root)


def build_model(run: DetectorRun, num_classes: int, image_scale: tuple[int, int],
                **kwargs: Any) -> nn.Module:
    """``zoo.build(run.model, ...)`` with glimpse's defaults for the run."""
    from glimpse import zoo

    kwargs = {**run.model_kwargs, **kwargs}
    return zoo.build(run.model, num_classes=num_classes, image_scale=tuple(image_scale), **kwargs)


# evaluator keys kept in the baseline table, in the order they are reported
_BASELINE_METRICS = ("AR1000", "box_AP", "box_AP50", "box_AP75", "mask_AP")


def baseline_variant(cfg: CodebaseConfig, run: DetectorRun, train_set: Any) -> Variant:
    """One baseline as a runner :class:`~glimpse.papers.runner.Variant` named ``run.label``:
    the zoo's base lr (unless ``run.lr``), no intermediate checkpoints, one thread on CPU."""
    scale = cfg.image_scale or train_set.default_image_scale
    train = zoo_train_config(
        run.model, max_iters=run.max_iters, batch_size=run.batch_size, lr=run.lr,
        warmup_iters=min(run.warmup_iters, run.max_iters), amp=cfg.device != "cpu",
        checkpoint_every=0, keep_checkpoints=1, log_every=1, seed=cfg.seed,
        num_threads=1 if cfg.device == "cpu" else None, max_minutes=run.max_minutes)
    return Variant(run.label, run.model, train,
                   {**run.model_kwargs, "image_scale": tuple(scale)})


def baseline_evaluator(cfg: CodebaseConfig, run: DetectorRun) -> Evaluator:
    """COCO metrics of one baseline in percent: proposal recall (``AR1000``) for the RPN,
    ``box_*`` (and ``mask_*`` for mask models) for detectors."""
    return coco_metrics(("proposal",) if run.family == "rpn" else None, cfg.eval_batch_size)


def baseline_table(cfg: CodebaseConfig, measured: Mapping[str, Mapping[str, float]],
                   root: str | os.PathLike | None = None,
                   iterations: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Measured metrics of each run beside the mmdetection R-50-FPN 1x values.

    Args:
        cfg: the resolved configuration (its profile, data and runs label every row).
        measured: ``{run.label: {metric: value}}`` (:attr:`BaselineRuns.measured`).
        root: results folder holding ``codebase/paper/mmdet_r50_1x.csv``.
        iterations: iterations each run trained (:meth:`BaselineRuns.mean_iterations`; a
            time-budgeted run's count); default ``run.max_iters``.

    Returns:
        One row per run: ``model``, ``detector``, ``iters``, ``batch``, then for each of
        ``box_AP``, ``mask_AP``, ``AR1000`` the mmdet value and glimpse's, then ``profile``,
        ``data`` and the paper ``source``. Values are COCO metrics x 100. Smoke and cpu rows
        are not comparable with the mmdet column (other data, backbone and schedule).
    """
    paper = paper_baselines(root).set_index("detector")
    rows = []
    for run in cfg.runs:
        if run.label not in measured:
            continue
        m = measured[run.label]
        fam = run.family
        iters = (iterations or {}).get(run.label, run.max_iters)
        row: dict[str, Any] = {"model": run.label, "detector": fam, "iters": iters,
                               "batch": run.batch_size}
        for metric in ("box_AP", "mask_AP", "AR1000"):
            ref = paper[metric].get(fam) if fam in paper.index else float("nan")
            row[f"{metric}_mmdet"] = float(ref) if ref is not None else float("nan")
            row[f"{metric}_glimpse"] = float(m.get(metric, float("nan")))
        row["profile"] = cfg.profile
        row["data"] = run.data or cfg.data
        row["source"] = paper["source"].get(fam, "") if fam in paper.index else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    # drop metric columns that no row has (e.g. AR1000 when the profile trains no RPN)
    for metric in ("box_AP", "mask_AP", "AR1000"):
        cols = [f"{metric}_mmdet", f"{metric}_glimpse"]
        if not table.empty and table[cols[1]].isna().all():
            table = table.drop(columns=cols)
    return table


def dry_check(cfg: CodebaseConfig) -> pd.DataFrame:
    """Resolve every run of ``cfg`` and build its model (random init, nothing downloaded).

    Used for the ``full`` profile on machines without COCO or GPUs: it checks that the
    configuration is valid and that every model builds.

    Returns:
        One row per run: ``model``, ``params_M`` (millions), ``iters``, ``batch``, ``lr``
        (the peak lr on 8 processes by mmdet's linear scaling rule unless set).
    """
    rows = []
    scale = cfg.image_scale or (1333, 800)
    for run in cfg.runs:
        model = build_model(run, 80, scale, pretrained=None)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        tc = zoo_train_config(run.model, max_iters=run.max_iters, batch_size=run.batch_size,
                              lr=run.lr, warmup_iters=run.warmup_iters)
        rows.append({"model": run.model, "params_M": params, "iters": run.max_iters,
                     "batch": run.batch_size, "lr_8_gpus": tc.scaled_lr(world_size=8),
                     "lr_steps": "/".join(str(s) for s in tc.milestones())})
        del model
    return pd.DataFrame(rows)


def load_data(cfg: CodebaseConfig, name: str | None = None) -> tuple[Any, Any]:
    """``(train, val)`` datasets of ``name`` (default the profile's) via ``build_dataset``."""
    from glimpse.data import build_dataset

    root = cfg.data_root or None
    train = build_dataset(name or cfg.train_data, split="train", data_root=root, train=True)
    val = build_dataset(name or cfg.val_data, split="val", data_root=root, train=False)
    return train, val


def pick_example(dataset: Any, candidates: int = 20) -> tuple[Tensor, dict[str, Tensor]]:
    """The image with the most instances among the first ``candidates`` (ties: the first)."""
    best = max(range(min(candidates, len(dataset))),
               key=lambda i: (len(dataset[i][1]["boxes"]), -i))
    return dataset[best]


@dataclass
class BaselineRuns:
    """Trained baselines of a profile by run label: models (eval mode), histories, metrics
    (:data:`_BASELINE_METRICS` the evaluator returned, the mean over the seeds run) and runner
    records; models, histories and records are those of the first seed run.

    Attributes:
        seed_rows: one dict per (run, seed): ``model`` (the run label), ``seed``,
            ``iterations``, ``train_minutes`` and the :data:`_BASELINE_METRICS` values.
    """

    models: dict[str, nn.Module]
    histories: dict[str, list[dict[str, float]]]
    measured: dict[str, dict[str, float]]
    records: dict[str, RunRecord]
    seed_rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def seed_table(self) -> pd.DataFrame:
        """:attr:`seed_rows` as a table."""
        return pd.DataFrame(self.seed_rows)

    def mean_iterations(self) -> dict[str, int]:
        """Run label -> iterations trained, the mean over its seeds (rounded)."""
        table = self.seed_table()
        if table.empty:
            return {}
        means = table.groupby("model", sort=False)["iterations"].mean()
        return {label: int(round(v)) for label, v in means.items()}


def run_baselines(cfg: CodebaseConfig, data: tuple[Any, Any] | None = None, *,
                  verbose: bool = True, finished_only: bool = False) -> BaselineRuns:
    """Train and evaluate every run of ``cfg`` with every seed of ``cfg.seeds`` (run by run,
    so the first runs' seeds finish first) through :func:`glimpse.papers.runner.
    train_and_evaluate` (deterministic on CPU when ``cfg.deterministic``; finished runs reused
    when ``cfg.reuse_finished``).

    Args:
        cfg: resolved configuration (nothing runs when ``cfg.dry_run``).
        data: the profile's ``(train, val)`` datasets, if already loaded.
        verbose: print one line per run (model, seed, iterations, time, metrics).
        finished_only: train nothing; collect the (run, seed) pairs finished in the work dir
            (e.g. to tabulate a profile whose runs are done one process at a time).
    """
    out = BaselineRuns({}, {}, {}, {})
    if cfg.dry_run:
        return out
    cache: dict[str | None, tuple[Any, Any]] = {None: data} if data is not None else {}
    for run in cfg.runs:
        if run.data not in cache:
            cache[run.data] = load_data(cfg, run.data)
        train, val = cache[run.data]
        variant = baseline_variant(cfg, run, train)
        evaluate = baseline_evaluator(cfg, run)
        per_seed: list[dict[str, float]] = []
        for seed in cfg.seeds:
            work_dir = run_dir(work_dir_of(cfg), run.label, seed)
            if finished_only and finished_run(variant, train, val, seed=seed, work_dir=work_dir,
                                              evaluate=evaluate) is None:
                continue
            trained = train_and_evaluate(
                variant, train, val, seed=seed, work_dir=work_dir, device=cfg.device,
                evaluate=evaluate, deterministic=cfg.deterministic,
                reuse=cfg.reuse_finished or finished_only)
            record = trained.record
            metrics = {k: record.metrics[k] for k in _BASELINE_METRICS if k in record.metrics}
            per_seed.append(metrics)
            out.seed_rows.append({"model": run.label, "seed": seed,
                                  "iterations": record.iterations,
                                  "train_minutes": record.train_seconds / 60.0, **metrics})
            if run.label not in out.models:
                out.models[run.label] = trained.model
                out.histories[run.label] = trained.history
                out.records[run.label] = record
            if verbose:
                shown = ", ".join(f"{k} {v:.1f}" for k, v in metrics.items())
                how = "reused" if trained.reused else f"{record.wall_seconds:.0f} s"
                name = run.label if len(cfg.seeds) == 1 else f"{run.label} seed {seed}"
                print(f"{name}: {record.iterations} iterations, {how}; {shown}", flush=True)
        if per_seed:
            out.measured[run.label] = {k: sum(m[k] for m in per_seed) / len(per_seed)
                                       for k in per_seed[0]}
    return out


def target_table(cfg: CodebaseConfig, runs: BaselineRuns,
                 targets: Sequence[tuple[str, str, float | str]] = CPU_TARGETS,
                 max_std: float = CPU_MAX_SEED_STD) -> pd.DataFrame:
    """Each learning target against the seeds run: mean and standard deviation (ddof 1).

    Args:
        cfg: the configuration (its seeds are the ones a target needs).
        runs: :func:`run_baselines` output.
        targets: ``(run label, metric, bound)``; ``bound`` is a value the mean must reach, or
            the label of a run whose mean of the same metric it must exceed.
        max_std: the largest seed standard deviation a met target may have.

    Returns:
        One row per target: ``model``, ``metric``, ``seeds`` (how many ran), ``mean``,
        ``std``, ``target`` (the bound, as text), ``verdict``: ``"met"``, ``"not met"``, or
        ``"pending"`` while fewer than ``cfg.num_seeds`` seeds (or the compared run's) ran.
    """
    table = runs.seed_table()
    need = len(cfg.seeds)

    def values(label: str, metric: str) -> pd.Series:
        if table.empty or metric not in table:
            return pd.Series(dtype=float)
        return table.loc[table["model"] == label, metric].dropna().astype(float)

    rows = []
    for label, metric, bound in targets:
        got = values(label, metric)
        mean = float(got.mean()) if len(got) else math.nan
        std = float(got.std(ddof=1)) if len(got) > 1 else math.nan
        if isinstance(bound, str):
            other = values(bound, metric)
            limit = float(other.mean()) if len(other) else math.nan
            text = f"> {bound} ({limit:.1f})" if len(other) else f"> {bound}"
            complete = len(got) >= need and len(other) >= need
            reached = mean > limit
        else:
            text, complete, reached = f">= {bound:g}", len(got) >= need, mean >= bound
        verdict = ("pending" if not complete
                   else "met" if reached and std <= max_std else "not met")
        rows.append({"model": label, "metric": metric, "seeds": len(got), "mean": mean,
                     "std": std, "target": f"{text}, std <= {max_std:g}", "verdict": verdict})
    return pd.DataFrame(rows)


def full_commands(cfg: CodebaseConfig, gpus: int = 8) -> pd.DataFrame:
    """The ``torchrun`` command that trains (then evaluates) each run of ``cfg`` on ``gpus``
    GPUs; the lr follows mmdet's linear scaling rule from the zoo's base lr
    (:func:`glimpse.zoo.base_lr`)."""
    root = cfg.data_root or "data/coco"
    rows = []
    for r in cfg.runs:
        lr = zoo_train_config(r.model, max_iters=r.max_iters, batch_size=r.batch_size,
                              lr=r.lr).scaled_lr(world_size=gpus)
        rows.append({"model": r.model, "command": (
            f"torchrun --nproc_per_node {gpus} -m glimpse train {r.model} "
            f"--data {r.data or cfg.train_data} --data-root {root} --device cuda "
            f"--work-dir work_dirs/{r.model} --max-iters {r.max_iters} "
            f"--batch-size {r.batch_size} --lr {lr:g} --warmup-iters {r.warmup_iters}")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def figure_anchors(image: Tensor, target: Mapping[str, Tensor], *,
                   strides: Sequence[int] = (4, 8, 16, 32, 64),
                   ratios: Sequence[float] = (0.5, 1.0, 2.0), scales: Sequence[float] = (8,),
                   pos_iou: float = 0.7, neg_iou: float = 0.3) -> Any:
    """Anchors of each FPN level on one image and the ones the RPN assigner makes positive.

    Args:
        image: float[3, H, W] in [0, 1], at the resolution the detector sees.
        target: its ``boxes`` (xyxy, pixels of ``image``).
        strides, ratios, scales: the RPN anchor setting (mmdet defaults: 32 px anchors at P2).
        pos_iou, neg_iou: RPN assigner thresholds (mmdet: 0.7 / 0.3, low-quality matches >= 0.3).

    Returns:
        A matplotlib figure: one panel per level with the anchors of the centre location
        (dashed), the positives (solid, coloured by their ground truth) and the ground truth.
    """
    import matplotlib.pyplot as plt

    from glimpse.assign.anchors import AnchorGenerator
    from glimpse.assign.assigner import MaxIoUAssigner

    gen = AnchorGenerator(strides, ratios=ratios, scales=scales)
    h, w = image.shape[-2:]
    sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    anchors = gen.grid_anchors(sizes)
    assigner = MaxIoUAssigner(pos_iou, neg_iou, min_pos_iou=neg_iou)
    gt = target["boxes"].float()
    # assign over all levels together, as the RPN does
    result = assigner.assign(torch.cat(anchors), gt)
    fig, axes = plt.subplots(1, len(strides), figsize=(2.2 * len(strides), 2.6))
    start = 0
    for level, (ax, lvl_anchors) in enumerate(zip(axes, anchors)):
        n = lvl_anchors.shape[0]
        inds = result.gt_inds[start:start + n]
        start += n
        show_image(ax, image, f"P{level + 2}: stride {strides[level]}, "
                         f"{int((inds > 0).sum())} positive")
        for g in gt:
            draw_box(ax, g, "white", lw=1.5)
        cy, cx = sizes[level][0] // 2, sizes[level][1] // 2
        a = gen.num_base_anchors
        centre = lvl_anchors.view(sizes[level][0], sizes[level][1], a, 4)[cy, cx]
        for box in centre:
            draw_box(ax, box, "yellow", lw=0.8, ls="--")
        for i in torch.nonzero(inds > 0).flatten().tolist():
            draw_box(ax, lvl_anchors[i], COLORS[(int(inds[i]) - 1) % len(COLORS)], lw=0.8)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    fig.suptitle("Anchors per FPN level (dashed: the centre location's anchors; "
                 "coloured: positives, IoU >= 0.7 or best match)", fontsize=8)
    fig.tight_layout()
    return fig


def figure_roi_assignment(image: Tensor, target: Mapping[str, Tensor], proposals: Tensor, *,
                          pos_iou: float = 0.5, max_show: int = 60) -> Any:
    """R-CNN assignment of proposals (IoU >= 0.5 foreground, else background; mmdet 1x).

    Args:
        image: float[3, H, W] in [0, 1].
        target: its ``boxes`` / ``labels``.
        proposals: [P, 4] xyxy proposals on ``image`` (e.g. the RPN's top scoring).
        pos_iou: foreground threshold.
        max_show: at most this many background proposals are drawn.

    Returns:
        A two-panel figure: foreground proposals coloured by their ground truth, and background
        proposals, with a histogram of the best IoUs in the title.
    """
    import matplotlib.pyplot as plt

    from glimpse.assign.assigner import MaxIoUAssigner

    assigner = MaxIoUAssigner(pos_iou, pos_iou, min_pos_iou=pos_iou, match_low_quality=False)
    res = assigner.assign(proposals.float(), target["boxes"].float(), target.get("labels"))
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(6, 3.2))
    fg = torch.nonzero(res.gt_inds > 0).flatten().tolist()
    bg = torch.nonzero(res.gt_inds == 0).flatten().tolist()[:max_show]
    show_image(a0, image, f"foreground: {len(fg)} proposals (IoU >= {pos_iou})")
    show_image(a1, image, f"background: {int((res.gt_inds == 0).sum())} proposals")
    for g in target["boxes"]:
        draw_box(a0, g, "white", lw=1.5)
        draw_box(a1, g, "white", lw=1.5)
    for i in fg:
        draw_box(a0, proposals[i], COLORS[(int(res.gt_inds[i]) - 1) % len(COLORS)], lw=0.7)
    for i in bg:
        draw_box(a1, proposals[i], "tab:gray", lw=0.5, alpha=0.8)
    fig.tight_layout()
    return fig


@torch.no_grad()
def two_stage_internals(model: nn.Module, image: Tensor) -> dict[str, Any]:
    """Intermediate states of a trained two-stage detector on one image, for the walkthrough.

    Runs the detector's own pieces in order (preprocessor, backbone + FPN, RPN head, RoI
    head stages) and keeps what the final detections hide.

    Args:
        model: a :class:`glimpse.detectors.two_stage.TwoStageDetector` with an RPN and a RoI head.
        image: float[3, H, W] in [0, 1], original resolution.

    Returns:
        ``objectness``: per FPN level a [h_l, w_l] map of the highest anchor objectness
        (sigmoid); ``proposals`` [P, 4] and ``proposal_scores`` [P]; ``stage_boxes``: per RoI
        stage the [P, 4] boxes it regressed the proposals to; ``stage_scores``: per stage the
        [P] best foreground probability; ``feature_shapes``: (C, h, w) per level. Boxes are
        xyxy in original pixels.
    """
    from glimpse.heads.cascade import CascadeContext

    was_training = model.training
    model.eval()
    try:
        batch = model.preprocessor([image])
        feats = model.features(batch.tensor)
        raw = model.rpn_head(feats)
        anchors = model.rpn_head.get_anchors(raw, batch.image_sizes, batch.pad_sizes)
        (found,) = model.rpn_head.predict(raw, anchors, batch.image_sizes)
        props, scores = found["boxes"], found["scores"]
        sx, sy = batch.scale_factors(0)
        to_orig = props.new_tensor([sx, sy, sx, sy])
        _, stages = model.roi_head.predict_boxes(CascadeContext(feats, batch.image_sizes),
                                                 [props], return_stages=True)
        return {
            "objectness": [lg[0].sigmoid().max(0).values for lg in raw[0]],
            "proposals": props[:, :4] / to_orig,
            "proposal_scores": scores,
            "stage_boxes": [stage[0][0] / to_orig for stage in stages],
            "stage_scores": [stage[0][1][:, 1:].max(1).values for stage in stages],
            "feature_shapes": [tuple(f.shape[1:]) for f in feats],
        }
    finally:
        model.train(was_training)


def pyramid_table(internals: Mapping[str, Any], image_size: tuple[int, int],
                  anchors_per_location: int = 3) -> pd.DataFrame:
    """FPN levels of the walkthrough image: stride, feature shape, anchors and proposals kept.

    Args:
        internals: output of :func:`two_stage_internals`.
        image_size: (height, width) of the padded network input (e.g. (128, 128)).
        anchors_per_location: 3 ratios x 1 scale in the RPN.
    """
    rows = []
    for level, (c, h, w) in enumerate(internals["feature_shapes"]):
        rows.append({"level": f"P{level + 2}", "stride": image_size[0] // h, "channels": c,
                     "height": h, "width": w, "anchors": h * w * anchors_per_location})
    return pd.DataFrame(rows)


def figure_rpn(image: Tensor, internals: Mapping[str, Any], *, top: int = 30) -> Any:
    """RPN objectness per FPN level and the top-scoring proposals after NMS."""
    import matplotlib.pyplot as plt

    maps = internals["objectness"]
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.1 * (len(maps) + 1), 2.5))
    for level, (ax, m) in enumerate(zip(axes, maps)):
        ax.imshow(m.cpu().numpy(), vmin=0, vmax=1, cmap="magma")
        ax.set_title(f"P{level + 2} objectness {tuple(m.shape)}", fontsize=7)
        ax.set_axis_off()
    props = internals["proposals"][:top]
    show_image(axes[-1], image, f"top {len(props)} of {len(internals['proposals'])} proposals")
    for box in props:
        draw_box(axes[-1], box, "yellow", lw=0.6)
    fig.tight_layout()
    return fig


def figure_cascade_stages(image: Tensor, internals: Mapping[str, Any],
                          target: Mapping[str, Tensor], *, k: int = 6) -> Any:
    """The ``k`` proposals that end with the highest score, through every RoI stage.

    Each panel draws the same ``k`` boxes (one colour each) after that stage's regression,
    with the ground truth in white, and the mean IoU of the boxes with their best-matching
    ground truth in the title: a cascade's later stages move the boxes closer.
    """
    import matplotlib.pyplot as plt
    from torchvision.ops import box_iou

    stages = [internals["proposals"], *internals["stage_boxes"]]
    final = internals["stage_scores"][-1]
    order = final.argsort(descending=True)[:k]
    gt = target["boxes"].float()
    fig, axes = plt.subplots(1, len(stages), figsize=(2.6 * len(stages), 2.9))
    axes = list(axes) if len(stages) > 1 else [axes]
    for t, (ax, boxes) in enumerate(zip(axes, stages)):
        chosen = boxes[order]
        iou = box_iou(chosen, gt).max(1).values.mean() if len(gt) and len(chosen) else 0.0
        name = "proposals" if t == 0 else f"after stage {t}"
        show_image(ax, image, f"{name}: mean IoU {float(iou):.3f}")
        for g in gt:
            draw_box(ax, g, "white", lw=1.5)
        for j, box in enumerate(chosen):
            draw_box(ax, box, COLORS[j % len(COLORS)], lw=1.0)
    fig.tight_layout()
    return fig
