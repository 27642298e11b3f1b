"""CARAFE (ICCV 2019) beyond detection: the segmentation (Table 5) and inpainting (Table 7)
sections of ``notebooks/03_carafe.ipynb``.

* :func:`run_dense`: trains and evaluates every variant (:func:`variants`) with
  :mod:`glimpse.engine.train_dense` for each seed; the claim pairs (UperNet, Global&Local and
  Partial Conv, each without and with CARAFE) run every seed, PSPNet and the CARAFE-position
  ablation the first seed only. Runs are kept and resumed with the shared runner's manifests
  (:func:`~glimpse.papers.runner.run_dir`, :func:`~glimpse.papers.runner.read_manifest`).
* :func:`table5`, :func:`position_table`, :func:`table7`: the paper's numbers beside the
  measured ones; :func:`claim_table`: the paired verdicts
  (:func:`~glimpse.papers.runner.compare_paired`).
* :func:`inpainting_figure`, :func:`upsampler_figure`: the same masked photographs completed
  without and with CARAFE; what the PPM and fuse upsamplers of the trained UperNets output.

"Without CARAFE" is each model's own upsampling: bilinear at UperNet's three positions (CSAIL),
PSPNet's bilinear PPM, Global&Local's stride-2 transposed convs, Partial Conv's nearest x2.
UperNet "w/ CARAFE" has CARAFE at all three positions; the paper does not say which positions
its Table 5 row used, and its position ablation numbers are not public.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn

from glimpse.engine.seed import seed_everything
from glimpse.engine.train import load_checkpoint
from glimpse.engine.train_dense import (
    SEGMENTATION_RECIPES,
    GLTrainConfig,
    PConvTrainConfig,
    SegTrainConfig,
    fit_dense,
)
from glimpse.io import atomic_write
from glimpse.papers import resolve_profile
from glimpse.papers.figures import show_image
from glimpse.papers.runner import RunRecord, compare_paired, read_manifest, run_dir
from glimpse.report import load_paper, repo_root

__all__ = [
    "DenseExperiment",
    "DenseRuns",
    "DenseVariant",
    "PROFILES",
    "claim_table",
    "inpainting_figure",
    "position_table",
    "resolve",
    "run_dense",
    "table5",
    "table7",
    "upsampler_figure",
    "variants",
]

PAPER = "carafe"
POSITIONS = ("fpn", "ppm", "fuse")
SEG_METRICS = ("mIoU", "pixel_acc")
INPAINT_METRICS = ("l1_whole", "l1_hole", "psnr_whole", "psnr_hole", "ssim")


@dataclass(frozen=True)
class DenseExperiment:
    """Everything one profile of the notebook's dense sections needs.

    Attributes:
        profile: "smoke", "cpu" or "full".
        device: resolved device string.
        seed: first seed; the claim pairs run seeds ``seed .. seed + num_seeds - 1``.
        num_seeds: seeds of the claim pairs.
        seg_data: segmentation set (``glimpse.data.build_dataset`` name); ade20k_root: when
            set, ADE20K in its official layout at this folder (``ADEChallengeData2016``)
            instead of ``seg_data``.
        inpaint_data: inpainting image set; places_root: when set, Places365 (``data_256``,
            ``val_256``) at this folder instead of ``inpaint_data``.
        upernet, pspnet: segmentor zoo names (without ``_carafe``); gl, pconv: inpainters.
        seg_recipe: "" (``seg_iters`` / ``seg_batch`` / ``seg_lr`` with SGD-poly) or a key of
            :data:`~glimpse.engine.train_dense.SEGMENTATION_RECIPES` (its whole schedule).
        seg_iters, seg_batch, seg_lr: the segmentation schedule when ``seg_recipe`` is "".
        inpaint_iters, inpaint_batch: both inpainters' schedule (their own lrs and phases).
        max_seg_val_images, max_inpaint_val_images: evaluate on the first this many (None:
            all).
        work_root: keep and resume runs there (relative: to the repository); "": temporary.
        deterministic: deterministic algorithms and one thread on CPU.
        dry_run: build nothing, train nothing (``full`` on a machine without the data).
    """

    profile: str
    device: str = "cpu"
    seed: int = 0
    num_seeds: int = 1
    seg_data: str = "synthetic-smoke-seg"
    ade20k_root: str = ""
    inpaint_data: str = "inpaint-synthetic-smoke"
    places_root: str = ""
    upernet: str = "upernet_slim"
    pspnet: str = "pspnet_slim_d8"
    gl: str = "global_local_slim"
    pconv: str = "pconv_slim"
    seg_recipe: str = ""
    seg_iters: int = 20
    seg_batch: int = 2
    seg_lr: float = 0.01
    inpaint_iters: int = 20
    inpaint_batch: int = 4
    max_seg_val_images: int | None = 8
    max_inpaint_val_images: int | None = 8
    work_root: str = ""
    deterministic: bool = True
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.seg_recipe and self.seg_recipe not in SEGMENTATION_RECIPES:
            raise ValueError(f"seg_recipe {self.seg_recipe!r} is not one of "
                             f"{sorted(SEGMENTATION_RECIPES)}")
        if min(self.num_seeds, self.seg_iters, self.seg_batch, self.inpaint_iters,
               self.inpaint_batch) < 1:
            raise ValueError("num_seeds, seg_iters, seg_batch, inpaint_iters and inpaint_batch "
                             "must be >= 1")

    @property
    def seeds(self) -> list[int]:
        """Seeds of the claim pairs."""
        return [self.seed + i for i in range(self.num_seeds)]

    @property
    def seg_name(self) -> str:
        """The segmentation data in tables."""
        return "ade20k" if self.ade20k_root else self.seg_data

    @property
    def inpaint_name(self) -> str:
        """The inpainting data in tables."""
        return "places365" if self.places_root else self.inpaint_data


PROFILES: dict[str, DenseExperiment] = {
    # one core, about a minute: 20 iterations of each of the 10 variants on synthetic scenes
    # (128 px segmentation, 64 px inpainting), one seed: shows the path runs, not a verdict
    "smoke": DenseExperiment(profile="smoke"),
    # one core, 3 seeds of the claim pairs, each run at most ~8 minutes: synthetic scenes at
    # 256 px for segmentation, imagenette-mini photographs at 128 px with seeded masks
    "cpu": DenseExperiment(
        profile="cpu", num_seeds=3, seg_data="synthetic-cpu-seg",
        inpaint_data="inpaint-imagenette", seg_iters=400, seg_batch=4, seg_lr=0.01,
        inpaint_iters=600, inpaint_batch=8, max_seg_val_images=100,
        max_inpaint_val_images=100, work_root="results/carafe/runs/cpu_dense"),
    # GPUs: the paper's UperNet-50 with CSAIL's recipe on ADE20K, the full inpainters on
    # Places365 at 256 px (schedules shortened from mmediting's 500k / 1.3M iterations)
    "full": DenseExperiment(
        profile="full", device="cuda", seg_data="ade20k", inpaint_data="places365",
        upernet="upernet_r50", pspnet="pspnet_r50_d8", gl="global_local", pconv="pconv",
        seg_recipe="csail", inpaint_iters=100_000, inpaint_batch=12, max_seg_val_images=None,
        max_inpaint_val_images=None, deterministic=False, dry_run=True,
        work_root="results/carafe/runs/full_dense"),
}


def resolve(profile: str = "smoke", **overrides: Any) -> DenseExperiment:
    """The profile's configuration with ``overrides`` (papermill parameters) applied; paths
    ``None`` become ""."""
    for key in ("ade20k_root", "places_root"):
        if key in overrides and overrides[key] is None:
            overrides[key] = ""
    return resolve_profile(PROFILES, profile, "CARAFE dense", **overrides)


def _repo() -> Path:
    return repo_root() or Path.cwd()


# --------------------------------------------------------------------------------------------
# Variants and runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseVariant:
    """One trained row: ``name`` (tables, work dir), zoo ``model``, builder ``kwargs``,
    ``task`` ("segmentation" or "inpainting") and whether it runs every seed (``paired``)."""

    name: str
    model: str
    task: str
    paired: bool
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def variants(cfg: DenseExperiment) -> list[DenseVariant]:
    """The claim pairs (UperNet, Partial Conv; every seed), the Global&Local pair, PSPNet and
    the position ablation (first seed).

    Global&Local's pair is the dearest (1.7 s per iteration for both at ``cpu``, three
    discriminator and generator phases), so it runs the first seed only and its claim-table
    rows always say "not a verdict: 1 seed".
    """
    out = [DenseVariant("upernet", cfg.upernet, "segmentation", True),
           DenseVariant("upernet_carafe", f"{cfg.upernet}_carafe", "segmentation", True)]
    for method, model, paired in (("global_local", cfg.gl, False), ("pconv", cfg.pconv, True)):
        out += [DenseVariant(method, model, "inpainting", paired),
                DenseVariant(f"{method}_carafe", f"{model}_carafe", "inpainting", paired)]
    out.append(DenseVariant("pspnet", cfg.pspnet, "segmentation", False))
    out += [DenseVariant(f"upernet_carafe_{pos}", cfg.upernet, "segmentation", False,
                         {f"{pos}_upsampler": "carafe"}) for pos in POSITIONS]
    return out


class DenseRuns(NamedTuple):
    """:func:`run_dense`'s result: one row per (variant, seed) (``variant``, ``model``,
    ``seed``, ``iterations``, ``train_seconds``, ``final_loss``, ``reused``, then the metrics),
    and the first seed's models by variant (CPU, eval mode)."""

    runs: pd.DataFrame
    models: dict[str, nn.Module]


def _datasets(cfg: DenseExperiment) -> dict[str, Any]:
    from glimpse.data import build_dataset

    seg = ("ade20k", cfg.ade20k_root) if cfg.ade20k_root else (cfg.seg_data, None)
    inp = ("places365", cfg.places_root) if cfg.places_root else (cfg.inpaint_data, None)
    return {f"{task}_{split}": build_dataset(name, split=split, data_root=root or None,
                                             train=split == "train")
            for task, (name, root) in (("segmentation", seg), ("inpainting", inp))
            for split in ("train", "val")}


def _with_masks(dataset: Any, kind: str) -> Any:
    """A shallow copy of an inpainting set drawing ``kind`` masks (the set is not modified)."""
    out = copy.copy(dataset)
    out.mask_kind = kind
    return out


def _train_config(cfg: DenseExperiment, variant: DenseVariant, seed: int) -> Any:
    threads = 1 if cfg.device == "cpu" else None
    common = dict(seed=seed, num_threads=threads)
    if variant.task == "segmentation":
        if cfg.seg_recipe:
            return dataclasses.replace(SEGMENTATION_RECIPES[cfg.seg_recipe], **common)
        return SegTrainConfig(max_iters=cfg.seg_iters, batch_size=cfg.seg_batch, lr=cfg.seg_lr,
                              **common)
    config = GLTrainConfig if variant.model.startswith("global_local") else PConvTrainConfig
    return config(max_iters=cfg.inpaint_iters, batch_size=cfg.inpaint_batch, **common)


def _prepare(seed: int, cfg: DenseExperiment) -> None:
    seed_everything(seed)
    if cfg.deterministic and torch.device(cfg.device).type == "cpu":
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)


def _evaluate(cfg: DenseExperiment, model: nn.Module, variant: DenseVariant, val: Any
              ) -> dict[str, float]:
    from glimpse.engine.dense_eval import evaluate_inpainting, evaluate_segmentation

    if variant.task == "segmentation":
        m = evaluate_segmentation(model, val, max_images=cfg.max_seg_val_images)
        return {"mIoU": 100 * m["mIoU"], "pixel_acc": 100 * m["aAcc"]}
    return evaluate_inpainting(model, val, max_images=cfg.max_inpaint_val_images)


def _run_one(cfg: DenseExperiment, variant: DenseVariant, seed: int, data: dict[str, Any],
             work_root: Path | None) -> tuple[RunRecord, nn.Module, bool]:
    from glimpse import zoo

    task = variant.task
    train, val = data[f"{task}_train"], data[f"{task}_val"]
    kwargs = dict(variant.kwargs)
    if task == "segmentation" and cfg.seg_recipe:  # the recipe's augmentation
        from glimpse.data.transforms import segmentation_train_pipeline

        train = copy.copy(train)
        train.transforms = segmentation_train_pipeline(cfg.seg_recipe)
    if task == "inpainting":
        kind = zoo.inpainter_mask_kind(variant.model)
        train, val = _with_masks(train, kind), _with_masks(val, kind)
        if kind == "box":  # Global&Local's discriminators are built for the image size
            kwargs.update(image_size=train.image_size, local_size=train.image_size // 2)
    else:
        kwargs["num_classes"] = train.num_classes
    train_cfg = _train_config(cfg, variant, seed)
    spec = json.loads(json.dumps({
        "variant": variant.name, "model": variant.model, "kwargs": kwargs,
        "train": dataclasses.asdict(train_cfg), "train_set": [type(train).__name__, len(train)],
        "val_set": [type(val).__name__, len(val)], "max_val": [cfg.max_seg_val_images,
                                                              cfg.max_inpaint_val_images]}))
    with tempfile.TemporaryDirectory(prefix="glimpse-dense-") as tmp:
        work = run_dir(work_root, variant.name, seed) if work_root is not None else Path(tmp)
        _prepare(seed, cfg)
        model = zoo.build(variant.model, **kwargs)
        done = read_manifest(work, spec) if work_root is not None else None
        if done is not None and done.checkpoint and Path(done.checkpoint).is_file():
            model.load_state_dict(load_checkpoint(done.checkpoint)["model"])
            return done, model.to(cfg.device).eval(), True
        start = time.perf_counter()
        resume = False
        if work_root is not None:  # continue an unfinished run only if it is this spec's
            try:
                resume = json.loads((work / "spec.json").read_text()) == spec
            except (OSError, ValueError):
                resume = False
            (work / "manifest.json").unlink(missing_ok=True)
            atomic_write(work / "spec.json", json.dumps(spec, indent=1))
        result = fit_dense(model, train, train_cfg, work, device=cfg.device, resume=resume)
        _prepare(seed, cfg)
        metrics = {k: float(v) for k, v in _evaluate(cfg, model, variant, val).items()}
        history = result.history
        record = RunRecord(
            variant=variant.name, model=variant.model, seed=seed, metrics=metrics,
            iterations=result.iterations,
            train_seconds=float(sum(h.get("time", 0.0) for h in history)),
            wall_seconds=time.perf_counter() - start,
            final_loss=float(history[-1]["loss"]) if history else math.nan,
            checkpoint=str(result.last_checkpoint) if work_root is not None else None,
            work_dir=str(work) if work_root is not None else None)
        if work_root is not None:
            atomic_write(work / "manifest.json", json.dumps(
                {"spec": spec, "record": dataclasses.asdict(record)}, indent=1))
        return record, model.eval(), False


def run_dense(cfg: DenseExperiment, *, verbose: bool = True,
              only: Sequence[str] | None = None) -> DenseRuns:
    """Train and evaluate :func:`variants` (``only``: these names) seed by seed; nothing when
    ``cfg.dry_run``."""
    columns = ["variant", "model", "seed", "iterations", "train_seconds", "final_loss", "reused"]
    if cfg.dry_run:
        return DenseRuns(pd.DataFrame(columns=columns), {})
    chosen = [v for v in variants(cfg) if only is None or v.name in only]
    data = _datasets(cfg)
    work_root = None
    if cfg.work_root:
        work_root = Path(cfg.work_root)
        work_root = work_root if work_root.is_absolute() else _repo() / work_root
    rows, models = [], {}
    for seed in cfg.seeds:
        for v in chosen:
            if not v.paired and seed != cfg.seed:
                continue
            record, model, reused = _run_one(cfg, v, seed, data, work_root)
            if seed == cfg.seed:
                models[v.name] = model.cpu()
            rows.append({**{k: getattr(record, k) for k in columns if k != "reused"},
                         "reused": reused, **record.metrics})
            if verbose:
                how = "reused" if reused else f"{record.wall_seconds:.0f} s"
                shown = ", ".join(f"{k} {record.metrics[k]:.2f}" for k in
                                  ("mIoU", "pixel_acc", "l1_whole", "psnr_whole")
                                  if k in record.metrics)
                print(f"{v.name} seed {seed}: {record.iterations} iterations, {how}; {shown}",
                      flush=True)
    return DenseRuns(pd.DataFrame(rows, columns=None if rows else columns), models)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _mean(runs: pd.DataFrame, variant: str, metric: str) -> tuple[float, int]:
    """Mean over seeds of ``metric`` for ``variant`` and the number of seeds (NaN, 0 when the
    variant was not trained)."""
    if "variant" not in runs or metric not in runs:
        return math.nan, 0
    sel = runs.loc[runs["variant"] == variant, metric].dropna()
    return (float(sel.mean()), int(len(sel))) if len(sel) else (math.nan, 0)


def table5(cfg: DenseExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """Table 5 (ADE20K val, single scale): the paper's rows beside the profile's runs.

    Columns: ``method``, ``mIoU_paper``, ``pixel_acc_paper``, ``trained_by_paper`` ("no":
    PSPNet and PSANet are those papers' own numbers, quoted), ``mIoU_glimpse``,
    ``pixel_acc_glimpse`` (mean over ``seeds``; PSANet is not implemented), ``glimpse_model``,
    ``seeds``, ``profile``, ``data``, ``iters``, ``source``.
    """
    rows = []
    for _, p in load_paper(PAPER, "table5", root=_repo() / "results").iterrows():
        variant = p["variant"] if isinstance(p["variant"], str) else ""
        miou, seeds = _mean(runs, variant, "mIoU")
        acc, _ = _mean(runs, variant, "pixel_acc")
        model = {"upernet": cfg.upernet, "upernet_carafe": f"{cfg.upernet}_carafe",
                 "pspnet": cfg.pspnet}.get(variant, "not implemented")
        rows.append({"method": p["method"], "mIoU_paper": float(p["mIoU"]),
                     "pixel_acc_paper": float(p["pixel_acc"]),
                     "trained_by_paper": p["trained_by_paper"], "mIoU_glimpse": miou,
                     "pixel_acc_glimpse": acc, "glimpse_model": model, "seeds": seeds,
                     "profile": cfg.profile, "data": cfg.seg_name, "iters": _seg_iters(cfg),
                     "source": p["source"]})
    return pd.DataFrame(rows)


def _seg_iters(cfg: DenseExperiment) -> int:
    return SEGMENTATION_RECIPES[cfg.seg_recipe].max_iters if cfg.seg_recipe else cfg.seg_iters


def position_table(cfg: DenseExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """CARAFE at each UperNet position (none, FPN, PPM, fuse, all three): measured mIoU and
    pixel accuracy (first seed for the single positions, mean over seeds for none / all), and
    the change against no CARAFE. The paper's position ablation numbers are not public
    (``paper_mIoU`` NaN); its Table 5 pair is given for none / all, whose positions it does
    not state."""
    rows = []
    for where, variant, paper in (("none", "upernet", 40.44), ("FPN", "upernet_carafe_fpn", None),
                                  ("PPM", "upernet_carafe_ppm", None),
                                  ("fuse", "upernet_carafe_fuse", None),
                                  ("all three", "upernet_carafe", 42.23)):
        miou, seeds = _mean(runs, variant, "mIoU")
        acc, _ = _mean(runs, variant, "pixel_acc")
        base = runs.loc[(runs["variant"] == "upernet") & (runs["seed"] == cfg.seed), "mIoU"] \
            if "mIoU" in runs else pd.Series(dtype=float)
        first = runs.loc[(runs["variant"] == variant) & (runs["seed"] == cfg.seed), "mIoU"] \
            if "mIoU" in runs else pd.Series(dtype=float)
        delta = float(first.iloc[0] - base.iloc[0]) if len(first) and len(base) else math.nan
        rows.append({"carafe_at": where, "variant": variant,
                     "paper_mIoU": math.nan if paper is None else paper,
                     "mIoU_glimpse": miou, "pixel_acc_glimpse": acc, "seeds": seeds,
                     "mIoU_vs_none_seed0": delta, "profile": cfg.profile,
                     "data": cfg.seg_name})
    return pd.DataFrame(rows)


def table7(cfg: DenseExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """Table 7 (Places val): the paper's L1 (%) and PSNR (dB) beside the measured L1, PSNR
    (whole image and hole) and SSIM (mean over ``seeds``). Masks: box holes for Global&Local,
    free-form for Partial Conv, a fixed seeded set (mmediting draws them at random; the paper
    does not publish its masks, so only the differences compare)."""
    rows = []
    for _, p in load_paper(PAPER, "table7", root=_repo() / "results").iterrows():
        row: dict[str, Any] = {"method": p["method"], "L1_paper": float(p["L1"]),
                               "PSNR_paper": float(p["PSNR"])}
        for metric in INPAINT_METRICS:
            row[f"{metric}_glimpse"] = _mean(runs, p["variant"], metric)[0]
        row["seeds"] = _mean(runs, p["variant"], "psnr_whole")[1]
        model = cfg.gl if p["variant"].startswith("global_local") else cfg.pconv
        row.update(glimpse_model=model + ("_carafe" if p["variant"].endswith("_carafe")
                                          else ""),
                   masks="box" if model.startswith("global_local") else "free_form",
                   profile=cfg.profile, data=cfg.inpaint_name, iters=cfg.inpaint_iters,
                   source=p["source"])
        rows.append(row)
    return pd.DataFrame(rows)


def claim_table(cfg: DenseExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """Does CARAFE help at this scale? Paired by seed (``compare_paired``): UperNet mIoU (paper
    +1.79), Partial Conv and Global&Local PSNR (paper +0.20 and +1.13 dB) and L1 (paper -0.24
    and -0.78 %). ``scope`` is "not a verdict: 1 seed" below two seeds."""
    pairs = [("UperNet", "upernet", "mIoU", 1, 42.23 - 40.44),
             ("Partial Conv", "pconv", "psnr_whole", 1, 20.98 - 20.78),
             ("Partial Conv", "pconv", "l1_whole", -1, 5.72 - 5.96),
             ("Global&Local", "global_local", "psnr_whole", 1, 20.71 - 19.58),
             ("Global&Local", "global_local", "l1_whole", -1, 6.00 - 6.78)]
    cols = ["model", "metric", "seeds", "baseline_mean", "variant_mean", "diff_mean",
            "diff_std", "agree", "disagree", "paper_diff", "verdict", "scope", "profile"]
    present = set(runs["variant"]) if "variant" in runs else set()
    frames = []
    for model, base, metric, sign, gain in pairs:
        if {base, f"{base}_carafe"} <= present and metric in runs:
            cmp = compare_paired(runs, base, f"{base}_carafe", [metric], sign=sign)
            n = int(cmp.loc[0, "seeds"])
            frames.append(cmp.assign(model=model, paper_diff=round(gain, 2),
                                     scope=f"{n} seeds" if n > 1 else "not a verdict: 1 seed",
                                     profile=cfg.profile))
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def inpainting_figure(cfg: DenseExperiment, models: Mapping[str, nn.Module],
                      num_images: int = 3):
    """The first ``num_images`` validation photographs with their fixed masks, completed by
    each method without and with CARAFE (rows: image x method; columns: masked input, without,
    with CARAFE, ground truth)."""
    import matplotlib.pyplot as plt

    from glimpse import zoo

    val = _datasets(cfg)["inpainting_val"]
    methods = [(m, n) for m, n in (("global_local", cfg.gl), ("pconv", cfg.pconv))
               if m in models and f"{m}_carafe" in models]
    n = min(num_images, len(val))
    fig, axes = plt.subplots(max(1, n * len(methods)), 4, figsize=(8, 2 * n * len(methods)),
                             squeeze=False)
    row = 0
    for i in range(n):
        for method, name in methods:
            image, mask = _with_masks(val, zoo.inpainter_mask_kind(name))[i]
            masked = image * (1 - mask) + mask * 0.5
            outs = [models[v].eval()(image[None], mask[None])["completed"][0]
                    for v in (method, f"{method}_carafe")]
            titles = (f"{method} masked", "without CARAFE", "with CARAFE", "ground truth")
            for ax, im, title in zip(axes[row], (masked, *outs, image), titles):
                show_image(ax, im.clamp(0, 1), title)
            row += 1
    fig.tight_layout()
    return fig


def _pca(x: Tensor) -> Tensor:
    """[C, H, W] -> [3, H, W] in [0, 1]: the map projected on its 3 principal components."""
    flat = x.flatten(1).T
    flat = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    proj = flat @ v[:3].T
    lo, hi = proj.min(0).values, proj.max(0).values
    return ((proj - lo) / (hi - lo + 1e-8)).T.reshape(3, *x.shape[1:])


@torch.no_grad()
def upsampler_figure(models: Mapping[str, nn.Module], image: Tensor):
    """What UperNet's PPM (bin 6 -> C5 size) and fuse (P5 -> P2, x8) upsamplers see and
    output, for the trained UperNet without and with CARAFE (maps shown by their first three
    principal components). ``image`` f32[3, H, W] in [0, 1]."""
    import matplotlib.pyplot as plt

    names = [n for n in ("upernet", "upernet_carafe") if n in models]
    fig, axes = plt.subplots(len(names), 5, figsize=(12, 2.6 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        model = models[name].eval()
        head = model.decode_head
        seen: dict[str, tuple[Tensor, Tensor]] = {}
        hooks = [mod.register_forward_hook(
            lambda m, args, out, key=key: seen.__setitem__(key, (args[0][0], out[0])))
            for key, mod in (("ppm", head.ppm.upsamplers[-1]),
                             ("fuse", head.fuse_upsamplers[-1]))]
        try:
            model([image])
        finally:
            for h in hooks:
                h.remove()
        show_image(row[0], image, f"{name}: input")
        for ax, (key, which), title in zip(
                row[1:], (("ppm", 0), ("ppm", 1), ("fuse", 0), ("fuse", 1)),
                ("PPM bin 6 (in)", "PPM upsampled", "fuse: P5 (in)", "fuse: P5 -> P2")):
            m = seen[key][which]
            show_image(ax, _pca(m.float()), f"{title} {tuple(m.shape[-2:])}")
    fig.tight_layout()
    return fig
