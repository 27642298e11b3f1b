"""FishNet (NeurIPS 2018): profiles and the experiments behind ``notebooks/01_fishnet.ipynb``.

What the notebook regenerates, and from what:

* ``complexity``: parameters and conv multiply-adds at 224x224 of FishNet-99/150/201 (glimpse's
  implementation) and ResNet-50/101/152, DenseNet-121/161/169/201 (torchvision constructors),
  beside the official numbers (``results/fishnet/paper/complexity.csv``). Exact at every
  profile: models are built on the ``meta`` device and counted with
  ``torch.utils.flop_counter`` (FLOPs / 2 = multiply-adds of convolutions and linear layers).
* ``imagenet``: top-1/top-5 of FishNet-99 against ResNet-50 trained from scratch with the same
  recipe and epochs (``smoke``: synthetic gratings; ``cpu``: imagenette-mini at low resolution;
  ``full``: ImageNet with the official recipe), beside the official README accuracies.
* ``coco``: the talk's Mask R-CNN table (ResNet-50, ResNeXt-50, FishNet-188) beside glimpse's
  Mask R-CNN runs (``smoke``: slim backbones on synthetic shapes; ``cpu``: slim backbones on
  synthetic shapes and COCO128; ``full``: the real builders on COCO 2017).
* figures: the fish (stage resolutions, channels and transfers), the feature maps of one real
  image at tail, body and head, and gradient norms reaching the first layers.

Profiles are frozen dataclasses; :func:`resolve` applies overrides and derives the device.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from glimpse.backbones.fishnet import FISHNET99, FishNet, FishNetConfig
from glimpse.classification import (
    ImageClassifier,
    eval_transform,
    predict_scores,
    train_transform,
)
from glimpse.data.imagenet import ImageFolderClassification, SyntheticClassification
from glimpse.papers import resolve_profile
from glimpse.papers.figures import show_image
from glimpse.papers.runner import (
    Evaluator,
    TrainedRun,
    Variant,
    coco_metrics,
    run_dir,
    run_variants,
    train_and_evaluate,
    zoo_train_config,
)

__all__ = [
    "FishNetExperiment",
    "PROFILES",
    "resolve",
    "shared_data_root",
    "classification_data",
    "classification_train_config",
    "classification_metrics",
    "classification_variant",
    "run_classification",
    "imagenet_table",
    "complexity_table",
    "stage_table",
    "detection_backbones_table",
    "fish_figure",
    "load_example_image",
    "feature_maps",
    "feature_maps_figure",
    "gradient_norms",
    "gradient_norms_figure",
    "detection_variant",
    "run_detection",
    "coco_table",
    "dry_run",
]

ClsData = Literal["synthetic", "imagenette-mini", "imagenet"]


@dataclass(frozen=True)
class FishNetExperiment:
    """Everything one profile of the FishNet notebook needs (field names = what they set).

    Classification (the official recipe, ``kevin-ssy/FishNet`` ``main.py``): SGD, momentum 0.9,
    weight decay 1e-4 on all weights and biases, lr 0.1 per 256 images (linearly scaled),
    x0.1 every ``cls_lr_step_epochs`` epochs, no warm-up, RandomResizedCrop
    (``cls_min_scale``..1 area), flip, PCA lighting 0.1; test resize ``cls_test_resize`` then
    centre crop ``cls_image_size``.

    Attributes:
        profile: "smoke", "cpu" or "full".
        device: "cpu", "cuda", ... (``resolve`` turns "auto" into one).
        data_root: folder holding ``imagenette-mini/``, ``coco128/``, ``imagenet/`` and
            ``coco/``; "" means ``<repo>/../shared/data`` (imagenette-mini, coco128) and
            ``<repo>/data`` (imagenet, coco).
        seed: base seed; classification runs use ``seed + i`` for i < ``cls_num_seeds``.
        cls_data: "synthetic" (deterministic gratings), "imagenette-mini" or "imagenet".
        cls_models: zoo names of the classifiers compared at equal epochs.
        cls_image_size: training crop / test crop side (a multiple of 32 for FishNet).
        cls_test_resize: test short-side resize before the centre crop.
        cls_epochs: epochs over the training set.
        cls_batch_size: images per iteration.
        cls_lr_per_256: lr for a batch of 256 images.
        cls_lr_step_epochs: the lr drops x0.1 every this many epochs.
        cls_min_scale: RandomResizedCrop's smallest area fraction.
        cls_lighting: PCA lighting std.
        cls_num_seeds: independent training runs per model.
        cls_synthetic_sizes: (train, val) images of the synthetic set.
        cls_max_iters: cap on training iterations (dry runs); None trains all epochs.
        cls_num_workers: DataLoader workers.
        det_data: detection data sets (``glimpse.data.build_dataset`` names).
        det_models: zoo names of the Mask R-CNN variants, in the order of the COCO table rows
            (ResNet-50, ResNeXt-50, FishNet-188 or their slim stand-ins); "" skips a row.
        det_iters: training iterations per detector and data set.
        det_batch_size: images per iteration.
        det_image_scale: detector input scale (long, short edge).
        det_lr: peak lr (absolute).
        det_max_val_images: evaluate on at most this many val images (None: all).
        work_root: folder for resumable training runs (relative paths: to the repository);
            "" trains in temporary folders. ``cpu`` and ``full`` keep their runs in the
            git-ignored ``results/fishnet/runs/<profile>``.
        grad_image_size: input side of the gradient-norm probe.
        feature_image_size: input side of the feature-map figure.
    """

    profile: str
    device: str = "cpu"
    data_root: str = ""
    seed: int = 0
    cls_data: ClsData = "synthetic"
    cls_models: tuple[str, ...] = ("fishnet99", "resnet50_cls")
    cls_image_size: int = 32
    cls_test_resize: int = 36
    cls_epochs: int = 4
    cls_batch_size: int = 16
    cls_lr_per_256: float = 0.1
    cls_lr_step_epochs: int = 30
    cls_min_scale: float = 0.08
    cls_lighting: float = 0.1
    cls_num_seeds: int = 1
    cls_synthetic_sizes: tuple[int, int] = (160, 80)
    cls_max_iters: int | None = None
    cls_num_workers: int = 0
    det_data: tuple[str, ...] = ("synthetic-smoke",)
    det_models: tuple[str, ...] = ("mask_rcnn_slim_fpn", "", "mask_rcnn_fishnet_slim_fpn")
    det_iters: int = 40
    det_batch_size: int = 2
    det_image_scale: tuple[int, int] = (128, 128)
    det_lr: float = 0.02
    det_max_val_images: int | None = 20
    work_root: str = ""
    grad_image_size: int = 64
    feature_image_size: int = 224

    def __post_init__(self) -> None:
        if self.cls_image_size % 32:
            raise ValueError(f"cls_image_size must be a multiple of 32 (FishNet), got "
                             f"{self.cls_image_size}")
        if self.cls_num_seeds < 1 or self.cls_epochs < 1:
            raise ValueError("cls_num_seeds and cls_epochs must be >= 1")
        if len(self.det_models) != 3:
            raise ValueError("det_models needs 3 entries (ResNet-50, ResNeXt-50, FishNet-188 "
                             "rows; '' skips one)")


PROFILES: dict[str, FishNetExperiment] = {
    # CPU, synthetic data, about 2 minutes: full-width FishNet-99 and ResNet-50 at 32 px for a
    # few epochs, slim Mask R-CNNs for a few dozen iterations.
    "smoke": FishNetExperiment(profile="smoke"),
    # CPU, real small data, tens of minutes: imagenette-mini (10 classes, 50 train / 20 val
    # images per class) at 64 px, 30 epochs, lr steps every 10 (the official 30-of-100 ratio);
    # slim Mask R-CNNs for 150 iterations at 192 px on synthetic-cpu shapes and COCO128.
    "cpu": FishNetExperiment(
        profile="cpu", cls_data="imagenette-mini", cls_image_size=64, cls_test_resize=73,
        cls_epochs=30, cls_batch_size=32, cls_lr_step_epochs=10,
        det_data=("synthetic-cpu", "coco128"), det_iters=150, det_batch_size=2,
        det_image_scale=(192, 192), det_max_val_images=100, grad_image_size=96,
        work_root="results/fishnet/runs/cpu"),
    # GPU, the official recipe on ImageNet (100 epochs, batch 256, lr 0.1, x0.1 every 30) and
    # the real Mask R-CNN builders on COCO (1x schedule, 1333x800).
    "full": FishNetExperiment(
        profile="full", device="cuda", cls_data="imagenet",
        cls_models=("fishnet99", "fishnet150", "fishnet201", "resnet50_cls"),
        cls_image_size=224, cls_test_resize=256, cls_epochs=100, cls_batch_size=256,
        cls_lr_step_epochs=30, cls_num_workers=8,
        det_data=("coco",), det_models=("mask_rcnn_r50_fpn", "mask_rcnn_x50_32x4d_fpn",
                                        "mask_rcnn_fishnet188_fpn"),
        det_iters=90_000, det_batch_size=2, det_image_scale=(1333, 800), det_lr=0.02,
        det_max_val_images=None, grad_image_size=224, work_root="results/fishnet/runs/full"),
}


def resolve(profile: str = "smoke", **overrides: Any) -> FishNetExperiment:
    """The profile's configuration with ``overrides`` applied (unknown keys are errors).

    ``device="auto"`` (or "") becomes "cuda" when available, else "cpu"; ``data_root=None``
    becomes "". Papermill parameters pass straight through.
    """
    return resolve_profile(PROFILES, profile, "FishNet", **overrides)


def _repo() -> Path:
    return Path(__file__).resolve().parents[2]


def shared_data_root(cfg: FishNetExperiment | None = None) -> Path:
    """``cfg.data_root`` if set, else ``<repo>/../shared/data`` (the real test data)."""
    if cfg is not None and cfg.data_root:
        return Path(cfg.data_root)
    return Path(os.environ.get("GLIMPSE_SHARED_DATA", _repo().parent / "shared" / "data"))


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def classification_data(cfg: FishNetExperiment) -> tuple[Any, Any, int]:
    """(train set, val set, number of classes) of the profile's classification data."""
    if cfg.cls_data == "synthetic":
        n_train, n_val = cfg.cls_synthetic_sizes
        return (SyntheticClassification(10, n_train, cfg.cls_image_size, seed=cfg.seed),
                SyntheticClassification(10, n_val, cfg.cls_image_size, seed=cfg.seed + 10_000,
                                        train=False), 10)
    if cfg.cls_data == "imagenette-mini":
        root = shared_data_root(cfg) / "imagenette-mini"
    else:  # imagenet: <data_root>/imagenet/{train,val} in ImageFolder layout
        root = (Path(cfg.data_root) if cfg.data_root else _repo() / "data") / "imagenet"
    train = ImageFolderClassification(
        root / "train", train_transform(cfg.cls_image_size, min_scale=cfg.cls_min_scale,
                                        lighting=cfg.cls_lighting))
    val = ImageFolderClassification(root / "val", eval_transform(cfg.cls_image_size,
                                                                 resize=cfg.cls_test_resize),
                                    class_names=train.class_names)
    return train, val, train.num_classes


def classification_train_config(cfg: FishNetExperiment, num_images: int, seed: int):
    """The official recipe as a :class:`glimpse.engine.train.TrainConfig` (iterations)."""
    from glimpse.engine.train import TrainConfig

    iters_per_epoch = max(1, num_images // cfg.cls_batch_size)  # drop_last-like epochs
    max_iters = iters_per_epoch * cfg.cls_epochs
    steps = tuple(e * iters_per_epoch for e in range(cfg.cls_lr_step_epochs, cfg.cls_epochs,
                                                      cfg.cls_lr_step_epochs))
    if cfg.cls_max_iters is not None:
        max_iters = min(max_iters, cfg.cls_max_iters)
    return TrainConfig(
        max_iters=max_iters, batch_size=cfg.cls_batch_size,
        lr=cfg.cls_lr_per_256 * cfg.cls_batch_size / 256, momentum=0.9, weight_decay=1e-4,
        warmup_iters=0, lr_steps=steps, grad_clip=None, amp=True, checkpoint_every=0,
        keep_checkpoints=1, log_every=1, seed=seed,
        num_workers=cfg.cls_num_workers)


def classification_metrics(cfg: FishNetExperiment) -> Evaluator:
    """Runner evaluator: top-1 / top-5 accuracy in percent on the val split."""
    from glimpse.engine.metrics import topk_accuracy

    def evaluate(model: nn.Module, val_set: Any, device: str) -> dict[str, float]:
        scores, labels = predict_scores(model, val_set, device=device,
                                        batch_size=min(64, max(1, len(val_set))))
        return {k: 100 * v for k, v in topk_accuracy(scores, labels, ks=(1, 5)).items()}

    evaluate.__qualname__ = "fishnet.classification_metrics"
    return evaluate


def classification_variant(cfg: FishNetExperiment, model_name: str, num_images: int
                           ) -> Variant:
    """Zoo classifier ``model_name`` with the profile's recipe, as a runner variant."""
    return Variant(model_name, model_name, classification_train_config(cfg, num_images, cfg.seed))


def _work_root(cfg: FishNetExperiment) -> Path | None:
    """``cfg.work_root`` (relative paths: to the repository), or None for temporary runs."""
    if not cfg.work_root:
        return None
    root = Path(cfg.work_root)
    return root if root.is_absolute() else _repo() / root


def run_classification(cfg: FishNetExperiment) -> tuple[pd.DataFrame, dict[str, nn.Module]]:
    """Every model of ``cfg.cls_models`` for ``cfg.cls_num_seeds`` seeds (``seed + i``),
    through :func:`glimpse.papers.runner.run_variants`: each model is built and trained from
    scratch with its seed; with ``cfg.work_root`` finished runs are reused and unfinished ones
    resume.

    Returns:
        (one row per run: ``model``, ``seed``, ``top1``, ``top5`` (percent), ``iters``,
        ``train_s`` (sum of the logged iteration times), ``final_loss``; ``{model name:
        trained model of the first seed}`` (on CPU, eval mode)).
    """
    train_set, val_set, _ = classification_data(cfg)
    variants = [classification_variant(cfg, name, len(train_set)) for name in cfg.cls_models]
    models: dict[str, nn.Module] = {}

    def keep_first_seed(run: TrainedRun) -> None:
        if run.record.seed == cfg.seed:
            models[run.record.variant] = run.model.cpu().eval()

    runs = run_variants(variants, train_set, val_set,
                        [cfg.seed + i for i in range(cfg.cls_num_seeds)],
                        work_root=_work_root(cfg), on_run=keep_first_seed, device=cfg.device,
                        evaluate=classification_metrics(cfg))
    rows = runs.rename(columns={"iterations": "iters", "train_seconds": "train_s"})
    # model by model (the profile's order), then seed, as the tables list them
    order = rows["model"].map({m: i for i, m in enumerate(cfg.cls_models)})
    rows = rows.assign(order=order).sort_values(["order", "seed"], kind="stable")
    cols = ["model", "seed", "top1", "top5", "iters", "train_s", "final_loss"]
    return rows[cols].reset_index(drop=True), models


_DISPLAY = {"fishnet99": "FishNet-99", "fishnet150": "FishNet-150", "fishnet201": "FishNet-201",
            "resnet50": "ResNet-50", "resnet101": "ResNet-101", "resnet152": "ResNet-152",
            "densenet121": "DenseNet-121", "densenet161": "DenseNet-161",
            "densenet169": "DenseNet-169", "densenet201": "DenseNet-201"}


def _paper_csv(name: str) -> pd.DataFrame:
    from glimpse.report import load_paper

    return load_paper("fishnet", name, root=_repo() / "results")


def imagenet_table(cfg: FishNetExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """Official ImageNet top-1/top-5 beside the profile's mean over seeds.

    Rows: every model of the paper table and of ``runs``; ``top1_glimpse`` is measured on
    ``cfg.cls_data`` (not ImageNet below the full profile), ``seeds`` says how many runs.
    """
    paper = _paper_csv("imagenet")
    measured = runs.assign(model=runs["model"].str.replace("_cls", "", regex=False))
    agg = measured.groupby("model", sort=False).agg(
        top1=("top1", "mean"), top1_std=("top1", lambda s: float(np.std(s))),
        top5=("top5", "mean"), seeds=("seed", "count"),
        epochs_iters=("iters", "first")).reset_index()
    out = paper[["model", "top1", "top5", "source"]].merge(
        agg, on="model", how="outer", suffixes=("_paper", "_glimpse"), sort=False)
    order = list(paper["model"]) + [m for m in agg["model"] if m not in set(paper["model"])]
    out = out.set_index("model").loc[order].reset_index()  # paper order, then extra models
    out["data"] = cfg.cls_data
    out["resolution"] = cfg.cls_image_size
    out["epochs"] = cfg.cls_epochs
    out["profile"] = cfg.profile
    # Timings stay out of the table (they change every run; the notebook records them as
    # manifest scalars), so that re-running a deterministic profile leaves the CSV unchanged.
    cols = ["model", "top1_paper", "top5_paper", "top1_glimpse", "top1_std", "top5_glimpse",
            "seeds", "epochs", "data", "resolution", "epochs_iters", "profile", "source"]
    return out[cols].rename(columns={"epochs_iters": "iters"})


def _conv_macs(model: nn.Module, size: int = 224) -> float:
    """Multiply-adds of convolutions and linear layers at ``size`` x ``size``, one image
    (``FlopCounterMode`` counts 2 FLOPs per multiply-add: divided by 2 here)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device=device))
    counts = counter.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items()
               if any(op in str(k) for op in ("convolution", "addmm", "mm"))) / 2


def complexity_table() -> pd.DataFrame:
    """Parameters and GMACs at 224x224 (1000 classes), glimpse vs the official/torchvision
    values. Models are built on the ``meta`` device: exact counts, no weights in memory.

    ``gflops_reported`` is what the FishNet README / torchvision list (the README's FishNet
    numbers also count BN, ReLU and pooling elements); ``gmacs_paper`` is the conv + linear
    multiply-add count of the official model (measured by running it, reference §1.5) or
    torchvision's ``_ops``, which is what ``gmacs_glimpse`` measures."""
    import torchvision.models as tvm

    from glimpse.backbones import fishnet

    builders = [("fishnet99", fishnet.fishnet99), ("fishnet150", fishnet.fishnet150),
                ("fishnet201", fishnet.fishnet201), ("resnet50", tvm.resnet50),
                ("resnet101", tvm.resnet101), ("resnet152", tvm.resnet152),
                ("densenet121", tvm.densenet121), ("densenet161", tvm.densenet161),
                ("densenet169", tvm.densenet169), ("densenet201", tvm.densenet201)]
    rows = []
    for name, build in builders:
        with torch.device("meta"):
            model = build(num_classes=1000)
        rows.append({"model": name,
                     "params_glimpse": sum(p.numel() for p in model.parameters()),
                     "gmacs_glimpse": _conv_macs(model) / 1e9})
    measured = pd.DataFrame(rows)
    paper = _paper_csv("complexity").rename(columns={"params": "params_paper",
                                                     "gmacs": "gflops_reported",
                                                     "gmacs_conv": "gmacs_paper"})
    out = paper.merge(measured, on="model", how="left", sort=False)
    out["params_match"] = out["params_glimpse"] == out["params_paper"]
    out["gmacs_rel_diff"] = out["gmacs_glimpse"] / out["gmacs_paper"] - 1
    out["name"] = out["model"].map(_DISPLAY)
    return out[["model", "name", "params_paper", "params_glimpse", "params_match",
                "gflops_reported", "gmacs_paper", "gmacs_glimpse", "gmacs_rel_diff", "source"]]


# --------------------------------------------------------------------------------------------
# Figures: the fish, feature maps, gradient norms
# --------------------------------------------------------------------------------------------

_STAGE_LABELS = ("stem", "tail 0", "tail 1", "tail 2", "bridge", "body 4", "body 5", "body 6",
                 "head 7", "head 8", "head 9")
_TRANS_FROM = {5: 2, 6: 1, 7: 0, 8: 6, 9: 5, 10: 4}  # all_feat[i] concatenates all_feat[j]


def stage_table(config: FishNetConfig = FISHNET99, size: int = 224) -> pd.DataFrame:
    """Every ``all_feat`` map of FishNet at ``size`` x ``size`` (measured by a forward pass on
    the meta device): part, channels, resolution, stride, residual blocks and the map it
    concatenates."""
    with torch.device("meta"):
        model = FishNet(config, num_classes=None)
        feats = model.stages(torch.zeros(1, 3, size, size))
    rows = []
    for i, f in enumerate(feats):
        src = _TRANS_FROM.get(i)
        rows.append({"index": i, "stage": _STAGE_LABELS[i], "channels": f.shape[1],
                     "height": f.shape[2], "width": f.shape[3], "stride": size // f.shape[2],
                     "res_blocks": config.num_res_blocks[i - 1] if i else 0,
                     "trans_blocks": config.num_trans_blocks[i - 5] if i >= 5 else 0,
                     "concatenates": "" if src is None else
                     f"{_STAGE_LABELS[src]} ({model.stage_channels[src]} ch)"})
    return pd.DataFrame(rows)


def detection_backbones_table() -> pd.DataFrame:
    """The FPN-ready FishNet trunks of the zoo: bottlenecks B, Conv2d modules, trunk
    parameters and the C2..C5 channels handed to FPN (FishNet-188: reconstruction)."""
    from glimpse.backbones import fishnet as fb

    rows = []
    for name, config, note in (
            ("FishNet-99", fb.FISHNET99, "official blocks"),
            ("FishNet-150", fb.FISHNET150, "official blocks"),
            ("FishNet-188", fb.FISHNET188, "reconstruction: FishNet-201 minus 2+2 blocks in "
                                           "head stage 9"),
            ("FishNet-201", fb.FISHNET201, "official blocks"),
            ("FishNet-slim", fb.FISHNET_SLIM, "FishNet-99 blocks at 1/8 width (smoke)")):
        with torch.device("meta"):
            trunk = fb.FishNetBackbone(config)
        rows.append({"backbone": name, "bottlenecks": config.num_bottlenecks,
                     "convs": sum(isinstance(m, nn.Conv2d) for m in trunk.modules()),
                     "params": sum(p.numel() for p in trunk.parameters()),
                     "fpn_in_channels": str(list(trunk.out_channels.values())),
                     "strides": str(list(trunk.out_strides.values())), "note": note})
    return pd.DataFrame(rows)


def fish_figure(config: FishNetConfig = FISHNET99, size: int = 224):
    """The fish: every ``all_feat`` map at its resolution (y) in forward order (x), labelled
    with its channels; arrows for the trunk and dashed arrows for transferred features."""
    import matplotlib.pyplot as plt

    with torch.device("meta"):
        model = FishNet(config, num_classes=None)
    chans, strides = model.stage_channels, model.stage_strides
    colours = ["#888888"] + ["#4c72b0"] * 3 + ["#8172b2"] + ["#55a868"] * 3 + ["#c44e52"] * 3
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ys = [-math.log2(s) for s in strides]
    for i, (c, s, y) in enumerate(zip(chans, strides, ys)):
        w = 0.28 + 0.5 * math.sqrt(c / max(chans))
        ax.add_patch(plt.Rectangle((i - w / 2, y - 0.3), w, 0.6, color=colours[i], alpha=0.85))
        ax.text(i, y, f"{c}", ha="center", va="center", color="white", fontsize=8,
                fontweight="bold")
        if i:
            ax.annotate("", xy=(i - 0.25, y), xytext=(i - 0.75, ys[i - 1]),
                        arrowprops=dict(arrowstyle="->", color="black", lw=1))
    for dst, src in _TRANS_FROM.items():
        ax.annotate("", xy=(dst, ys[dst] + 0.32), xytext=(src, ys[src] + 0.32),
                    arrowprops=dict(arrowstyle="->", color="#dd8452", lw=1.2, ls="--",
                                    connectionstyle="arc3,rad=-0.25"))
    ax.set_xticks(range(len(chans)), _STAGE_LABELS, rotation=30, fontsize=8)
    ax.set_yticks(sorted(set(ys)), [f"{size // s}x{size // s} (s{s})"
                                    for s in sorted(set(strides), reverse=True)])
    ax.set_xlim(-0.7, len(chans) - 0.3)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 1.9)
    ax.set_title("FishNet-99: tail (blue) down, body (green) up, head (red) down; numbers = "
                 "channels; dashed = transferred and concatenated", fontsize=9)
    fig.tight_layout()
    return fig


def load_example_image(cfg: FishNetExperiment | None = None) -> tuple[Tensor, str]:
    """One real image, f32[3, H, W] in [0, 1], and where it came from: the first
    imagenette-mini val image when the shared data exists, else ``skimage.data.chelsea()``."""
    root = shared_data_root(cfg) / "imagenette-mini" / "val"
    if root.is_dir():
        ds = ImageFolderClassification(root, eval_transform(224))
        path = ds.samples[0][0]
        return ds[0][0], f"imagenette-mini/val/{path.parent.name}/{path.name}"
    from skimage import data as skdata
    from torchvision.transforms.functional import center_crop, resize

    img = torch.from_numpy(skdata.chelsea().copy()).permute(2, 0, 1).float() / 255
    return center_crop(resize(img, 256, antialias=True), 224), "skimage.data.chelsea()"


@torch.no_grad()
def feature_maps(model: FishNet, image: Tensor, size: int = 224) -> list[Tensor]:
    """``all_feat`` of one image (resized to ``size``, ImageNet-normalised), eval mode."""
    from torchvision.transforms.functional import normalize, resize

    from glimpse.classification import IMAGENET_MEAN_01, IMAGENET_STD_01

    x = resize(image, [size, size], antialias=True)
    x = normalize(x, IMAGENET_MEAN_01, IMAGENET_STD_01)[None]
    was_training = model.training
    feats = model.eval().stages(x.to(next(model.parameters()).device))
    model.train(was_training)
    return [f[0].cpu() for f in feats]


def feature_maps_figure(feats: list[Tensor], image: Tensor, title: str = ""):
    """The image, then the channel-mean |activation| of stem, tail 2, bridge, body 4-6 and
    head 7-9 (each map normalised to its own range)."""
    import matplotlib.pyplot as plt

    show = [0, 3, 4, 5, 6, 7, 8, 9, 10]
    fig, axes = plt.subplots(1, len(show) + 1, figsize=(2.0 * (len(show) + 1), 2.4))
    show_image(axes[0], image, "input")
    for ax, i in zip(axes[1:], show):
        m = feats[i].abs().mean(0)
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        ax.imshow(m.numpy(), cmap="viridis")
        c, h, w = feats[i].shape
        ax.set_title(f"{_STAGE_LABELS[i]}\n{c}x{h}x{w}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _first_layer_norms(model: nn.Module) -> list[tuple[str, float]]:
    """(name, gradient L2 norm) of every conv weight, in module (forward) order."""
    return [(n, float(m.weight.grad.norm())) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.weight.grad is not None]


def gradient_norms(cfg: FishNetExperiment, batch: int = 8) -> pd.DataFrame:
    """Gradient norms of every conv weight of freshly initialised FishNet-99 and ResNet-50
    (seeded) after one cross-entropy backward on the same batch (synthetic gratings at
    ``cfg.grad_image_size``, 10 classes, train-mode BN).

    FishNet's argument: the head's gradient reaches the stem through concatenations and
    identity / channel-sum shortcuts, with no isolated convolution in body and head.

    Returns:
        one row per conv: ``model``, ``layer`` (index in forward order), ``depth`` (index /
        number of convs, 0 = first conv), ``name``, ``grad_norm``.
    """
    import torchvision.models as tvm

    data = SyntheticClassification(10, batch, cfg.grad_image_size, seed=cfg.seed + 7)
    images = torch.stack([data[i][0] for i in range(batch)])
    labels = torch.stack([data[i][1]["labels"] for i in range(batch)])
    rows = []
    for name, build in (("FishNet-99", lambda: FishNet(FISHNET99, 10)),
                        ("ResNet-50", lambda: tvm.resnet50(num_classes=10))):
        torch.manual_seed(cfg.seed)
        model = ImageClassifier(build(), 10).train()
        loss = model(images, [{"labels": y} for y in labels])["loss_cls"]
        loss.backward()
        norms = _first_layer_norms(model)
        for i, (layer, g) in enumerate(norms):
            rows.append({"model": name, "layer": i, "depth": i / (len(norms) - 1),
                         "name": layer.removeprefix("net."), "grad_norm": g})
    return pd.DataFrame(rows)


def gradient_norms_figure(df: pd.DataFrame):
    """log10 gradient norm of every conv weight against relative depth, both models."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for (name, g), colour in zip(df.groupby("model", sort=False), ("#c44e52", "#4c72b0")):
        ax.plot(g["depth"], np.log10(g["grad_norm"]), ".-", ms=3, lw=0.7, label=name,
                color=colour)
    ax.set_xlabel("relative depth of the conv (0 = first stem conv, 1 = classifier)")
    ax.set_ylabel("log10 ||grad W||")
    ax.set_title("gradient norms at initialisation, one batch", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Detection (Mask R-CNN, the talk's COCO table)
# --------------------------------------------------------------------------------------------

_ROW_BACKBONES = ("ResNet-50", "ResNeXt-50 (32x4d)", "FishNet-188")


def _det_dataset(cfg: FishNetExperiment, name: str, split: str):
    from glimpse.data.build import build_dataset

    root = None
    if name == "coco128" and cfg.data_root:
        root = Path(cfg.data_root) / "coco128"
    elif name == "coco" and cfg.data_root:
        root = Path(cfg.data_root) / "coco"
    return build_dataset(name, split=split, data_root=root, train=split == "train")


def detection_variant(cfg: FishNetExperiment, model_name: str, data: str) -> Variant:
    """Mask R-CNN ``model_name`` trained on ``data`` for ``cfg.det_iters`` at ``cfg.det_lr``
    (absolute), as a runner variant named ``<model>_<data>``."""
    iters = cfg.det_iters
    train = zoo_train_config(
        model_name, max_iters=iters, batch_size=cfg.det_batch_size, lr=cfg.det_lr,
        warmup_iters=min(500, iters // 4), checkpoint_every=0, keep_checkpoints=1, log_every=1,
        seed=cfg.seed)
    return Variant(f"{model_name}_{data}", model_name, train,
                   {"image_scale": tuple(cfg.det_image_scale)})


def run_detection(cfg: FishNetExperiment) -> pd.DataFrame:
    """Mask R-CNN for every non-empty ``cfg.det_models`` entry on every ``cfg.det_data``
    (:func:`glimpse.papers.runner.train_and_evaluate`, seed ``cfg.seed``), evaluated on the
    first ``cfg.det_max_val_images`` val images.

    Returns:
        One row per run: ``backbone``, ``model``, ``data``, ``iters``, ``train_s``,
        ``params_M``, then ``box_`` and ``mask_`` ``AP``/``APs``/``APm``/``APl`` (percent, NaN
        for an area range without ground truth).
    """
    rows = []
    evaluate = coco_metrics(("bbox", "segm"), batch_size=2)
    root = _work_root(cfg)
    for data in cfg.det_data:
        train_set, val_set = _det_dataset(cfg, data, "train"), _det_dataset(cfg, data, "val")
        for backbone, model_name in zip(_ROW_BACKBONES, cfg.det_models):
            if not model_name:
                continue
            variant = detection_variant(cfg, model_name, data)
            run = train_and_evaluate(
                variant, train_set, val_set, seed=cfg.seed, device=cfg.device,
                work_dir=run_dir(root, variant.name, cfg.seed) if root else None,
                evaluate=evaluate, max_eval_images=cfg.det_max_val_images)
            row: dict[str, Any] = {
                "backbone": backbone, "model": model_name, "data": data,
                "iters": run.record.iterations, "train_s": run.record.train_seconds,
                "params_M": sum(p.numel() for p in run.model.parameters()) / 1e6}
            row.update({f"{prefix}_{k}": run.record.metrics[f"{prefix}_{k}"]
                        for prefix in ("box", "mask") for k in ("AP", "APs", "APm", "APl")})
            rows.append(row)
    return pd.DataFrame(rows)


def coco_table(cfg: FishNetExperiment, runs: pd.DataFrame) -> pd.DataFrame:
    """The talk's table (mask and box AP, AP_S/M/L) beside glimpse's measurements, one row per
    backbone and data set (``data = "COCO val2017 (paper)"`` for the paper's own rows)."""
    paper = _paper_csv("coco_mask_rcnn")
    metrics = ["mask_AP", "mask_APs", "mask_APm", "mask_APl",
               "box_AP", "box_APs", "box_APm", "box_APl"]
    rows = [paper.assign(data="COCO val2017 (paper)", model="", iters=np.nan, profile="paper")]
    if len(runs):
        rows.append(runs.assign(source=f"glimpse, profile {cfg.profile}", profile=cfg.profile))
    out = pd.concat(rows, ignore_index=True, sort=False)
    # no timings here (see imagenet_table); run_detection's train_s goes to the manifest
    return out[["backbone", "data", "model", *metrics, "iters", "profile", "source"]]


# --------------------------------------------------------------------------------------------
# Dry run of a profile (the full profile cannot train here)
# --------------------------------------------------------------------------------------------


def dry_run(cfg: FishNetExperiment, *, cls_iters: int = 2, det_iters: int = 1,
            det_image_scale: tuple[int, int] = (128, 128)) -> dict[str, Any]:
    """Build everything a profile uses and run a couple of iterations on tiny synthetic data.

    Classification: each model of ``cfg.cls_models`` at ``cfg.cls_image_size`` with the
    profile's TrainConfig (same lr, schedule, weight decay) truncated to ``cls_iters``
    iterations of 2 images. Detection: each ``cfg.det_models`` entry for ``det_iters``
    iterations on synthetic-smoke at ``det_image_scale``.

    Returns:
        ``{"classification": DataFrame, "detection": DataFrame, "train_config": TrainConfig}``.
    """
    small = dataclasses.replace(
        cfg, device="cpu", cls_data="synthetic", cls_synthetic_sizes=(4, 2), cls_batch_size=2,
        cls_max_iters=cls_iters, cls_num_seeds=1, cls_num_workers=0,
        det_data=("synthetic-smoke",), det_iters=det_iters, det_batch_size=1,
        det_image_scale=det_image_scale, det_max_val_images=2, work_root="")
    full_tcfg = classification_train_config(cfg, 1_281_167 if cfg.cls_data == "imagenet"
                                            else 500, cfg.seed)
    cls, _ = run_classification(small)
    det = run_detection(small) if any(small.det_models) else pd.DataFrame()
    return {"classification": cls, "detection": det, "train_config": full_tcfg}
