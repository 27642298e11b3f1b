"""``python -m glimpse bench detectors``: glimpse's detectors against torchvision's, same run.

Both sides get random weights (no downloads), the same input image, the same thread count and
matched settings: 1000 RPN proposals, RoIAlign with adaptive sampling (mmdet v2's
``sampling_ratio=0``, given to torchvision too), score threshold 0 (random weights score below
the usual 0.05, which would skip post-processing on one side), NMS 0.5 and 100 detections per
image, 80 foreground classes. Random box-regression layers would stretch anchors into
arbitrary proposals whose RoIAlign cost depends on the seed (adaptive sampling grows with box
size), so both sides start with zeroed regression layers: proposals are then the anchors,
which both models place alike. Runs are interleaved (glimpse, torchvision, torchvision,
glimpse, ...) and medians compared, because the machines are shared and noisy; only the
same-run ratio counts.

The R-50 training-step row compares one SGD step (forward, backward, update) of Faster R-CNN
with every backbone layer trainable and BatchNorm in train mode on both sides (torchvision's
configuration without pretrained weights).

The slim training-step rows (:data:`SLIM_TRAIN_MODELS`) time one SGD step of each slim zoo model
at 128 px, batch 4 (the smoke profile) against a torchvision detector built on the same glimpse
slim backbone (BatchNorm in train mode) with a torchvision FPN of the same width, the same head
widths, proposal and RoI counts: 1000 pre-NMS proposals per level, 300 kept, 128 sampled RoIs
through 256-wide FCs, the 4-conv mask head, RetinaNet's 4-conv towers. torchvision has no
Cascade R-CNN, so the cascade is timed against the one-stage Faster R-CNN (the ratio is the
price of the two extra stages).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["BenchCase", "SLIM_TRAIN_MODELS", "run"]

# Slim zoo models with a training-step row (128 px, batch 4).
SLIM_TRAIN_MODELS = ("faster_rcnn_slim_fpn", "mask_rcnn_slim_fpn", "retinanet_slim_fpn",
                     "cascade_rcnn_slim_fpn")
_SLIM_SIZE = 128
_SLIM_CLASSES = 8


@dataclass
class BenchCase:
    """One row: two zero-argument callables timed against each other.

    ``input`` is the image size (HxW); ``baseline`` names the torchvision model when it is not
    the same architecture as ``model``.
    """

    model: str
    mode: str
    glimpse_fn: Callable[[], object]
    torchvision_fn: Callable[[], object]
    input: str = ""
    baseline: str = "same"


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(case: BenchCase, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds of each side, alternating the order every repeat (ABBA...)."""
    for _ in range(warmup):
        case.glimpse_fn()
        case.torchvision_fn()
    ours, theirs = [], []
    for r in range(repeats):
        if r % 2 == 0:
            ours.append(_time(case.glimpse_fn))
            theirs.append(_time(case.torchvision_fn))
        else:
            theirs.append(_time(case.torchvision_fn))
            ours.append(_time(case.glimpse_fn))
        gc.collect()
    return statistics.median(ours), statistics.median(theirs)


# Box-regression layers (zeroed before timing, see the module docstring).
_REGRESSION_LAYERS = (
    "rpn_head.reg",  # glimpse two-stage
    "head.retina_reg",  # glimpse RetinaNet
    "rpn.head.bbox_pred",  # torchvision two-stage
    "roi_heads.box_predictor.bbox_pred",
    "head.regression_head.bbox_reg",  # torchvision RetinaNet
)


def _zero_box_regression(model: nn.Module) -> nn.Module:
    """Zero every box-regression layer of ``model`` (RPN, R-CNN stages, RetinaNet)."""
    names = [n for n, _ in model.named_modules()]
    found = [n for n in names if n in _REGRESSION_LAYERS
             or (n.startswith("roi_head.box_heads.") and n.endswith(".reg"))]
    if not found:
        raise RuntimeError(f"no box-regression layer found in {type(model).__name__}")
    with torch.no_grad():
        for name in found:
            for p in model.get_submodule(name).parameters():
                p.zero_()
    return model


def _eval_cases(names: Sequence[str], image: Tensor) -> list[BenchCase]:
    import torchvision.models.detection as tvd
    from torchvision.ops import MultiScaleRoIAlign

    from glimpse import zoo
    from glimpse.detectors.two_stage import RCNNConfig, RPNConfig
    from glimpse.heads.retina import RetinaTestConfig
    from glimpse.heads.roi_box import RCNNTestConfig
    from glimpse.heads.rpn import ProposalConfig

    h, w = image.shape[-2:]
    rcnn = dict(
        rcnn_cfg=RCNNConfig(test=RCNNTestConfig(score_thr=0.0, nms_iou=0.5, max_per_image=100)),
        rpn_cfg=RPNConfig(test_proposals=ProposalConfig(nms_pre=1000, max_per_image=1000)))
    retina = RetinaTestConfig(nms_pre=1000, score_thr=0.0, nms_iou=0.5, max_per_image=100)
    # torchvision counts the background class in two-stage models (81 = 80 + 1), not in
    # RetinaNet, so both sides predict 80 foreground classes.
    tv_common = dict(weights=None, weights_backbone=None, min_size=min(h, w), max_size=max(h, w))
    # mmdet v2 (and glimpse) RoIAlign samples adaptively (sampling_ratio=0); give torchvision
    # the same so both sides do the same RoI work.
    levels = ["0", "1", "2", "3"]
    tv_pools = dict(box_roi_pool=MultiScaleRoIAlign(levels, 7, sampling_ratio=0))
    tv_mask_pool = dict(mask_roi_pool=MultiScaleRoIAlign(levels, 14, sampling_ratio=0))
    scale = (max(h, w), min(h, w))  # the images are already at the network's scale
    builders: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
        "faster_rcnn_r50_fpn": (
            lambda: zoo.build("faster_rcnn_r50_fpn", 80, image_scale=scale, **rcnn),
            lambda: tvd.fasterrcnn_resnet50_fpn(
                **tv_common, **tv_pools, num_classes=81, rpn_pre_nms_top_n_test=1000,
                rpn_post_nms_top_n_test=1000, box_score_thresh=0.0, box_nms_thresh=0.5,
                box_detections_per_img=100),
        ),
        "mask_rcnn_r50_fpn": (
            lambda: zoo.build("mask_rcnn_r50_fpn", 80, image_scale=scale, **rcnn),
            lambda: tvd.maskrcnn_resnet50_fpn(
                **tv_common, **tv_pools, **tv_mask_pool, num_classes=81,
                rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
                box_score_thresh=0.0, box_nms_thresh=0.5, box_detections_per_img=100),
        ),
        "retinanet_r50_fpn": (
            lambda: zoo.build("retinanet_r50_fpn", 80, image_scale=scale, test_cfg=retina),
            lambda: tvd.retinanet_resnet50_fpn(
                **tv_common, num_classes=80, score_thresh=0.0, nms_thresh=0.5,
                detections_per_img=100, topk_candidates=1000),
        ),
    }
    cases = []
    for name in names:
        make_ours, make_theirs = builders[name]
        torch.manual_seed(0)
        ours = _zero_box_regression(make_ours()).eval()
        theirs = _zero_box_regression(make_theirs()).eval()

        def run_ours(model=ours):
            with torch.inference_mode():
                return model([image])

        def run_theirs(model=theirs):
            with torch.inference_mode():
                return model([image])

        cases.append(BenchCase(name, "inference", run_ours, run_theirs, input=f"{h}x{w}"))
    return cases


def _train_case(image: Tensor, batch: int) -> BenchCase:
    import torchvision.models.detection as tvd
    from torchvision.ops import MultiScaleRoIAlign

    from glimpse import zoo

    h, w = image.shape[-2:]
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, 6, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = 32 + torch.rand(batch, 6, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
    boxes = torch.cat((xy, xy + wh), dim=-1)  # [batch, 6, 4] xyxy inside the image
    labels = torch.randint(1, 81, (batch, 6), generator=g)
    targets = [{"boxes": boxes[i], "labels": labels[i]} for i in range(batch)]
    images = [image] * batch

    torch.manual_seed(0)
    ours = zoo.build("faster_rcnn_r50_fpn", 80, image_scale=(max(h, w), min(h, w)),
                     frozen_stages=-1, norm_eval=False)
    ours = _zero_box_regression(ours).train()
    # glimpse (mmdet v2) trains the R-CNN on 2000 pre-NMS / 1000 post-NMS proposals
    theirs = tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81,
                                         min_size=min(h, w), max_size=max(h, w),
                                         rpn_pre_nms_top_n_train=2000,
                                         rpn_post_nms_top_n_train=1000,
                                         box_roi_pool=MultiScaleRoIAlign(
                                             ["0", "1", "2", "3"], 7, sampling_ratio=0))
    theirs = _zero_box_regression(theirs).train()
    return BenchCase(f"faster_rcnn_r50_fpn (batch {batch})", "train step",
                     _sgd_step(ours, images, targets), _sgd_step(theirs, images, targets),
                     input=f"{h}x{w}")


def _sgd_step(model: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]
              ) -> Callable[[], float]:
    """One SGD step (forward, backward, update) of ``model`` on a fixed batch, as a callable.

    Every entry of the loss dict is summed, but glimpse's ``stats_*`` (torchvision's RetinaNet
    names its losses without the ``loss_`` prefix)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        losses = model(images, targets)
        loss = sum(v for k, v in losses.items() if not k.startswith("stats_"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def _slim_batch(batch: int, with_masks: bool) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``batch`` random 128 px images, each with 5 boxes of 16-80 px (and box-shaped masks)."""
    g = torch.Generator().manual_seed(0)
    size = _SLIM_SIZE
    images = [torch.rand(3, size, size, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        wh = 16 + torch.rand(5, 2, generator=g) * 64
        xy = torch.rand(5, 2, generator=g) * (size - wh)
        boxes = torch.cat((xy, xy + wh), 1).round()
        target = {"boxes": boxes, "labels": torch.randint(1, _SLIM_CLASSES + 1, (5,), generator=g)}
        if with_masks:
            masks = torch.zeros(5, size, size, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            target["masks"] = masks
        targets.append(target)
    return images, targets


class _TorchvisionFPNBackbone(nn.Module):
    """A glimpse backbone (C2..C5 dict) + torchvision's FPN on ``levels`` of it, as torchvision
    detectors take it (``out_channels`` attribute, OrderedDict of maps)."""

    def __init__(self, body: nn.Module, levels: Sequence[str], channels: int,
                 extra_blocks: nn.Module) -> None:
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        self.body = body
        self.levels = list(levels)
        self.fpn = FeaturePyramidNetwork([body.out_channels[k] for k in self.levels], channels,
                                         extra_blocks=extra_blocks)
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[k]) for i, k in enumerate(self.levels)))


def _torchvision_slim(name: str) -> nn.Module:
    """torchvision's counterpart of slim zoo model ``name``, sized by its zoo defaults (see the
    module docstring)."""
    import torchvision.models.detection as tvd
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    from glimpse import zoo

    defaults = zoo.MODELS[name].defaults
    fpn_channels = defaults["fpn_channels"]
    body = zoo.build_backbone(name)
    size = dict(min_size=_SLIM_SIZE, max_size=_SLIM_SIZE)
    if name.startswith("retinanet"):
        backbone = _TorchvisionFPNBackbone(body, ("c3", "c4", "c5"), fpn_channels,
                                           LastLevelP6P7(body.out_channels["c5"], fpn_channels))
        return tvd.RetinaNet(backbone, _SLIM_CLASSES, **size)
    backbone = _TorchvisionFPNBackbone(body, ("c2", "c3", "c4", "c5"), fpn_channels,
                                       LastLevelMaxPool())
    levels = ["0", "1", "2", "3"]
    fc_channels = defaults["fc_channels"]
    proposals = defaults["rpn_cfg"].train_proposals
    kwargs = dict(
        rpn_pre_nms_top_n_train=proposals.nms_pre,
        rpn_post_nms_top_n_train=proposals.max_per_image,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, sampling_ratio=0),
        box_head=TwoMLPHead(fpn_channels * 49, fc_channels),
        box_predictor=FastRCNNPredictor(fc_channels, _SLIM_CLASSES + 1),
        box_batch_size_per_image=defaults["rcnn_cfg"].train.num_samples, **size)
    if name.startswith("mask_rcnn"):
        return tvd.MaskRCNN(
            backbone, None, mask_roi_pool=MultiScaleRoIAlign(levels, 14, sampling_ratio=0),
            mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * 4, 1),
            mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, _SLIM_CLASSES + 1),
            **kwargs)
    return tvd.FasterRCNN(backbone, None, **kwargs)


def _slim_train_case(name: str, batch: int) -> BenchCase:
    """Training step of slim zoo model ``name`` against torchvision's counterpart."""
    from glimpse import zoo

    torch.manual_seed(0)
    ours = zoo.build(name, _SLIM_CLASSES, image_scale=(_SLIM_SIZE, _SLIM_SIZE))
    ours = _zero_box_regression(ours).train()
    torch.manual_seed(0)
    theirs = _zero_box_regression(_torchvision_slim(name)).train()
    images, targets = _slim_batch(batch, with_masks="mask" in name)
    theirs_targets = targets
    if name.startswith("retinanet"):  # torchvision's RetinaNet counts classes from 0
        theirs_targets = [{**t, "labels": t["labels"] - 1} for t in targets]
    baseline = "FasterRCNN (no cascade)" if name.startswith("cascade") else "same"
    return BenchCase(f"{name} (batch {batch})", "train step", _sgd_step(ours, images, targets),
                     _sgd_step(theirs, images, theirs_targets),
                     input=f"{_SLIM_SIZE}x{_SLIM_SIZE}",
                     baseline=baseline)


def run(
    repeats: int = 5,
    threads: int = 1,
    quick: bool = False,
    models: Sequence[str] = ("faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn", "retinanet_r50_fpn"),
    train: bool = True,
    train_batch: int = 1,
    warmup: int = 1,
    slim: Sequence[str] = SLIM_TRAIN_MODELS,
    slim_batch: int = 4,
):
    """Time every case; returns a pandas DataFrame (one row per case).

    Args:
        repeats: timed runs per side (medians are compared).
        threads: torch intra-op threads.
        quick: 384x576 instead of 800x1216 for the R-50 rows.
        models: R-50 models with an inference row.
        train: add the R-50 Faster R-CNN training-step row.
        train_batch: images per R-50 training step.
        warmup: untimed runs per side first.
        slim: slim models with a training-step row (:data:`SLIM_TRAIN_MODELS`).
        slim_batch: images per slim training step.
    """
    import pandas as pd

    unknown = sorted(set(slim) - set(SLIM_TRAIN_MODELS))
    if unknown:
        raise ValueError(f"slim: unknown models {unknown}; choose from {SLIM_TRAIN_MODELS}")
    torch.set_num_threads(threads)
    size = (384, 576) if quick else (800, 1216)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    cases = [_slim_train_case(name, slim_batch) for name in slim]
    cases += _eval_cases(models, image)
    if train:
        cases.append(_train_case(image, train_batch))
    rows = []
    for case in cases:
        ours, theirs = _interleaved(case, repeats, warmup)
        rows.append({
            "model": case.model,
            "mode": case.mode,
            "input": case.input,
            "glimpse_s": ours,
            "torchvision_s": theirs,
            "ratio": ours / theirs,
            "torchvision_model": case.baseline,
        })
        print(f"{case.model:32s} {case.mode:10s} glimpse {ours:7.3f}s  torchvision "
              f"{theirs:7.3f}s  ratio {ours / theirs:5.2f}", flush=True)
    return pd.DataFrame(rows)
