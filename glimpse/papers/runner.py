"""One experiment runner for every paper: train a variant, evaluate it, repeat over seeds, and
say whether a paper's claim holds at this scale.

* :func:`train_and_evaluate` trains one :class:`Variant` (a zoo model or any model factory with
  its :class:`~glimpse.engine.train.TrainConfig`) with one seed, evaluates it and returns a
  :class:`TrainedRun` whose :class:`RunRecord` is what tables are made of.
* :func:`run_variants` runs every variant for every seed and returns a tidy DataFrame,
  one row per (variant, seed) with one column per metric.
* :func:`compare_paired` compares two variants seed by seed; every paper's "does the claim hold"
  table is made by it.

Seeding, the one way every paper does it:

1. ``seed_everything(seed)`` before the model is built (same initial weights for a seed);
2. :func:`~glimpse.engine.train.fit` seeds again with the same seed (``TrainConfig.seed`` is set
   to the run's seed), which fixes the data order and augmentations;
3. ``seed_everything(seed)`` again before evaluation, which runs in eval mode.

With ``deterministic=True`` on CPU, ``torch.use_deterministic_algorithms(True)`` and one thread
are set at steps 1 and 3 and left set, so the figure cells that follow a run repeat bit for bit.

Resuming: a run's work dir receives ``spec.json`` (what is being run) before training and
``manifest.json`` (the record) atomically after evaluation. A run whose manifest is readable
and whose spec equals the current one is finished: it is not retrained, its model is reloaded
from its checkpoint (a run whose checkpoint has gone is retrained; a run directory moved or
copied elsewhere is found by its paths relative to the manifest). A missing, partial or corrupt
manifest, or one of another spec, means "not finished"; training then continues from the run's
last checkpoint if ``spec.json`` matches, else starts from scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from glimpse.engine.seed import seed_everything
from glimpse.engine.train import TrainConfig, fit, load_checkpoint
from glimpse.io import atomic_write

__all__ = [
    "Evaluator",
    "EvalSubset",
    "RunRecord",
    "TrainedRun",
    "VERDICTS",
    "Variant",
    "coco_metrics",
    "compare_paired",
    "finished_run",
    "first_images",
    "read_manifest",
    "run_dir",
    "run_variants",
    "train_and_evaluate",
    "zoo_train_config",
]

MANIFEST = "manifest.json"
SPEC = "spec.json"
VERDICTS = ("holds", "does not hold", "inconclusive")

Evaluator = Callable[[nn.Module, Dataset, str], Mapping[str, float]]
"""``evaluate(model, val_set, device) -> {metric: value}``, the model in eval mode."""


def zoo_train_config(model: str, **fields: Any) -> TrainConfig:
    """A :class:`TrainConfig` whose ``base_lr`` is zoo model ``model``'s
    (:func:`glimpse.zoo.base_lr`: 0.02 per 16 images, RetinaNet 0.01); ``fields`` set the rest."""
    from glimpse import zoo

    return TrainConfig(base_lr=zoo.base_lr(model), **fields)


@dataclass(frozen=True)
class Variant:
    """One configuration of an experiment (a row of a paper's ablation).

    Attributes:
        name: label of the variant in tables and the name of its work dir.
        model: a :func:`glimpse.zoo.names` entry, built with ``num_classes`` from the training
            set's ``class_names`` and ``model_kwargs``; or a factory ``() -> nn.Module``.
        train: the training schedule; its ``seed`` is replaced by the run's seed.
        model_kwargs: keywords of the zoo builder (e.g. ``image_scale``); must be empty for a
            factory.
        proposals: a Fast R-CNN's proposal files ``(train split, val split)``
            (:mod:`glimpse.data.proposals`): it trains on the best 300 per image and is
            evaluated on all; ``None`` for every other model.
    """

    name: str
    model: str | Callable[[], nn.Module]
    train: TrainConfig
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    proposals: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Variant.name must be a non-empty string")
        if not isinstance(self.model, str) and self.model_kwargs:
            raise ValueError(f"Variant {self.name!r}: model_kwargs only apply to a zoo name")
        if self.proposals is not None and len(self.proposals) != 2:
            raise ValueError(f"Variant {self.name!r}: proposals must be (train file, val file), "
                             f"got {self.proposals!r}")

    @property
    def model_name(self) -> str:
        """The zoo name, or the factory's qualified name."""
        if isinstance(self.model, str):
            return self.model
        return getattr(self.model, "__qualname__", type(self.model).__name__)

    def build(self, num_classes: int) -> nn.Module:
        """A freshly initialised model (seed the generators first)."""
        if not isinstance(self.model, str):
            return self.model()
        from glimpse import zoo

        if num_classes < 1 and "num_classes" not in self.model_kwargs:
            raise ValueError(f"Variant {self.name!r}: the training set has no class_names; "
                             "give num_classes in model_kwargs")
        return zoo.build(self.model, **{"num_classes": num_classes, **self.model_kwargs})


@dataclass(frozen=True)
class RunRecord:
    """What one trained and evaluated run left (also the content of its manifest).

    Attributes:
        variant: :attr:`Variant.name`.
        model: :attr:`Variant.model_name`.
        seed: the run's seed.
        metrics: ``{name: value}`` from the evaluator (NaN where undefined).
        iterations: optimiser steps trained.
        train_seconds: sum of the logged iteration times.
        wall_seconds: training plus evaluation, as measured by the run that produced it.
        final_loss: summed training loss of the last iteration.
        checkpoint: path of the final checkpoint (``None`` for a run in a temporary dir).
        work_dir: the run's directory (``None`` for a temporary dir).
    """

    variant: str
    model: str
    seed: int
    metrics: Mapping[str, float]
    iterations: int
    train_seconds: float
    wall_seconds: float
    final_loss: float
    checkpoint: str | None
    work_dir: str | None


class TrainedRun(NamedTuple):
    """:func:`train_and_evaluate`'s result: the record, the trained model (eval mode, on the
    run's device), its per-iteration history, and whether a finished run was reused."""

    record: RunRecord
    model: nn.Module
    history: list[dict[str, float]]
    reused: bool


class EvalSubset(Subset):
    """The first images of a COCO-style detection set, without touching the set.

    Keeps what :func:`glimpse.engine.coco_eval.evaluate_detector` reads: ``coco`` (the whole
    ground truth), ``ids`` (this subset's image ids, so COCOeval only scores them),
    ``label_to_cat_id`` and ``class_names``.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        self.coco = getattr(dataset, "coco", None)
        ids = getattr(dataset, "ids", None)
        self.ids = [ids[i] for i in self.indices] if ids is not None else None
        self.label_to_cat_id = getattr(dataset, "label_to_cat_id", None)
        self.class_names = getattr(dataset, "class_names", None)


def first_images(dataset: Dataset, max_images: int | None) -> Dataset:
    """``dataset`` itself when ``max_images`` is ``None`` or covers it, else an
    :class:`EvalSubset` of its first ``max_images`` items."""
    if max_images is None or max_images >= len(dataset):
        return dataset
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
    return EvalSubset(dataset, range(max_images))


def coco_metrics(iou_types: Sequence[str] | None = None, batch_size: int = 1) -> Evaluator:
    """An evaluator of COCO metrics in percent (as the papers print them).

    Names: ``box_<k>`` and ``mask_<k>`` for every COCOeval key ``k`` (``AP``, ``AP50``, ``APs``,
    ...), and the proposal recalls without ``@`` (``AR1000``, ``AR_S``, ...). COCOeval's -1
    (no ground truth in an area range) becomes NaN.
    """
    from glimpse.engine.coco_eval import evaluate_detector

    prefixes = {"bbox": "box_", "segm": "mask_", "proposal": ""}

    def evaluate(model: nn.Module, dataset: Dataset, device: str) -> dict[str, float]:
        raw = evaluate_detector(model, dataset, device=device, iou_types=iou_types,
                                batch_size=batch_size, progress=False)
        return {f"{prefixes[kind]}{key.replace('@', '')}": 100.0 * v if v >= 0 else math.nan
                for kind, values in raw.items() for key, v in values.items()}

    evaluate.__qualname__ = f"coco_metrics(iou_types={iou_types}, batch_size={batch_size})"
    return evaluate


def run_dir(work_root: str | Path, variant: str, seed: int) -> Path:
    """``<work_root>/<variant as a file name>/seed<seed>``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", variant).strip("_") or "variant"
    return Path(work_root) / slug / f"seed{seed}"


def _prepare(seed: int, deterministic: bool, device: str) -> None:
    seed_everything(seed)
    if deterministic and torch.device(device).type == "cpu":
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)


def _file_sha1(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _spec(variant: Variant, train: TrainConfig, train_set: Dataset, val_set: Dataset,
          evaluate: Evaluator) -> dict[str, Any]:
    """What identifies a run: reusing a manifest needs every entry equal."""
    def data(ds: Dataset) -> dict[str, Any]:
        ids = getattr(ds, "ids", None)
        digest = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest() if ids else None
        return {"type": type(ds).__name__, "len": len(ds), "ids_sha1": digest}

    spec = {
        "variant": variant.name, "model": variant.model_name,
        "model_kwargs": {k: repr(v) for k, v in sorted(variant.model_kwargs.items())},
        "train": dataclasses.asdict(train), "train_set": data(train_set),
        "val_set": data(val_set), "evaluate": getattr(evaluate, "__qualname__", type(evaluate).__qualname__),
    }
    if variant.proposals is not None:  # only then: the specs of other runs stay as they were
        spec["proposals"] = [{"path": str(p), "sha1": _file_sha1(p)} for p in variant.proposals]
    # a JSON round trip, so the spec compares equal to one read back from disk
    return json.loads(json.dumps(spec))


def read_manifest(work_dir: str | Path, spec: Mapping[str, Any] | None = None
                  ) -> RunRecord | None:
    """The record of a finished run in ``work_dir``; ``None`` when the manifest is missing,
    unreadable, incomplete, or (given ``spec``) written for another spec."""
    path = Path(work_dir) / MANIFEST
    try:
        content = json.loads(path.read_text())
        if spec is not None and content["spec"] != spec:
            return None
        return _relocated(RunRecord(**content["record"]), Path(work_dir))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _relocated(record: RunRecord, work_dir: Path) -> RunRecord:
    """``record`` with its paths under ``work_dir``, where its manifest was read: a run
    directory copied or moved elsewhere (another machine, a renamed checkout) is still
    reused."""
    if record.work_dir is None:
        return record
    checkpoint = record.checkpoint
    if checkpoint is not None:
        with contextlib.suppress(ValueError):  # a checkpoint outside the run dir stays as is
            checkpoint = str(work_dir / Path(checkpoint).relative_to(record.work_dir))
    return dataclasses.replace(record, checkpoint=checkpoint, work_dir=str(work_dir))


def finished_run(variant: Variant, train_set: Dataset, val_set: Dataset, *, seed: int,
                 work_dir: str | Path, evaluate: Evaluator | None = None,
                 max_eval_images: int | None = None) -> RunRecord | None:
    """The record of ``variant``'s run with ``seed`` in ``work_dir`` if it is finished (a
    manifest of the same spec and its checkpoint), else ``None``; trains nothing. Arguments as
    :func:`train_and_evaluate`'s."""
    evaluate = evaluate or coco_metrics()
    train = dataclasses.replace(variant.train, seed=seed)
    spec = _spec(variant, train, train_set, first_images(val_set, max_eval_images), evaluate)
    record = read_manifest(work_dir, spec)
    if record is None or not record.checkpoint or not Path(record.checkpoint).is_file():
        return None
    return record


def _read_history(work_dir: Path) -> list[dict[str, float]]:
    log = work_dir / "log.jsonl"
    if not log.is_file():
        return []
    history = []
    for line in log.read_text().splitlines():
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return history


def train_and_evaluate(
    variant: Variant,
    train_set: Dataset,
    val_set: Dataset,
    *,
    seed: int,
    work_dir: str | Path | None = None,
    device: str = "cpu",
    evaluate: Evaluator | None = None,
    max_eval_images: int | None = None,
    deterministic: bool = False,
    reuse: bool = True,
) -> TrainedRun:
    """Train ``variant`` with ``seed`` on ``train_set`` and evaluate it on ``val_set``.

    Seeded as the module docstring says; neither dataset is modified (a Fast R-CNN variant's
    proposals go into copies of them).

    Args:
        work_dir: the run's directory (checkpoints, ``log.jsonl``, spec and manifest);
            ``None`` trains in a temporary directory that is deleted afterwards.
        device: where to train and evaluate (a resolved device string).
        evaluate: the metrics; default :func:`coco_metrics` (bbox, plus segm for mask models).
        max_eval_images: evaluate on the first this many images only (:func:`first_images`).
        deterministic: on CPU, deterministic algorithms and one thread (see module docstring).
        reuse: reuse a finished run (valid manifest of the same spec) and continue an
            unfinished one from its checkpoint; ``False`` always trains from scratch.
    """
    evaluate = evaluate or coco_metrics()
    if variant.proposals is not None:
        from glimpse.data.proposals import TRAIN_PROPOSALS, with_proposals

        train_set = with_proposals(train_set, variant.proposals[0], limit=TRAIN_PROPOSALS)
        val_set = with_proposals(val_set, variant.proposals[1], limit=None)
    val_set = first_images(val_set, max_eval_images)
    train = dataclasses.replace(variant.train, seed=seed)
    num_classes = len(getattr(train_set, "class_names", None) or [])
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="glimpse-run-") as tmp:
            return _train_and_evaluate(variant, train, num_classes, train_set, val_set,
                                       Path(tmp), None, device, evaluate, deterministic, False)
    work_dir = Path(work_dir)
    spec = _spec(variant, train, train_set, val_set, evaluate)
    return _train_and_evaluate(variant, train, num_classes, train_set, val_set, work_dir, spec,
                               device, evaluate, deterministic, reuse)


def _train_and_evaluate(variant: Variant, train: TrainConfig, num_classes: int,
                        train_set: Dataset, val_set: Dataset, work_dir: Path,
                        spec: dict[str, Any] | None, device: str, evaluate: Evaluator,
                        deterministic: bool, reuse: bool) -> TrainedRun:
    seed = train.seed
    _prepare(seed, deterministic, device)
    model = variant.build(num_classes)
    finished = read_manifest(work_dir, spec) if reuse and spec is not None else None
    if finished is not None and finished.checkpoint and Path(finished.checkpoint).is_file():
        model.load_state_dict(load_checkpoint(finished.checkpoint)["model"])
        return TrainedRun(finished, model.to(device).eval(), _read_history(work_dir), True)

    start = time.perf_counter()
    resume = False
    if spec is not None:
        spec_path = work_dir / SPEC
        try:
            resume = reuse and json.loads(spec_path.read_text()) == spec
        except (OSError, ValueError):
            resume = False
        (work_dir / MANIFEST).unlink(missing_ok=True)  # stale: this run is being redone
        atomic_write(spec_path, json.dumps(spec, indent=1))
    result = fit(model, train_set, train, work_dir, device=device, resume=resume)
    model.eval()
    _prepare(seed, deterministic, device)
    metrics = {k: float(v) for k, v in evaluate(model, val_set, device).items()}
    history = result.history
    checkpoint = result.last_checkpoint if spec is not None else None  # None: a temporary dir
    record = RunRecord(
        variant=variant.name, model=variant.model_name, seed=seed, metrics=metrics,
        iterations=result.iterations,
        train_seconds=float(sum(h.get("time", 0.0) for h in history)),
        wall_seconds=time.perf_counter() - start,
        final_loss=float(history[-1]["loss"]) if history else math.nan,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        work_dir=str(work_dir) if spec is not None else None)
    if spec is not None:
        atomic_write(work_dir / MANIFEST,
                     json.dumps({"spec": spec, "record": dataclasses.asdict(record)}, indent=1))
    return TrainedRun(record, model, history, False)


_RECORD_COLUMNS = ("variant", "model", "seed", "iterations", "train_seconds", "wall_seconds",
                   "final_loss", "checkpoint", "work_dir", "reused")


def run_variants(
    variants: Sequence[Variant],
    train_set: Dataset,
    val_set: Dataset,
    seeds: Iterable[int],
    *,
    work_root: str | Path | None = None,
    on_run: Callable[[TrainedRun], None] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Every variant for every seed (seed by seed, so a killed run leaves complete pairs).

    Args:
        work_root: runs live in :func:`run_dir` ``(work_root, variant.name, seed)`` and resume
            (finished runs are reused); ``None``: temporary directories, nothing reused.
        on_run: called with each :class:`TrainedRun` as soon as it is done (e.g. to keep a
            model for a figure).
        **options: ``device``, ``evaluate``, ``max_eval_images``, ``deterministic``, ``reuse``
            of :func:`train_and_evaluate`.

    Returns:
        One row per (variant, seed), in run order: ``variant``, ``model``, ``seed``,
        ``iterations``, ``train_seconds``, ``wall_seconds``, ``final_loss``, ``checkpoint``,
        ``work_dir``, ``reused`` (bool), then one column per metric (NaN where a run lacks it).
    """
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    rows = []
    for seed in seeds:
        for variant in variants:
            work = run_dir(work_root, variant.name, seed) if work_root is not None else None
            run = train_and_evaluate(variant, train_set, val_set, seed=seed, work_dir=work,
                                     **options)
            clash = set(run.record.metrics) & set(_RECORD_COLUMNS)
            if clash:
                raise ValueError(f"metric names {sorted(clash)} clash with record columns")
            record = dataclasses.asdict(run.record)
            metrics = record.pop("metrics")
            rows.append({**record, "reused": run.reused, **metrics})
            if on_run is not None:
                on_run(run)
    return pd.DataFrame(rows, columns=None if rows else list(_RECORD_COLUMNS))


def _verdict(mean: float, half_width: float, sign: int, n: int) -> str:
    if n < 2:
        return "inconclusive"
    if sign * mean - half_width > 0:
        return "holds"
    if sign * mean + half_width <= 0:
        return "does not hold"
    return "inconclusive"


def compare_paired(
    runs: pd.DataFrame,
    baseline: str,
    variant: str,
    metrics: Sequence[str],
    *,
    sign: int | Mapping[str, int] = 1,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Does ``variant`` beat ``baseline`` the way the paper says? Paired by seed.

    For each metric the differences ``d_s = variant_s - baseline_s`` are taken over the seeds
    both variants ran with a finite value. With ``n`` such seeds, mean ``m``, sample standard
    deviation ``sd`` (ddof 1) and ``h = t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` (half the
    paired-t confidence interval of the mean difference), the verdict is

    * ``"holds"``: ``sign * m - h > 0``, the whole interval on the paper's side (with
      ``sd = 0``: every seed moved the same non-zero amount the paper's way);
    * ``"does not hold"``: ``sign * m + h <= 0``, the whole interval on the other side or at
      zero (e.g. every seed tied: the claimed gain is absent);
    * ``"inconclusive"``: otherwise, and always when ``n < 2``.

    Args:
        runs: :func:`run_variants` output (columns ``variant``, ``seed`` and the metrics).
        baseline, variant: the two variant names.
        metrics: metric columns to compare.
        sign: the paper's sign of ``variant - baseline`` (+1: the variant is higher; -1:
            lower, e.g. a time or an error), one for all metrics or per metric.
        confidence: of the interval.

    Returns:
        One row per metric: ``metric``, ``baseline``, ``variant``, ``seeds`` (n),
        ``baseline_mean``, ``baseline_std``, ``variant_mean``, ``variant_std``, ``diff_mean``,
        ``diff_std`` (std: ddof 1, NaN for one seed), ``agree`` (seeds whose difference has
        the paper's sign; a difference of exactly 0 counts for neither side), ``disagree``,
        ``sign``, ``verdict``.
    """
    from scipy import stats

    for name in (baseline, variant):
        if name not in set(runs.get("variant", ())):
            raise ValueError(f"no runs of variant {name!r}; have {sorted(set(runs['variant']))}"
                             if "variant" in runs else "runs has no 'variant' column")
    missing = [m for m in metrics if m not in runs.columns]
    if missing:
        raise ValueError(f"unknown metric column(s) {missing}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    signs = sign if isinstance(sign, Mapping) else dict.fromkeys(metrics, sign)
    rows = []
    for metric in metrics:
        s = signs.get(metric)
        if s not in (1, -1):
            raise ValueError(f"sign of {metric!r} must be +1 or -1, got {s!r}")

        def by_seed(name: str) -> pd.Series:
            sel = runs.loc[runs["variant"] == name, ["seed", metric]].dropna()
            if sel["seed"].duplicated().any():
                raise ValueError(f"variant {name!r} has several runs with the same seed")
            return sel.set_index("seed")[metric].astype(float)

        pair = pd.concat([by_seed(baseline), by_seed(variant)], axis=1, join="inner",
                         keys=["a", "b"]).sort_index()
        n = len(pair)
        diff = pair["b"] - pair["a"]
        mean = float(diff.mean()) if n else math.nan
        std = float(diff.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)) \
            if n > 1 else math.nan
        rows.append({
            "metric": metric, "baseline": baseline, "variant": variant, "seeds": n,
            "baseline_mean": float(pair["a"].mean()) if n else math.nan,
            "baseline_std": float(pair["a"].std(ddof=1)) if n > 1 else math.nan,
            "variant_mean": float(pair["b"].mean()) if n else math.nan,
            "variant_std": float(pair["b"].std(ddof=1)) if n > 1 else math.nan,
            "diff_mean": mean, "diff_std": std,
            "agree": int((s * diff > 0).sum()), "disagree": int((s * diff < 0).sum()),
            "sign": s, "verdict": _verdict(mean, half, s, n),
        })
    return pd.DataFrame(rows)
