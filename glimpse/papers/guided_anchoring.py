"""Guided Anchoring (Wang et al., "Region Proposal by Guided Anchoring", CVPR 2019): profiles,
experiments, tables and figures of ``notebooks/02_guided_anchoring.ipynb``.

Three tables, paper value beside the measured one (with profile and seeds on every row):

* :func:`proposal_table`: AR100/300/1000 and AR_S/M/L of RPN, GA-RPN without feature adaption
  and GA-RPN (paper: ``results/guided_anchoring/paper/proposals.csv``);
* :func:`detection_table`: AP, AP50, AP75, AP_S/M/L of Fast R-CNN vs GA-Fast R-CNN, Faster
  R-CNN vs GA-Faster R-CNN and RetinaNet vs GA-RetinaNet (``paper/detection.csv``);
* :func:`claim_table`: does the claim hold at this scale? GA-RPN vs RPN AR1000, GA-Faster vs
  Faster AP and (when run) GA-Fast vs Fast AP, paired by seed
  (:func:`glimpse.papers.runner.compare_paired`).

The Fast R-CNN pair (``GAConfig.fast_rcnn``; in no committed profile yet) trains one Fast
R-CNN per seed on the proposals of that seed's RPN and one on GA-RPN's
(:func:`write_run_proposals`: every training and validation image, written next to the RPN's
run), the same detector on two proposal sets, as the paper compares them.

The "90% fewer anchors" claim is measured (:func:`anchor_count_table`): RPN scores
``A = 3`` anchors at every location, GA-RPN one anchor at each location whose location score
passes ``loc_filter_thr``. :func:`anchor_coverage` checks that the data lets the method matter:
how well RPN's fixed anchors can fit each ground-truth box, against the best a guided anchor of
the right shape centred on the feature grid could do.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from glimpse.papers import resolve_profile
from glimpse.papers.codebase import pick_example  # the walkthrough image, as notebook 00
from glimpse.papers.figures import COLORS, draw_box, show_image
from glimpse.papers.runner import (
    Variant,
    coco_metrics,
    compare_paired,
    run_dir,
    run_variants,
    zoo_train_config,
)
from glimpse.report import load_paper, repo_root

__all__ = [
    "CLAIMS",
    "DETECTION_PAIRS",
    "PROFILES",
    "PROPOSAL_METHODS",
    "GAConfig",
    "GARuns",
    "anchor_count_table",
    "anchor_coverage",
    "claim_table",
    "dense_anchor_count",
    "detection_table",
    "figure_anchor_shapes",
    "figure_kept_locations",
    "figure_location_maps",
    "figure_proposals",
    "ga_internals",
    "guided_anchor_count",
    "load_data",
    "loc_filter_threshold",
    "paper_detection",
    "paper_proposals",
    "pick_example",
    "proposal_table",
    "resolve",
    "run_experiments",
    "threshold_sweep",
    "variants",
    "write_run_proposals",
]

PAPER = "guided_anchoring"

PROPOSAL_METHODS = ("RPN", "GA-RPN w/o F.A.", "GA-RPN")
DETECTION_PAIRS = (("Fast R-CNN", "GA-Fast R-CNN"), ("Faster R-CNN", "GA-Faster R-CNN"),
                   ("RetinaNet", "GA-RetinaNet"))
# (baseline, variant, metric, paper's difference): the claims checked by seed pairs (a claim
# whose variants did not run is left out of the table)
CLAIMS = (("RPN", "GA-RPN", "AR1000", 68.5 - 59.4),
          ("Faster R-CNN", "GA-Faster R-CNN", "box_AP", 39.8 - 37.1),
          ("Fast R-CNN", "GA-Fast R-CNN", "box_AP", 39.4 - 37.1))
PROPOSAL_METRICS = ("AR100", "AR300", "AR1000", "AR_S", "AR_M", "AR_L")
DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RPN_ANCHORS_PER_LOCATION = 3  # ratios 0.5 / 1 / 2, one scale (mmdet RPN)

# variant name -> (zoo family, paired in the claims: runs over every seed)
_FAMILIES: dict[str, tuple[str, bool]] = {
    "RPN": ("rpn", True),
    "GA-RPN w/o F.A.": ("ga_rpn", False),
    "GA-RPN": ("ga_rpn", True),
    "Faster R-CNN": ("faster_rcnn", True),
    "GA-Faster R-CNN": ("ga_faster_rcnn", True),
    "RetinaNet": ("retinanet", False),
    "GA-RetinaNet": ("ga_retinanet", False),
    "Fast R-CNN": ("fast_rcnn", True),
    "GA-Fast R-CNN": ("ga_fast_rcnn", True),
}
# Fast R-CNN variant -> the proposal network whose proposals (same seed) it trains and tests on
_PROPOSAL_SOURCE = {"Fast R-CNN": "RPN", "GA-Fast R-CNN": "GA-RPN"}


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GAConfig:
    """Resolved configuration of the Guided Anchoring notebook (stored in its manifest).

    Attributes:
        profile: ``"smoke"``, ``"cpu"`` or ``"full"``.
        data: dataset name for :func:`glimpse.data.build_dataset` (train and val splits).
        backbone: zoo backbone of every model (``"slim"`` or ``"r50"``).
        data_root: data folder (``""``: the dataset's default).
        device: resolved device string.
        seed: the seed of the single-seed variants and of the figures' models.
        seeds: seeds of the paired variants (RPN, GA-RPN, Faster, GA-Faster).
        max_iters: optimiser steps of every variant (the same schedule for both of a pair).
        batch_size: images per step.
        lr_two_stage: peak lr of the RPNs and two-stage detectors (``None``: the zoo's, scaled
            to ``batch_size`` by mmdet's linear rule).
        lr_retinanet: peak lr of the RetinaNets (``None``: the zoo's, scaled).
        warmup_iters: linear warm-up steps.
        eval_batch_size: images per inference batch.
        max_eval_images: evaluate on the first this many validation images (``None``: all).
        loc_filter_thr: GA's location threshold at test (mmdet: 0.01).
        work_dir: checkpoints and logs (``""``: ``<repo>/work_dirs/guided_anchoring/<profile>``).
        deterministic: deterministic algorithms and one thread on CPU (nbval repeats the run).
        dry_run: only resolve and build the models (``full`` without COCO or GPUs).
        reuse_finished: reuse finished runs of the same spec (see :mod:`glimpse.papers.runner`).
        fast_rcnn: also run the Fast R-CNN pair on RPN / GA-RPN proposal files (every seed).
        unpaired: also run the variants outside the claims (GA-RPN w/o F.A., RetinaNet,
            GA-RetinaNet), with ``seed``; without them their table rows keep the paper's value
            only.
    """

    profile: str
    data: str
    backbone: str = "slim"
    data_root: str = ""
    device: str = "cpu"
    seed: int = 0
    seeds: tuple[int, ...] = (0, 1)
    max_iters: int = 100
    batch_size: int = 2
    # mmdet's linear scaling rule (0.02 and 0.01 at 16 images per step): at 0.02 and 4 images,
    # GA-RPN's gradient norm reached 75-300 within 100 steps, after which the network was dead
    # (norm 0.1, flat losses, AR1000 10 against RPN's 36); at the scaled 0.005 it trains
    lr_two_stage: float | None = None
    lr_retinanet: float | None = None
    warmup_iters: int = 20
    eval_batch_size: int = 4
    max_eval_images: int | None = None
    loc_filter_thr: float = 0.01
    work_dir: str = ""
    deterministic: bool = True
    dry_run: bool = False
    reuse_finished: bool = False
    fast_rcnn: bool = False
    unpaired: bool = True


# Every profile takes mmdet's linear lr scaling (see GAConfig.lr_two_stage).
# smoke: slim models on 128 px shapes, 100 steps of 2 images, what fits in a few minutes.
# cpu: 256 px shapes, the two headline claim pairs over three seeds (RPN / GA-RPN, Faster /
# GA-Faster), 400 steps of 4 images: 12 runs, about 1.5 hours of one core (at 256 px a step
# costs about 0.65 s for RPN, 0.75 s for Faster R-CNN and 1.1 s for GA-RPN, whose deformable
# convolution dominates). Left out to fit one session: the Fast R-CNN pair (with the proposal
# files of every image, about 40 minutes more; fast_rcnn=True) and the unpaired rows (GA-RPN
# w/o F.A., the RetinaNet pair; unpaired=True). full: the paper's R-50 1x recipe on COCO.
PROFILES: dict[str, GAConfig] = {
    "smoke": GAConfig("smoke", "synthetic-smoke"),
    "cpu": GAConfig("cpu", "synthetic-cpu", seeds=(0, 1, 2), max_iters=400, batch_size=4,
                    warmup_iters=100, reuse_finished=True, unpaired=False),
    "full": GAConfig("full", "coco", backbone="r50", max_iters=87960, batch_size=2,
                     warmup_iters=500, eval_batch_size=2, deterministic=False, dry_run=True),
}


def resolve(profile: str, *, device: str = "auto", data_root: str = "", seed: int = 0,
            **overrides: Any) -> GAConfig:
    """The configuration of ``profile`` with the notebook parameters applied.

    Raises:
        ValueError: unknown profile or device, or ``loc_filter_thr`` outside [0, 1].
        TypeError: unknown override.
    """
    cfg = resolve_profile(PROFILES, profile, PAPER, device=device,
                          data_root=str(data_root or ""), seed=int(seed), **overrides)
    if not 0.0 <= cfg.loc_filter_thr <= 1.0:
        raise ValueError(f"loc_filter_thr must lie in [0, 1], got {cfg.loc_filter_thr}")
    if not cfg.seeds:
        raise ValueError("seeds must name at least one seed")
    return cfg


def _work_dir(cfg: GAConfig) -> Path:
    if cfg.work_dir:
        return Path(cfg.work_dir)
    return (repo_root() or Path.cwd()) / "work_dirs" / PAPER / cfg.profile


def load_data(cfg: GAConfig) -> tuple[Any, Any]:
    """``(train, val)`` datasets of the profile via :func:`glimpse.data.build_dataset`."""
    from glimpse.data import build_dataset

    root = cfg.data_root or None
    return (build_dataset(cfg.data, split="train", data_root=root, train=True),
            build_dataset(cfg.data, split="val", data_root=root, train=False))


# --------------------------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------------------------


def _model_kwargs(cfg: GAConfig, name: str, image_scale: tuple[int, int]) -> dict[str, Any]:
    """Builder keywords of one variant. The slim zoo rows carry the slim R-CNN recipe (256-wide
    FCs, 128 sampled RoIs; Faster R-CNN also 300 training proposals); GA-Faster keeps its own
    R-CNN settings (IoU 0.6, stds 0.05/0.1) with the same 128 RoIs (see ``glimpse.zoo``)."""
    kwargs: dict[str, Any] = {"image_scale": tuple(image_scale)}
    if name == "GA-RPN w/o F.A.":
        kwargs["feature_adaption"] = False
    return kwargs


def variants(cfg: GAConfig, image_scale: tuple[int, int]) -> dict[str, Variant]:
    """Every variant of the experiments by name (:data:`PROPOSAL_METHODS`, then
    :data:`DETECTION_PAIRS`), all on the same schedule, no intermediate checkpoints."""
    out = {}
    for name, (family, _) in _FAMILIES.items():
        model = f"{family}_{cfg.backbone}_fpn"
        lr = cfg.lr_retinanet if "retinanet" in family else cfg.lr_two_stage
        train = zoo_train_config(
            model, max_iters=cfg.max_iters, batch_size=cfg.batch_size, lr=lr,
            warmup_iters=min(cfg.warmup_iters, cfg.max_iters), amp=cfg.device != "cpu",
            checkpoint_every=0, keep_checkpoints=1, log_every=1, seed=cfg.seed,
            num_threads=1 if cfg.device == "cpu" else None)
        out[name] = Variant(name, model, train, _model_kwargs(cfg, name, image_scale))
    return out


@dataclass
class GARuns:
    """The experiments' results: ``runs`` (:func:`~glimpse.papers.runner.run_variants` rows of
    every variant and seed) and one trained model per variant name (eval mode): ``cfg.seed``'s,
    or for a paired variant when ``cfg.seed`` is not among ``cfg.seeds``, its first seed's."""

    runs: pd.DataFrame
    models: dict[str, nn.Module]


def _evaluator(cfg: GAConfig, name: str) -> Any:
    proposal = _FAMILIES[name][0] in ("rpn", "ga_rpn")
    return coco_metrics(("proposal",) if proposal else None, cfg.eval_batch_size)


def run_experiments(cfg: GAConfig, data: tuple[Any, Any] | None, *,
                    names: Sequence[str] | None = None, verbose: bool = True) -> GARuns:
    """Train and evaluate the variants: the paired ones (RPN, GA-RPN, Faster, GA-Faster) for
    every seed of ``cfg.seeds``, the others for ``cfg.seed``, each through the shared runner
    (seeded, resumable under ``work_dir``, deterministic on CPU when ``cfg.deterministic``).
    GA models test at ``cfg.loc_filter_thr``.

    A Fast R-CNN variant runs after its proposal network (which then also runs, for the same
    seeds): each seed's RPN writes the proposal files the Fast R-CNN of that seed reads
    (:func:`write_run_proposals`).

    Args:
        cfg: resolved configuration (nothing runs when ``cfg.dry_run``).
        data: ``(train, val)`` datasets (unused, may be None, when ``cfg.dry_run``).
        names: run only these variants (default: all, the Fast R-CNN pair only with
            ``cfg.fast_rcnn``, the unpaired ones only with ``cfg.unpaired``).
        verbose: one line per run.
    """
    if names is None:
        names = [n for n, (_, paired) in _FAMILIES.items()
                 if (cfg.fast_rcnn or n not in _PROPOSAL_SOURCE) and (cfg.unpaired or paired)]
    names = list(names)
    unknown = sorted(set(names) - set(_FAMILIES))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(_FAMILIES)}")
    sources = {_PROPOSAL_SOURCE[n] for n in names if n in _PROPOSAL_SOURCE}
    names = [n for n in _FAMILIES if n in names or n in sources]  # sources run first
    if cfg.dry_run:
        return GARuns(pd.DataFrame(), {})
    if data is None:
        raise ValueError("run_experiments needs data=(train, val) unless cfg.dry_run")
    all_variants = variants(cfg, data[0].default_image_scale)
    models: dict[str, nn.Module] = {}

    proposal_files: dict[tuple[str, int], tuple[str, str]] = {}

    def keep(run: Any) -> None:
        name = run.record.variant
        if name in sources:
            _set_loc_filter_thr(run.model, cfg.loc_filter_thr)
            proposal_files[name, run.record.seed] = write_run_proposals(
                run, data, cfg, overwrite=not run.reused)
        first = (cfg.seeds if _FAMILIES[name][1] else (cfg.seed,))[0]
        if run.record.seed == cfg.seed or (cfg.seed not in cfg.seeds and run.record.seed == first):
            _set_loc_filter_thr(run.model, cfg.loc_filter_thr)
            models[name] = run.model
        if verbose:
            how = "reused" if run.reused else f"{run.record.wall_seconds:.0f} s"
            shown = ", ".join(f"{k} {v:.1f}" for k, v in run.record.metrics.items()
                              if k in ("AR1000", "box_AP"))
            print(f"{run.record.variant} seed {run.record.seed}: {how}; {shown}", flush=True)

    frames = []
    for name in names:
        paired = _FAMILIES[name][1]
        seeds = cfg.seeds if paired else (cfg.seed,)
        options = dict(work_root=_work_dir(cfg), on_run=keep, device=cfg.device,
                       evaluate=_GAEvaluator(cfg, name), max_eval_images=cfg.max_eval_images,
                       deterministic=cfg.deterministic, reuse=cfg.reuse_finished)
        if name not in _PROPOSAL_SOURCE:
            frames.append(run_variants([all_variants[name]], data[0], data[1], seeds,
                                       **options))
            continue
        for seed in seeds:  # each seed reads its own RPN's proposals
            variant = dataclasses.replace(
                all_variants[name], proposals=proposal_files[_PROPOSAL_SOURCE[name], seed])
            frames.append(run_variants([variant], data[0], data[1], (seed,), **options))
    return GARuns(pd.concat(frames, ignore_index=True), models)


@torch.no_grad()
def write_run_proposals(run: Any, data: tuple[Any, Any], cfg: GAConfig, *,
                        overwrite: bool = True) -> tuple[str, str]:
    """Write the proposals of a trained RPN / GA-RPN run on every training and validation
    image (no flip, all of them) as ``proposals_{train,val}.pt`` in the run's directory under
    the profile's work dir (:mod:`glimpse.data.proposals`; the variant, model, seed and
    ``loc_filter_thr`` recorded).

    Args:
        run: a :class:`~glimpse.papers.runner.TrainedRun` of a proposal network.
        data: ``(train, val)`` datasets.
        overwrite: rewrite files that exist (a reused run keeps the files it wrote).

    Returns:
        the two paths ``(train, val)``.
    """
    from glimpse.data.proposals import write_proposals
    from glimpse.engine.coco_eval import iter_inference

    folder = run_dir(_work_dir(cfg), run.record.variant, run.record.seed)
    paths = []
    for split, dataset in zip(("train", "val"), data):
        path = folder / f"proposals_{split}.pt"
        paths.append(str(path))
        if path.is_file() and not overwrite:
            continue
        plain = copy.copy(dataset)
        plain.transforms = None  # the training set's flip would move the proposals
        found = {image_id: torch.cat((det["boxes"], det["scores"][:, None]), 1)
                 for image_id, det in iter_inference(run.model, plain, device=cfg.device,
                                                     batch_size=cfg.eval_batch_size,
                                                     progress=False)}
        meta = {"variant": run.record.variant, "model": run.record.model,
                "seed": run.record.seed, "checkpoint": run.record.checkpoint,
                "loc_filter_thr": cfg.loc_filter_thr, "data": cfg.data, "split": split,
                "ann": str(getattr(dataset, "ann_file", "")),
                "written_by": "glimpse.papers.guided_anchoring.write_run_proposals"}
        write_proposals(path, found, meta)
    return paths[0], paths[1]


class _GAEvaluator:
    """COCO metrics of one variant, GA heads testing at ``loc_filter_thr`` (picklable, named
    in the run's spec by its threshold)."""

    def __init__(self, cfg: GAConfig, name: str) -> None:
        self.evaluate = _evaluator(cfg, name)
        self.thr = cfg.loc_filter_thr
        self.__qualname__ = f"{self.evaluate.__qualname__}, loc_filter_thr={self.thr}"

    def __call__(self, model: nn.Module, dataset: Any, device: str) -> Mapping[str, float]:
        _set_loc_filter_thr(model, self.thr)
        return self.evaluate(model, dataset, device)


def _ga_head(model: nn.Module) -> nn.Module | None:
    from glimpse.heads.guided_anchor import GuidedAnchorHead

    for part in (getattr(model, "rpn_head", None), getattr(model, "head", None)):
        if isinstance(part, GuidedAnchorHead):
            return part
    return None


def _set_loc_filter_thr(model: nn.Module, thr: float) -> None:
    head = _ga_head(model)
    if head is not None:
        head.anchoring = dataclasses.replace(head.anchoring, loc_filter_thr=float(thr))


@contextlib.contextmanager
def loc_filter_threshold(model: nn.Module, thr: float) -> Iterator[nn.Module]:
    """Within the block, the GA head of ``model`` keeps locations with score >= ``thr``."""
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"loc_filter_thr must lie in [0, 1], got {thr}")
    head = _ga_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no guided-anchor head")
    before = head.anchoring
    head.anchoring = dataclasses.replace(before, loc_filter_thr=float(thr))
    try:
        yield model
    finally:
        head.anchoring = before


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def paper_proposals(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Transcribed proposal recall (``paper/proposals.csv``): RPN, GA-RPN w/o F.A., GA-RPN."""
    return load_paper(PAPER, "proposals", root=root)


def paper_detection(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Transcribed COCO test-dev detection (``paper/detection.csv``), six detectors."""
    return load_paper(PAPER, "detection", root=root)


def _side_by_side(cfg: GAConfig, paper: pd.DataFrame, runs: pd.DataFrame,
                  methods: Sequence[str], metrics: Sequence[str], prefix: str) -> pd.DataFrame:
    paper = paper.set_index("method")
    rows = []
    for method in methods:
        sel = runs[runs["variant"] == method] if "variant" in runs else runs.iloc[:0]
        seeds = ",".join(str(s) for s in sorted(sel["seed"])) if len(sel) else ""
        for metric in metrics:
            col = prefix + metric
            values = sel[col].astype(float) if col in sel else pd.Series(dtype=float)
            rows.append({"method": method, "metric": metric,
                         "paper": float(paper.loc[method, metric]),
                         "measured": float(values.mean()) if len(values) else math.nan,
                         "measured_std": float(values.std(ddof=1)) if len(values) > 1
                         else math.nan,
                         "seeds": seeds, "profile": cfg.profile, "data": cfg.data,
                         "backbone": cfg.backbone, "iters": cfg.max_iters})
    return pd.DataFrame(rows)


def proposal_table(cfg: GAConfig, runs: pd.DataFrame,
                   root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Table 1: proposal recall (x100) of :data:`PROPOSAL_METHODS`, the paper's (COCO val,
    R-50-FPN) beside the measured mean over the seeds run, one row per (method, metric)."""
    return _side_by_side(cfg, paper_proposals(root), runs, PROPOSAL_METHODS, PROPOSAL_METRICS,
                         "")


def detection_table(cfg: GAConfig, runs: pd.DataFrame,
                    root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Table 2: box AP (x100) of :data:`DETECTION_PAIRS`, the paper's (COCO test-dev, R-50)
    beside the measured mean over the seeds run, one row per (method, metric)."""
    methods = [m for pair in DETECTION_PAIRS for m in pair]
    return _side_by_side(cfg, paper_detection(root), runs, methods, DETECTION_METRICS, "box_")


def claim_table(cfg: GAConfig, runs: pd.DataFrame) -> pd.DataFrame:
    """Table 3: each claim of :data:`CLAIMS` by :func:`~glimpse.papers.runner.compare_paired`
    over the seeds both variants ran, with the paper's difference beside the measured one."""
    frames = []
    ran = set(runs["variant"]) if "variant" in runs else set()
    for baseline, variant, metric, paper_diff in CLAIMS:
        if baseline in _PROPOSAL_SOURCE and not {baseline, variant} <= ran:
            continue  # the Fast R-CNN pair runs only with GAConfig.fast_rcnn
        table = compare_paired(runs, baseline, variant, [metric])
        table.insert(3, "paper_diff", paper_diff)
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    out["profile"] = cfg.profile
    out["iters"] = cfg.max_iters
    return out


# --------------------------------------------------------------------------------------------
# Anchors: counts and coverage
# --------------------------------------------------------------------------------------------


def dense_anchor_count(feature_sizes: Sequence[tuple[int, int]],
                       anchors_per_location: int = RPN_ANCHORS_PER_LOCATION) -> int:
    """Anchors an RPN scores on one image: ``sum_l H_l W_l * anchors_per_location``."""
    if anchors_per_location < 1:
        raise ValueError(f"anchors_per_location must be >= 1, got {anchors_per_location}")
    return sum(int(h) * int(w) for h, w in feature_sizes) * anchors_per_location


def guided_anchor_count(loc_logits: Sequence[Tensor], loc_filter_thr: float) -> int:
    """Guided anchors GA keeps on one image: locations with ``sigmoid(logit) >= thr``, one
    anchor each (padding locations are not excluded: count on unpadded maps).

    Args:
        loc_logits: per level the location logits, any shape ([1, H, W], [H, W], ...).
        loc_filter_thr: in [0, 1].
    """
    if not 0.0 <= loc_filter_thr <= 1.0:
        raise ValueError(f"loc_filter_thr must lie in [0, 1], got {loc_filter_thr}")
    return sum(int((x.sigmoid() >= loc_filter_thr).sum()) for x in loc_logits)


@torch.no_grad()
def ga_internals(model: nn.Module, image: Tensor) -> dict[str, Any]:
    """What the GA-RPN head of ``model`` computes on one image (eval mode).

    Returns:
        ``loc``: per level float [H_l, W_l] location scores (sigmoid); ``loc_logits``: the
        logits; ``anchors``: per level [H_l * W_l, 4] guided anchors (xyxy, original pixels);
        ``kept``: per level bool [H_l, W_l] at the head's ``loc_filter_thr``; ``strides``;
        the head's ``anchoring`` and ``train_cfg``; ``feature_sizes``; ``scale``: (sx, sy)
        from original to network pixels; ``proposals`` [P, 4] (original pixels) and ``scores``
        [P].
    """
    head = _ga_head(model)
    if head is None or not hasattr(model, "rpn_head"):
        raise ValueError(f"{type(model).__name__} has no GA-RPN head")
    was_training = model.training
    model.eval()
    try:
        batch = model.preprocessor([image])
        raw = head(model.features(batch.tensor))
        anchors = head.get_anchors(raw, batch.image_sizes, batch.pad_sizes)
        (found,) = head.predict(raw, anchors, batch.image_sizes)
        sx, sy = batch.scale_factors(0)
        to_orig = image.new_tensor([sx, sy, sx, sy])
        sizes = [tuple(x.shape[-2:]) for x in raw.loc_preds]
        return {
            "loc": [x[0, 0].sigmoid() for x in raw.loc_preds],
            "loc_logits": [x[0, 0] for x in raw.loc_preds],
            "anchors": [a / to_orig for a in anchors[0].anchors],
            "kept": [v.view(s) for v, s in zip(anchors[0].valid, sizes)],
            "strides": tuple(head.anchoring.strides),
            "anchoring": head.anchoring,
            "train_cfg": head.train_cfg,
            "feature_sizes": sizes,
            "scale": (sx, sy),
            "proposals": found["boxes"] / to_orig,
            "scores": found["scores"],
        }
    finally:
        model.train(was_training)


@torch.no_grad()
def anchor_count_table(ga_model: nn.Module, dataset: Any, loc_filter_thr: float,
                       max_images: int = 20) -> pd.DataFrame:
    """Anchors per image of RPN (3 per location) and GA-RPN (kept locations at
    ``loc_filter_thr``) on the same feature maps, over the first ``max_images`` images.

    Returns:
        One row per method: ``method``, ``anchors_per_image`` (mean), ``min``, ``max``,
        ``fraction_of_rpn`` (mean GA / RPN), ``loc_filter_thr``, ``images``.
    """
    dense, guided = [], []
    for i in range(min(max_images, len(dataset))):
        internals = ga_internals(ga_model, dataset[i][0])
        dense.append(dense_anchor_count(internals["feature_sizes"]))
        guided.append(guided_anchor_count(internals["loc_logits"], loc_filter_thr))
    n = len(dense)
    rows = []
    for method, counts in (("RPN (3 anchors per location)", dense),
                           ("GA-RPN (kept locations)", guided)):
        rows.append({"method": method, "anchors_per_image": sum(counts) / max(n, 1),
                     "min": min(counts, default=0), "max": max(counts, default=0),
                     "fraction_of_rpn": sum(counts) / max(sum(dense), 1),
                     "loc_filter_thr": loc_filter_thr, "images": n})
    return pd.DataFrame(rows)


def _centred_iou(w: Tensor, h: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """IoU of a w x h box with the same box shifted by (dx, dy) (broadcast)."""
    inter = (w - dx.abs()).clamp(min=0) * (h - dy.abs()).clamp(min=0)
    return inter / (2 * w * h - inter)


def anchor_coverage(dataset: Any, *, image_size: tuple[int, int] | None = None,
                    strides: Sequence[int] = (4, 8, 16, 32, 64),
                    ratios: Sequence[float] = (0.5, 1.0, 2.0), scale: float = 8.0,
                    max_images: int | None = None) -> pd.DataFrame:
    """How well can RPN's fixed anchors fit each ground-truth box, against guided anchors?

    For every box of the first ``max_images`` images: ``rpn_iou``, the best IoU over all RPN
    anchors (``ratios`` x one ``scale`` x stride, every location of every level); ``ga_iou``,
    the best IoU of an anchor of the box's own shape centred on a feature-grid location of
    any level (what a perfect shape prediction reaches; only the centre is off the grid).

    Returns:
        One row per (size band of sqrt(w h), aspect band): ``boxes``, the fraction of boxes with
        ``rpn_iou`` < 0.5 and < 0.7 (RPN: positive at 0.7 only), mean ``rpn_iou`` and
        ``ga_iou``, and the fraction with ``ga_iou`` < 0.5; last row ``all``.
    """
    from torchvision.ops import box_iou

    from glimpse.assign.anchors import AnchorGenerator

    gen = AnchorGenerator(strides, ratios=ratios, scales=(scale,))
    rows = []
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in range(n):
        image, target = dataset[i]
        boxes = target["boxes"].float()
        if not len(boxes):
            continue
        h_img, w_img = image_size or tuple(image.shape[-2:])
        sizes = [(math.ceil(h_img / s), math.ceil(w_img / s)) for s in strides]
        anchors = torch.cat(gen.grid_anchors(sizes))
        rpn_iou = box_iou(boxes, anchors).max(1).values
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        ga_best = torch.zeros_like(w)
        for s in strides:
            # nearest grid centre (anchors sit at multiples of the stride, mmdet's offset 0)
            dx, dy = cx - torch.round(cx / s) * s, cy - torch.round(cy / s) * s
            ga_best = torch.maximum(ga_best, _centred_iou(w, h, dx, dy))
        for k in range(len(boxes)):
            rows.append({"size": float((w[k] * h[k]).sqrt()), "aspect": float(w[k] / h[k]),
                         "rpn_iou": float(rpn_iou[k]), "ga_iou": float(ga_best[k])})
    boxes_df = pd.DataFrame(rows, columns=["size", "aspect", "rpn_iou", "ga_iou"])
    size_band = pd.cut(boxes_df["size"], [0, 16, 32, 64, math.inf],
                       labels=["<16 px", "16-32 px", "32-64 px", ">=64 px"], right=False)
    extreme = (boxes_df["aspect"].apply(lambda a: abs(math.log(a))) >= math.log(2.5))
    aspect_band = extreme.map({True: "extreme (>=2.5:1)", False: "moderate"})

    def summarise(size: str, aspect: str, sel: pd.DataFrame) -> dict[str, Any]:
        rpn, guided = sel["rpn_iou"], sel["ga_iou"]
        return {"size": size, "aspect": aspect, "boxes": len(sel),
                "rpn_iou_below_0.5": float((rpn < 0.5).mean()),
                "rpn_iou_below_0.7": float((rpn < 0.7).mean()),
                "rpn_iou_mean": float(rpn.mean()), "ga_iou_mean": float(guided.mean()),
                "ga_iou_below_0.5": float((guided < 0.5).mean())}

    out = []
    for size in size_band.cat.categories:
        for aspect in ("moderate", "extreme (>=2.5:1)"):
            sel = boxes_df[(size_band == size) & (aspect_band == aspect)]
            if len(sel):
                out.append(summarise(str(size), aspect, sel))
    out.append(summarise("all", "all", boxes_df))
    return pd.DataFrame(out)


@torch.no_grad()
def threshold_sweep(ga_model: nn.Module, dataset: Any, thresholds: Sequence[float], *,
                    max_images: int = 20, top: int = 300, iou: float = 0.5) -> pd.DataFrame:
    """Anchors kept and proposal recall of GA-RPN as ``loc_filter_thr`` varies (the notebook's
    static rendering of the threshold slider).

    Recall: the fraction of ground-truth boxes (first ``max_images`` images) that one of the
    ``top`` best proposals covers with IoU >= ``iou``.

    Returns:
        One row per threshold: ``loc_filter_thr``, ``anchors_per_image`` (mean),
        ``recall`` (at ``top`` proposals and IoU ``iou``), ``images``.
    """
    from torchvision.ops import box_iou

    n = min(max_images, len(dataset))
    rows = []
    for thr in thresholds:
        kept, hit, total = 0, 0, 0
        with loc_filter_threshold(ga_model, thr):
            for i in range(n):
                image, target = dataset[i]
                internals = ga_internals(ga_model, image)
                kept += sum(int(k.sum()) for k in internals["kept"])
                gt = target["boxes"].float()
                props = internals["proposals"][:top]
                total += len(gt)
                if len(gt) and len(props):
                    hit += int((box_iou(gt, props).max(1).values >= iou).sum())
        rows.append({"loc_filter_thr": float(thr), "anchors_per_image": kept / max(n, 1),
                     "recall": hit / total if total else math.nan, "images": n})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _centre_regions(target: Mapping[str, Tensor], internals: Mapping[str, Any]) -> list[Tensor]:
    """Per level bool [H_l, W_l]: the ground truth's centre regions (location target 1)."""
    from glimpse.assign import location_targets

    cfg = internals["train_cfg"]
    sx, sy = internals["scale"]
    boxes = target["boxes"].float() * torch.tensor([sx, sy, sx, sy])
    loc = location_targets([boxes], internals["feature_sizes"], internals["strides"],
                           internals["anchoring"].octave_base_scale, cfg.center_ratio,
                           cfg.ignore_ratio)
    return [t[0, 0] > 0 for t in loc.targets]


def figure_location_maps(image: Tensor, target: Mapping[str, Tensor],
                         internals: Mapping[str, Any]) -> Any:
    """GA-RPN's location score per FPN level with the ground truth's centre regions (the
    location branch's positives, white outlines) and the kept locations (cyan dots)."""
    import matplotlib.pyplot as plt

    regions = _centre_regions(target, internals)
    maps = internals["loc"]
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.1 * (len(maps) + 1), 2.6))
    show_image(axes[0], image, f"{len(target['boxes'])} objects")
    for g in target["boxes"]:
        draw_box(axes[0], g, "white", lw=1.2)
    for level, (ax, m) in enumerate(zip(axes[1:], maps)):
        ax.imshow(m.cpu().numpy(), vmin=0, vmax=1, cmap="magma")
        r = regions[level].float().cpu().numpy()
        if r.any():
            ax.contour(r, levels=[0.5], colors="white", linewidths=0.8)
        ys, xs = torch.nonzero(internals["kept"][level], as_tuple=True)
        ax.scatter(xs.numpy(), ys.numpy(), s=1, c="cyan", marker=".")
        ax.set_title(f"P{level + 2} (stride {internals['strides'][level]}): "
                     f"{int(regions[level].sum())} centre, {len(xs)} kept", fontsize=6)
        ax.set_axis_off()
    fig.suptitle("GA-RPN location scores (white: ground-truth centre regions; cyan: kept "
                 "locations)", fontsize=8)
    fig.tight_layout()
    return fig


def figure_kept_locations(image: Tensor, target: Mapping[str, Tensor], ga_model: nn.Module,
                          thresholds: Sequence[float]) -> Any:
    """Kept locations of every level on the image (dot colour by level) at each threshold:
    the static rendering of the ``loc_filter_thr`` slider, with the anchor count per panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(thresholds), figsize=(2.6 * len(thresholds), 2.9),
                             squeeze=False)
    for ax, thr in zip(axes[0], thresholds):
        with loc_filter_threshold(ga_model, thr):
            internals = ga_internals(ga_model, image)
        sx, sy = internals["scale"]
        total = sum(int(k.sum()) for k in internals["kept"])
        dense = dense_anchor_count(internals["feature_sizes"])
        show_image(ax, image, f"thr {thr:g}: {total} anchors ({100 * total / dense:.1f}% "
                              "of RPN's)")
        for g in target["boxes"]:
            draw_box(ax, g, "white", lw=1.0)
        for level, kept in enumerate(internals["kept"]):
            ys, xs = torch.nonzero(kept, as_tuple=True)
            s = internals["strides"][level]
            ax.scatter((xs * s).numpy() / sx, (ys * s).numpy() / sy, s=2 + level * 3,
                       color=COLORS[level % len(COLORS)], marker=".",
                       label=f"P{level + 2}")
    axes[0][0].legend(fontsize=5, loc="lower left", markerscale=2)
    fig.tight_layout()
    return fig


def figure_anchor_shapes(image: Tensor, target: Mapping[str, Tensor],
                         internals: Mapping[str, Any], *, max_objects: int = 6) -> Any:
    """At the location nearest each object's centre on the object's level (mmdet's level
    bands), RPN's 3 fixed anchors (left) and GA-RPN's predicted anchor (right)."""
    import matplotlib.pyplot as plt

    from glimpse.assign.anchors import AnchorGenerator

    strides = internals["strides"]
    gen = AnchorGenerator(strides, ratios=(0.5, 1.0, 2.0), scales=(8,))
    rpn_anchors = gen.grid_anchors(internals["feature_sizes"])
    sx, sy = internals["scale"]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(6, 3.2))
    show_image(a0, image, "RPN: 3 fixed anchors per location")
    show_image(a1, image, "GA-RPN: 1 predicted anchor per location")
    for k, box in enumerate(target["boxes"][:max_objects].float()):
        color = COLORS[k % len(COLORS)]
        w, h = float(box[2] - box[0]) * sx, float(box[3] - box[1]) * sy
        level = min(max(round(math.log2(max(math.sqrt(w * h), 1e-6) / (8 * strides[0]))), 0),
                    len(strides) - 1)
        s = strides[level]
        hl, wl = internals["feature_sizes"][level]
        cx, cy = float(box[0] + box[2]) / 2 * sx, float(box[1] + box[3]) / 2 * sy
        j = min(max(round(cy / s), 0), hl - 1) * wl + min(max(round(cx / s), 0), wl - 1)
        for ax in (a0, a1):
            draw_box(ax, box, "white", lw=1.2)
        a = gen.num_base_anchors
        for anchor in rpn_anchors[level][j * a:(j + 1) * a]:
            draw_box(a0, anchor / anchor.new_tensor([sx, sy, sx, sy]), color, lw=0.8, ls="--")
        draw_box(a1, internals["anchors"][level][j], color, lw=1.0)
    for ax in (a0, a1):
        ax.set_xlim(-0.5, image.shape[-1] - 0.5)
        ax.set_ylim(image.shape[-2] - 0.5, -0.5)
    fig.tight_layout()
    return fig


def figure_proposals(image: Tensor, target: Mapping[str, Tensor],
                     proposals: Mapping[str, Tensor], *, top: int = 20) -> Any:
    """The ``top`` best proposals of each model (``{title: [P, 4] boxes by score}``) on one
    image, with the ground truth in white (the talk's RPN vs GA-RPN figure)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(proposals), figsize=(3 * len(proposals), 3.2),
                             squeeze=False)
    for ax, (title, boxes) in zip(axes[0], proposals.items()):
        show_image(ax, image, f"{title}: top {min(top, len(boxes))} proposals")
        for box in boxes[:top]:
            draw_box(ax, box, "yellow", lw=0.6)
        for g in target["boxes"]:
            draw_box(ax, g, "white", lw=1.2)
    fig.tight_layout()
    return fig
