"""CARAFE (ICCV 2019): profiles and the experiments behind ``notebooks/03_carafe.ipynb``.

What the notebook regenerates, and from what:

* :func:`table1`: Faster R-CNN and Mask R-CNN with and without CARAFE (box and mask AP), the
  paper's Table 1 (``results/carafe/paper/table1.csv``) beside the profile's runs.
* :func:`table2`: the ten upsamplers in FPN (Table 2's nine rows and DySample): FLOPs per
  location counted by :func:`glimpse.layers.upsampler_flops`, parameters, forward time on this
  machine (:func:`upsampler_timings`), the paper's AP (``paper/table2.csv``), the later mmdet
  2.28 numbers (``paper/successors.csv``) and the AP measured at the profile for the rows it
  trains.
* :func:`claim_table`: does CARAFE beat nearest in FPN (box AP) and in the mask head (mask AP)
  at this scale? Paired by seed with :func:`glimpse.papers.runner.compare_paired`.
* figures of the operator on a real image (:func:`operator_state`, :func:`kernels_figure`,
  :func:`outputs_figure`, :func:`kernel_view`), made with the CARAFE of the FPN trained here.

Every detector is mmdet's ``FPN_CARAFE`` layout (an upsampler in every top-down step, P6 in the
top-down path, padding to 64) with the upsampler swapped by name (zoo ``*_fpn_carafe``
``upsampler=``), so the rows differ in the upsampler only, as in Table 2. The "without CARAFE"
rows of Table 1 are that layout with nearest upsampling, not mmdet's plain FPN (whose P6 is a
max-pool): glimpse departs from the paper here to compare one change at a time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.engine.train import TrainConfig
from glimpse.layers import CARAFE, UPSAMPLER_LABELS, UPSAMPLERS, upsampler_flops
from glimpse.papers import resolve_profile
from glimpse.papers.figures import show_image
from glimpse.papers.runner import (
    TrainedRun,
    Variant,
    coco_metrics,
    compare_paired,
    run_variants,
    zoo_train_config,
)
from glimpse.report import load_paper, repo_root

__all__ = [
    "CarafeExperiment",
    "CarafeRuns",
    "OperatorState",
    "PROFILES",
    "claim_table",
    "dry_run",
    "fpn_variant",
    "kernel_view",
    "kernels_figure",
    "load_example_image",
    "mask_variant",
    "operator_state",
    "outputs_figure",
    "paper_table",
    "resolve",
    "run_experiments",
    "table1",
    "table2",
    "upsampler_timings",
]

PAPER = "carafe"
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass(frozen=True)
class CarafeExperiment:
    """Everything one profile of the CARAFE notebook needs.

    Attributes:
        profile: "smoke", "cpu" or "full".
        device: "cpu", "cuda", ... (``resolve`` turns "auto" into one).
        data_root: folder holding ``coco128/`` (the figure's image; "" means
            ``<repo>/../shared/data``) or ``coco/`` (full).
        seed: first seed; paired runs use ``seed + i`` for i < ``num_seeds``.
        num_seeds: seeds of the paired runs (nearest vs CARAFE in FPN and in the mask head).
        data: detection data set (``glimpse.data.build_dataset`` name).
        faster_model, mask_model: zoo names (``*_fpn_carafe``, upsampler chosen by name).
        fpn_upsamplers: Table 2 rows trained as Faster R-CNN necks; rows in ``claim_fpn`` run
            every seed, the others the first seed only.
        claim_fpn: (baseline, variant) upsamplers of the FPN claim.
        mask_upsamplers: mask-head upsamplers trained in Mask R-CNN, every seed.
        mask_fpn_upsampler: the neck upsampler of those Mask R-CNNs (fixed, so the mask-head
            comparison changes the mask head only).
        claim_mask: (baseline, variant) mask-head upsamplers of the mask-head claim.
        iters, mask_iters: training iterations of a Faster / Mask R-CNN.
        batch_size: images per iteration.
        lr: peak learning rate (absolute).
        mask_lr: peak learning rate of the Mask R-CNN runs (None: ``lr``).
        warmup_iters: linear warm-up length.
        image_scale: detector input scale (long, short edge).
        max_val_images: evaluate on the first this many val images (None: all).
        timing_channels, timing_size: the map of the forward-time column (256 x 50 x 76 at
            stride 16 of an 800 x 1216 image).
        timing_repeats: timed forwards per upsampler (median reported, one warm-up first).
        figure_size: side of the square image fed to the trained model for the figures.
        work_root: resumable runs (relative paths: to the repository); "" trains in temporary
            folders and retrains every time.
        deterministic: deterministic algorithms and one thread on CPU.
        dry_run: only build (the ``full`` profile on a machine without COCO or GPUs).
    """

    profile: str
    device: str = "cpu"
    data_root: str = ""
    seed: int = 0
    num_seeds: int = 2
    data: str = "synthetic-smoke"
    faster_model: str = "faster_rcnn_slim_fpn_carafe"
    mask_model: str = "mask_rcnn_slim_fpn_carafe"
    fpn_upsamplers: tuple[str, ...] = ("nearest", "deconv", "carafe")
    claim_fpn: tuple[str, str] = ("nearest", "carafe")
    mask_upsamplers: tuple[str, ...] = ("nearest", "carafe")
    mask_fpn_upsampler: str = "nearest"
    claim_mask: tuple[str, str] = ("nearest", "carafe")
    iters: int = 80
    mask_iters: int = 40
    batch_size: int = 2
    lr: float = 0.02
    mask_lr: float | None = None
    warmup_iters: int = 20
    image_scale: tuple[int, int] = (128, 128)
    max_val_images: int | None = 20
    timing_channels: int = 256
    timing_size: tuple[int, int] = (50, 76)
    timing_repeats: int = 3
    figure_size: int = 256
    work_root: str = ""
    deterministic: bool = True
    dry_run: bool = False

    def __post_init__(self) -> None:
        for field_name in ("fpn_upsamplers", "mask_upsamplers", "claim_fpn", "claim_mask"):
            unknown = [n for n in getattr(self, field_name) if n not in UPSAMPLERS]
            if unknown:
                raise ValueError(f"{field_name}: unknown upsampler(s) {unknown}; known: "
                                 f"{', '.join(UPSAMPLERS)}")
        if self.mask_fpn_upsampler not in UPSAMPLERS:
            raise ValueError(f"mask_fpn_upsampler: unknown upsampler {self.mask_fpn_upsampler!r}")
        if not set(self.claim_fpn) <= set(self.fpn_upsamplers):
            raise ValueError(f"claim_fpn {self.claim_fpn} must be among fpn_upsamplers")
        if not set(self.claim_mask) <= set(self.mask_upsamplers):
            raise ValueError(f"claim_mask {self.claim_mask} must be among mask_upsamplers")
        if self.num_seeds < 1 or self.iters < 1 or self.mask_iters < 0:
            raise ValueError("num_seeds and iters must be >= 1, mask_iters >= 0")

    @property
    def seeds(self) -> list[int]:
        """Seeds of the paired runs."""
        return [self.seed + i for i in range(self.num_seeds)]


PROFILES: dict[str, CarafeExperiment] = {
    # CPU, synthetic shapes at 128 px, about 4 minutes for the whole notebook on one core:
    # nearest / deconv / CARAFE in FPN for 80 iterations of 2 images, two mask heads for 40,
    # two seeds of the paired rows (9 runs, 0.2-0.35 s per iteration). Far too short to
    # separate upsamplers: the claim table says so.
    "smoke": CarafeExperiment(profile="smoke"),
    # CPU, synthetic shapes at 256 px: all ten upsamplers in FPN for 400 iterations of 4 images
    # (0.7-0.9 s each on one core), three seeds of the claim pairs, the other eight upsamplers
    # at the first seed; the mask-head pair 400 iterations (about 1.1 s each). About 2 hours of
    # one core in all. The Mask R-CNN pair trains at half the lr: at 0.02 both mask heads
    # diverged at the end of warm-up (seed 0: loss_cls 55, gradient norm 434 at step 101, then
    # zero gradients and 0.0 AP), while the Faster R-CNN runs trained.
    "cpu": CarafeExperiment(
        profile="cpu", num_seeds=3, data="synthetic-cpu", fpn_upsamplers=tuple(UPSAMPLERS),
        iters=400, mask_iters=400, batch_size=4, mask_lr=0.01, warmup_iters=100,
        image_scale=(256, 256),
        max_val_images=200, work_root="results/carafe/runs/cpu"),
    # GPUs, mmdet's configs/carafe on COCO 2017 (1x: 12 epochs of 16 images, lr 0.02, R-50).
    "full": CarafeExperiment(
        profile="full", device="cuda", num_seeds=1, data="coco",
        faster_model="faster_rcnn_r50_fpn_carafe", mask_model="mask_rcnn_r50_fpn_carafe",
        fpn_upsamplers=tuple(UPSAMPLERS), iters=87_960, mask_iters=87_960, batch_size=2,
        warmup_iters=500, image_scale=(1333, 800), max_val_images=None,
        deterministic=False, dry_run=True, work_root="results/carafe/runs/full"),
}


def resolve(profile: str = "smoke", **overrides: Any) -> CarafeExperiment:
    """The profile's configuration with ``overrides`` applied (unknown keys are errors).

    ``device="auto"`` (or "") becomes "cuda" when available, else "cpu"; ``data_root=None``
    becomes ""; lists become tuples (papermill parameters pass straight through).
    """
    return resolve_profile(PROFILES, profile, "CARAFE", **overrides)


def _repo() -> Path:
    return repo_root() or Path.cwd()


def paper_table(name: str) -> pd.DataFrame:
    """Transcribed ``results/carafe/paper/<name>.csv`` (``table1``, ``table2``,
    ``successors``)."""
    return load_paper(PAPER, name, root=_repo() / "results")


# --------------------------------------------------------------------------------------------
# Training: the variants of the tables
# --------------------------------------------------------------------------------------------


def _model_kwargs(cfg: CarafeExperiment) -> dict[str, Any]:
    # the slim zoo rows carry the fast slim R-CNN recipe (glimpse.zoo), the R-50 rows mmdet's
    return {"image_scale": tuple(cfg.image_scale)}


def _train_config(cfg: CarafeExperiment, model: str, iters: int, lr: float) -> TrainConfig:
    return zoo_train_config(
        model, max_iters=iters, batch_size=cfg.batch_size, lr=lr,
        warmup_iters=min(cfg.warmup_iters, iters), amp=cfg.device != "cpu",
        checkpoint_every=0, keep_checkpoints=1, log_every=1, seed=cfg.seed,
        num_threads=1 if cfg.device == "cpu" else None)


def fpn_variant(cfg: CarafeExperiment, upsampler: str) -> Variant:
    """Faster R-CNN (``cfg.faster_model``) with ``upsampler`` in every FPN top-down step,
    named ``fpn_<upsampler>``."""
    return Variant(f"fpn_{upsampler}", cfg.faster_model,
                   _train_config(cfg, cfg.faster_model, cfg.iters, cfg.lr),
                   {**_model_kwargs(cfg), "upsampler": upsampler})


def mask_variant(cfg: CarafeExperiment, mask_upsampler: str) -> Variant:
    """Mask R-CNN (``cfg.mask_model``, neck upsampler ``cfg.mask_fpn_upsampler``) with
    ``mask_upsampler`` as the mask head's x2 upsampler, named ``mask_head_<upsampler>``."""
    return Variant(f"mask_head_{mask_upsampler}", cfg.mask_model,
                   _train_config(cfg, cfg.mask_model, cfg.mask_iters,
                                 cfg.lr if cfg.mask_lr is None else cfg.mask_lr),
                   {**_model_kwargs(cfg), "upsampler": cfg.mask_fpn_upsampler,
                    "mask_upsampler": mask_upsampler})


class CarafeRuns(NamedTuple):
    """:func:`run_experiments`' result: one row per (variant, seed) as
    :func:`~glimpse.papers.runner.run_variants` returns them, and the first seed's trained
    models by variant name (CPU, eval mode)."""

    runs: pd.DataFrame
    models: dict[str, nn.Module]


def _datasets(cfg: CarafeExperiment) -> tuple[Any, Any]:
    from glimpse.data import build_dataset

    # data_root holds coco128/ or coco/; the synthetic sets are generated
    root = Path(cfg.data_root) / cfg.data if cfg.data_root and cfg.data in ("coco", "coco128") \
        else None
    return (build_dataset(cfg.data, split="train", data_root=root, train=True),
            build_dataset(cfg.data, split="val", data_root=root, train=False))


def run_experiments(cfg: CarafeExperiment, *, verbose: bool = True,
                    only: Sequence[str] | None = None) -> CarafeRuns:
    """Train and evaluate every variant of ``cfg`` (``only``: the variants of these names,
    e.g. ``fpn_carafe``, ``mask_head_nearest``) through the shared runner.

    The claim pairs (``cfg.claim_fpn`` in FPN, every ``cfg.mask_upsamplers`` in the mask
    head) run for every seed of ``cfg.seeds``; the other ``cfg.fpn_upsamplers`` for the first
    seed only. Nothing is trained when ``cfg.dry_run``.
    """
    if cfg.dry_run:
        return CarafeRuns(pd.DataFrame(columns=["variant", "seed"]), {})
    train_set, val_set = _datasets(cfg)
    paired = [fpn_variant(cfg, u) for u in cfg.fpn_upsamplers if u in cfg.claim_fpn]
    if cfg.mask_iters:
        paired += [mask_variant(cfg, u) for u in cfg.mask_upsamplers]
    single = [fpn_variant(cfg, u) for u in cfg.fpn_upsamplers if u not in cfg.claim_fpn]
    if only is not None:
        known = {v.name for v in paired + single}
        unknown = sorted(set(only) - known)
        if unknown:
            raise ValueError(f"only: unknown variant(s) {unknown}; known: {sorted(known)}")
        paired = [v for v in paired if v.name in only]
        single = [v for v in single if v.name in only]
    models: dict[str, nn.Module] = {}

    def keep(run: TrainedRun) -> None:
        if run.record.seed == cfg.seed:
            models[run.record.variant] = run.model.cpu().eval()
        if verbose:
            r = run.record
            how = "reused" if run.reused else f"{r.wall_seconds:.0f} s"
            aps = ", ".join(f"{k} {r.metrics[k]:.1f}" for k in ("box_AP", "mask_AP")
                            if k in r.metrics)
            print(f"{r.variant} seed {r.seed}: {r.iterations} iterations, {how}; {aps}",
                  flush=True)

    work_root = None
    if cfg.work_root:
        work_root = Path(cfg.work_root)
        work_root = work_root if work_root.is_absolute() else _repo() / work_root
    options = dict(work_root=work_root, on_run=keep, device=cfg.device,
                   evaluate=coco_metrics(None, batch_size=4), max_eval_images=cfg.max_val_images,
                   deterministic=cfg.deterministic, reuse=bool(cfg.work_root))
    frames = [run_variants(paired, train_set, val_set, cfg.seeds, **options)] if paired else []
    if single:
        frames.append(run_variants(single, train_set, val_set, cfg.seeds[:1], **options))
    runs = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=["variant", "seed"])
    return CarafeRuns(runs, models)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _measured(runs: pd.DataFrame, variant: str, prefix: str) -> dict[str, float]:
    """Mean over seeds of ``<prefix>_<AP...>`` for ``variant`` (NaN when not trained)."""
    sel = runs[runs["variant"] == variant] if "variant" in runs else runs.iloc[:0]
    out = {m: float(sel[f"{prefix}_{m}"].mean()) if len(sel) and f"{prefix}_{m}" in sel
           else math.nan for m in _METRICS}
    out["seeds"] = int(len(sel))
    return out


def table1(cfg: CarafeExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (COCO test-dev) beside the profile's runs.

    Rows: the paper's six (method, task) rows. Measured: Faster R-CNN = ``fpn_<claim_fpn>``
    variants; Mask R-CNN = ``mask_head_<claim_mask>`` variants (neck upsampler
    ``cfg.mask_fpn_upsampler``, so at the default profiles "w/ CARAFE" has CARAFE in the mask
    head only, where the paper has it in FPN and the mask head; ``glimpse_variant`` says
    which). Columns ``<metric>_paper`` / ``<metric>_glimpse`` (mean over ``seeds``), then
    ``profile``, ``data``, ``iters``, ``source``.
    """
    paper = paper_table("table1")
    fpn = {"no": f"fpn_{cfg.claim_fpn[0]}", "yes": f"fpn_{cfg.claim_fpn[1]}"}
    mask = {"no": f"mask_head_{cfg.claim_mask[0]}", "yes": f"mask_head_{cfg.claim_mask[1]}"}
    rows = []
    for _, p in paper.iterrows():
        faster = p["detector"] == "faster_rcnn"
        variant = (fpn if faster else mask)[p["carafe"]]
        measured = _measured(runs, variant, "box" if p["task"] == "bbox" else "mask")
        if faster:
            what = f"{cfg.faster_model}, FPN {variant.removeprefix('fpn_')}"
        else:
            what = (f"{cfg.mask_model}, FPN {cfg.mask_fpn_upsampler}, mask head "
                    f"{variant.removeprefix('mask_head_')}")
        row: dict[str, Any] = {"method": p["method"], "task": p["task"], "glimpse_variant": what}
        for m in _METRICS:
            row[f"{m}_paper"] = float(p[m])
            row[f"{m}_glimpse"] = measured[m]
        row.update(seeds=measured["seeds"], profile=cfg.profile, data=cfg.data,
                   iters=cfg.iters if faster else cfg.mask_iters, source=p["source"])
        rows.append(row)
    return pd.DataFrame(rows)


def upsampler_timings(channels: int = 256, size: tuple[int, int] = (50, 76), repeats: int = 3,
                      names: Sequence[str] | None = None) -> pd.DataFrame:
    """Forward time of each upsampler (freshly initialised, eval, no grad) on one thread.

    Args:
        channels, size: the input map [1, channels, *size].
        repeats: timed forwards after one warm-up; the median is reported.
        names: upsamplers (default all of :data:`glimpse.layers.UPSAMPLERS`).

    Returns:
        One row per upsampler: ``name``, ``forward_ms`` (median), ``time_vs_nearest``
        (``forward_ms`` over nearest's, measured in the same call; NaN without nearest).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(names) if names is not None else list(UPSAMPLERS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(1, channels, *size, generator=torch.Generator().manual_seed(0))
        rows = []
        for name in names:
            module = UPSAMPLERS[name](channels, scale_factor=2).eval()
            times = []
            with torch.no_grad():
                module(x)
                for _ in range(repeats):
                    start = time.perf_counter()
                    module(x)
                    times.append(time.perf_counter() - start)
            rows.append({"name": name, "forward_ms": 1000 * statistics.median(times)})
    finally:
        torch.set_num_threads(threads)
    out = pd.DataFrame(rows)
    base = out.loc[out["name"] == "nearest", "forward_ms"]
    out["time_vs_nearest"] = out["forward_ms"] / float(base.iloc[0]) if len(base) else math.nan
    return out


def table2(cfg: CarafeExperiment, runs: pd.DataFrame,
           timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ten upsamplers in FPN (Table 2 and DySample), in :data:`UPSAMPLERS` order.

    Columns: ``name``, ``method``; ``flops_paper`` (as printed) and ``flops_glimpse`` (per
    input location, C = 256, s = 2, :func:`glimpse.layers.upsampler_flops`), ``params`` (one
    upsampler at C = 256); ``forward_ms``, ``time_vs_nearest`` (from ``timings``, NaN
    without); ``AP_paper``, ``AP50_paper``, ``AP75_paper`` (Table 2); ``AP_mmdet228`` (the
    later re-runs on mmdet 2.28.1, ``paper/successors.csv``); ``trained`` ("yes"/"no" at this
    profile), ``seeds`` and ``AP_glimpse``, ``AP50_glimpse``, ``AP75_glimpse`` (box, mean over
    seeds); ``profile``, ``data``, ``iters``.
    """
    flops = pd.DataFrame(upsampler_flops(256, 2)).set_index("name")
    paper = paper_table("table2").set_index("name")
    later = paper_table("successors").dropna(subset=["name"]).set_index("name")
    timed = timings.set_index("name") if timings is not None else pd.DataFrame()
    rows = []
    for name in UPSAMPLERS:
        measured = _measured(runs, f"fpn_{name}", "box")
        row: dict[str, Any] = {
            "name": name, "method": UPSAMPLER_LABELS[name],
            "flops_paper": paper.loc[name, "flops"] if name in paper.index else "",
            "flops_glimpse": int(flops.loc[name, "flops_per_input"]),
            "params": int(flops.loc[name, "parameters"]),
            "forward_ms": float(timed.loc[name, "forward_ms"]) if name in timed.index
            else math.nan,
            "time_vs_nearest": float(timed.loc[name, "time_vs_nearest"])
            if name in timed.index else math.nan}
        for m in ("AP", "AP50", "AP75"):
            row[f"{m}_paper"] = float(paper.loc[name, m]) if name in paper.index else math.nan
        row["AP_mmdet228"] = float(later.loc[name, "faster_AP"]) if name in later.index \
            else math.nan
        row["trained"] = "yes" if measured["seeds"] else "no"
        row["seeds"] = measured["seeds"]
        for m in ("AP", "AP50", "AP75"):
            row[f"{m}_glimpse"] = measured[m]
        row.update(profile=cfg.profile, data=cfg.data, iters=cfg.iters)
        rows.append(row)
    return pd.DataFrame(rows)


def claim_table(cfg: CarafeExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """Does CARAFE beat nearest at this scale? Paired by seed (``compare_paired``, 95 % t
    interval of the mean difference) in FPN (Faster R-CNN box AP) and in the mask head (Mask
    R-CNN mask AP), beside the paper's gain.

    Paper gains: FPN +1.3 box AP (Table 2, CARAFE 37.8 vs nearest 36.5); mask head +1.3 mask
    AP (Table 1, CARAFE in FPN *and* mask head: 35.9 vs 34.6; the paper's head-only ablation
    is not transcribed).

    ``informative`` is "no" when both variants average below 1 AP: neither detects yet, and a
    tie at zero ("does not hold" by the runner's rule) is no evidence against the paper.
    """
    pairs = [("FPN", f"fpn_{cfg.claim_fpn[0]}", f"fpn_{cfg.claim_fpn[1]}", "box_AP", 1.3,
              "Table 2: CARAFE 37.8 vs nearest 36.5 box AP"),
             ("mask head", f"mask_head_{cfg.claim_mask[0]}", f"mask_head_{cfg.claim_mask[1]}",
              "mask_AP", 1.3, "Table 1: Mask R-CNN w/ CARAFE (FPN + head) 35.9 vs 34.6 mask AP")]
    cols = ["where", "metric", "baseline", "variant", "seeds", "baseline_mean", "variant_mean",
            "diff_mean", "diff_std", "agree", "disagree", "paper_gain", "verdict", "informative",
            "profile", "data", "paper_note"]
    frames = []
    present = set(runs["variant"]) if "variant" in runs else set()
    for where, base, variant, metric, gain, note in pairs:
        if base not in present or variant not in present or metric not in runs:
            continue
        cmp = compare_paired(runs, base, variant, [metric])
        learned = max(float(cmp.loc[0, "baseline_mean"]), float(cmp.loc[0, "variant_mean"]))
        frames.append(cmp.assign(where=where, paper_gain=gain, paper_note=note,
                                 informative="yes" if learned >= 1.0 else "no",
                                 profile=cfg.profile, data=cfg.data))
    if not frames:  # nothing trained (e.g. the full profile's dry run)
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


# --------------------------------------------------------------------------------------------
# The operator on a real image
# --------------------------------------------------------------------------------------------


def load_example_image(cfg: CarafeExperiment | None = None, size: int = 256
                       ) -> tuple[Tensor, str]:
    """A real image, f32[3, size, size] in [0, 1] (short side resized to ``size``, centre
    crop), and where it came from: COCO128's ``000000000009.jpg`` when the shared data exists,
    else ``skimage.data.astronaut()``."""
    from torchvision.io import read_image
    from torchvision.transforms.functional import center_crop, resize

    if cfg is not None and cfg.data_root:
        root = Path(cfg.data_root)
    else:  # the real test data beside the repository, as glimpse.papers.fishnet finds it
        root = Path(os.environ.get("GLIMPSE_SHARED_DATA", _repo().parent / "shared" / "data"))
    path = root / "coco128" / "train2017" / "000000000009.jpg"
    if path.is_file():
        image, source = read_image(str(path)).float() / 255, f"coco128/train2017/{path.name}"
    else:
        from skimage import data as skdata

        image = torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float() / 255
        source = "skimage.data.astronaut()"
    return center_crop(resize(image, size, antialias=True), size), source


@dataclass(frozen=True)
class OperatorState:
    """One CARAFE step of a trained FPN on one image.

    Attributes:
        image: f32[3, S, S] in [0, 1], the model's input (no resize, no padding).
        stride: image pixels per input pixel of this step (its output has ``stride / 2``).
        features: [C, h, w] the step's input (the coarser top-down lateral).
        compressed: [C_m, h, w] the channel compressor's output.
        kernels: [k_up^2, 2h, 2w] reassembly kernels (group 0; each sums to 1).
        carafe, nearest, bilinear: [C, 2h, 2w] the three upsamplings of ``features``.
        up_kernel: k_up.
    """

    image: Tensor
    stride: int
    features: Tensor
    compressed: Tensor
    kernels: Tensor
    carafe: Tensor
    nearest: Tensor
    bilinear: Tensor
    up_kernel: int


@torch.no_grad()
def operator_state(model: nn.Module, image: Tensor, step: int = 0) -> OperatorState:
    """Run ``model``'s backbone and FPN on ``image`` and capture the CARAFE of top-down
    ``step`` (0: the finest, P3 -> P2).

    Args:
        model: a trained two-stage detector whose neck upsamples with CARAFE.
        image: f32[3, S, S] in [0, 1], S a multiple of 64 (fed as is, normalised as the
            model's preprocessor does).
    """
    from glimpse.preprocess import normalize

    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] % 64 or image.shape[2] % 64:
        raise ValueError(f"image must be [3, H, W] with H and W multiples of 64, got "
                         f"{tuple(image.shape)}")
    upsampler = model.neck.upsamplers[step]
    carafe = getattr(upsampler, "module", upsampler)
    if not isinstance(carafe, CARAFE):
        raise ValueError(f"the neck's top-down step {step} is {type(carafe).__name__}, "
                         "not CARAFE")
    captured: list[Tensor] = []
    handle = carafe.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    was_training = model.training
    try:
        pre = model.preprocessor
        model.eval().features(normalize(image, pre.mean, pre.std)[None])
    finally:
        handle.remove()
        model.train(was_training)
    x = captured[0]
    k = carafe.up_kernel
    return OperatorState(
        image=image, stride=image.shape[-1] // x.shape[-1], features=x[0],
        compressed=carafe.channel_compressor(x)[0], kernels=carafe.kernels(x)[0, : k * k],
        carafe=carafe(x)[0], nearest=F.interpolate(x, scale_factor=2, mode="nearest")[0],
        bilinear=F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)[0],
        up_kernel=k)


def _pca_rgb(maps: Sequence[Tensor]) -> list[np.ndarray]:
    """Project [C, H, W] maps on the 3 principal components of the first one (one shared
    basis, so the colours of several maps compare) -> [H, W, 3] in [0, 1]."""
    ref = maps[0].flatten(1).T
    mean = ref.mean(0)
    _, _, v = torch.linalg.svd(ref - mean, full_matrices=False)
    basis = v[:3].T
    proj = [((m.flatten(1).T - mean) @ basis) for m in maps]
    lo = proj[0].quantile(0.01, dim=0)
    hi = proj[0].quantile(0.99, dim=0)
    return [((p - lo) / (hi - lo + 1e-8)).clamp(0, 1).reshape(*m.shape[1:], -1).numpy()
            for p, m in zip(proj, maps)]


def _spread_pixels(state: OperatorState) -> list[tuple[int, int]]:
    """Four output pixels at the quarter points of the output map."""
    h, w = state.kernels.shape[-2:]
    return [(h * a // 4, w * b // 4) for a in (1, 3) for b in (1, 3)]


def _draw_kernel(ax: Any, state: OperatorState, y: int, x: int, color: Any) -> None:
    """The k_up x k_up input cells output pixel (y, x) reads, shaded by their weight, and the
    output pixel itself, in image coordinates."""
    from matplotlib.patches import Rectangle

    k, s = state.up_kernel, state.stride
    r = (k - 1) // 2
    weights = state.kernels[:, y, x].view(k, k)
    cy, cx = y // 2, x // 2  # the reassembly centre (input pixel)
    top = float(weights.max())
    for ky in range(k):
        for kx in range(k):
            iy, ix = cy + ky - r, cx + kx - r
            ax.add_patch(Rectangle((ix * s, iy * s), s, s, facecolor=color, edgecolor=color,
                                   alpha=0.75 * float(weights[ky, kx]) / top, linewidth=0.3))
    ax.add_patch(Rectangle((cx * s, cy * s), s, s, fill=False, edgecolor="white", linewidth=1))
    half = s / 2
    ax.plot([(x + 0.5) * half], [(y + 0.5) * half], marker="o", ms=3, color="white",
            markeredgecolor="black", markeredgewidth=0.5)


def kernels_figure(state: OperatorState, pixels: Sequence[tuple[int, int]] | None = None):
    """The talk's "How CARAFE works": the image, the compressed features (3 principal
    components), the predicted kernels of a few output pixels (default: the quarter points)
    drawn over the image (each cell of the k_up x k_up neighbourhood shaded by its weight; white
    square: reassembly centre; dot: the output pixel) and each kernel as a k_up x k_up heat
    map."""
    import matplotlib.pyplot as plt

    from glimpse.papers.figures import COLORS

    pixels = list(pixels) if pixels is not None else _spread_pixels(state)
    n = len(pixels)
    fig = plt.figure(figsize=(3.0 * 3, 3.2 + 1.6))
    grid = fig.add_gridspec(2, max(3, n), height_ratios=[2, 1])
    ax = fig.add_subplot(grid[0, 0])
    show_image(ax, state.image, "input image")
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(_pca_rgb([state.compressed])[0])
    ax.set_title(f"compressed features ({state.compressed.shape[0]} ch, "
                 f"{tuple(state.compressed.shape[1:])})", fontsize=8)
    ax.set_axis_off()
    ax = fig.add_subplot(grid[0, 2])
    show_image(ax, state.image, f"kernels of {n} output pixels")
    for i, (y, x) in enumerate(pixels):
        _draw_kernel(ax, state, y, x, COLORS[i % len(COLORS)])
    k = state.up_kernel
    vmax = max(float(state.kernels[:, y, x].max()) for y, x in pixels) if pixels else 1.0
    for i, (y, x) in enumerate(pixels):
        ax = fig.add_subplot(grid[1, i])
        # one colour scale from 0 for all kernels: uniform kernels (1/k_up^2) look flat
        ax.imshow(state.kernels[:, y, x].view(k, k).numpy(), cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"out ({y}, {x}), peak {float(state.kernels[:, y, x].max()):.2f}",
                     fontsize=7, color=COLORS[i % len(COLORS)])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def outputs_figure(state: OperatorState):
    """The step's input, then nearest, bilinear and CARAFE upsampling of it, all projected on
    the same 3 principal components (of the input)."""
    import matplotlib.pyplot as plt

    rgb = _pca_rgb([state.features, state.nearest, state.bilinear, state.carafe])
    panels = [("input (PCA)", rgb[0]), ("nearest", rgb[1]), ("bilinear", rgb[2]),
              ("CARAFE", rgb[3])]
    fig, axes = plt.subplots(1, 5, figsize=(12.5, 2.8))
    show_image(axes[0], state.image, "image")
    for ax, (title, img) in zip(axes[1:], panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{title} {img.shape[0]}x{img.shape[1]}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def kernel_view(state: OperatorState, y: int, x: int):
    """One output pixel: where its k_up x k_up kernel reads on the image (left) and the kernel
    (right). The interactive view of the notebook calls it for the picked pixel."""
    import matplotlib.pyplot as plt

    h, w = state.kernels.shape[-2:]
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"output pixel ({y}, {x}) outside the {h}x{w} output")
    k = state.up_kernel
    fig, axes = plt.subplots(1, 2, figsize=(5.6, 2.8))
    show_image(axes[0], state.image, f"output pixel ({y}, {x})")
    _draw_kernel(axes[0], state, y, x, "tab:red")
    axes[1].imshow(state.kernels[:, y, x].view(k, k).numpy(), cmap="magma", vmin=0,
                   vmax=float(state.kernels[:, y, x].max()))
    for ky in range(k):
        for kx in range(k):
            axes[1].text(kx, ky, f"{float(state.kernels[ky * k + kx, y, x]):.2f}",
                         ha="center", va="center", fontsize=6, color="cyan")
    axes[1].set_title(f"{k}x{k} kernel (sums to 1)", fontsize=8)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.tight_layout()
    return fig


def dry_run(cfg: CarafeExperiment, iters: int = 2) -> CarafeRuns:
    """Every variant of ``cfg`` trained ``iters`` iterations on synthetic-smoke at 128 px, one
    seed, 2 val images, no heavy heads: checks that the profile's models build and train."""
    small = dataclasses.replace(
        cfg, device="cpu", data="synthetic-smoke", num_seeds=1, iters=iters,
        mask_iters=min(iters, cfg.mask_iters), batch_size=1, warmup_iters=1,
        image_scale=(128, 128), faster_model=cfg.faster_model.replace("_r50_", "_slim_"),
        mask_model=cfg.mask_model.replace("_r50_", "_slim_"), max_val_images=2, work_root="",
        dry_run=False)
    return run_experiments(small, verbose=False)
