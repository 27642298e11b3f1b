"""The one name -> model table of glimpse.

Every model a notebook, the CLI or a test can name is a row of :data:`MODELS`: a detector family
(the builder function in ``glimpse.detectors``) and a backbone (a function in
``glimpse.backbones``), plus default keyword arguments. Names read
``<family>_<backbone>_fpn``, e.g. ``faster_rcnn_r50_fpn`` or ``retinanet_slim_fpn``.

Detector builders are imported only when a model is built, so ``import glimpse.zoo`` stays cheap
(the slim recipe imports only the two-stage configuration dataclasses).
Every family of :data:`DETECTORS` runs on every backbone of :data:`RESNET_BACKBONES`; other
models are literal rows of :data:`MODELS`. To add a model, add a backbone to :data:`BACKBONES`
and to :data:`RESNET_BACKBONES` (every family) or to the literal rows.

Example::

    from glimpse import zoo
    model = zoo.build("faster_rcnn_slim_fpn", num_classes=3, image_scale=(128, 128))
    model = zoo.build("mask_rcnn_r50_fpn", pretrained="/data/weights/resnet50.pth")

Keyword arguments of :func:`build` go to the detector builder, except the backbone options
(:data:`BACKBONE_KWARGS`: ``pretrained``, ``frozen_stages``, ``norm``, ``norm_eval``, ``style``),
which go to the backbone; ``backbone_kwargs={...}`` passes any other backbone option.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from glimpse.backbones.fishnet import (
    fishnet99_backbone,
    fishnet150_backbone,
    fishnet188_backbone,
    fishnet_slim_backbone,
)
from glimpse.backbones.mobilenet_v2 import mobilenet_v2_backbone
from glimpse.backbones.resnet import (
    resnet50,
    resnet101,
    resnet_slim,
    resnext50_32x4d,
    resnext101_32x4d,
)
from glimpse.detectors.guided_anchoring import GA_RCNN
from glimpse.detectors.htc import HTC_RCNN
from glimpse.detectors.two_stage import CASCADE_RPN, RCNNConfig, RPNConfig
from glimpse.heads.roi_box import RCNNTrainConfig
from glimpse.heads.rpn import ProposalConfig

__all__ = [
    "BACKBONES",
    "BACKBONE_KWARGS",
    "CARAFE_DETECTORS",
    "CLASSIFIERS",
    "DETECTORS",
    "INPAINTERS",
    "MOBILENETV2_BACKBONE_DEFAULTS",
    "MOBILENETV2_DEFAULTS",
    "MODELS",
    "ModelSpec",
    "RESNET_BACKBONES",
    "SEGMENTORS",
    "base_lr",
    "build",
    "build_backbone",
    "inpainter_mask_kind",
    "inpainter_names",
    "describe",
    "methods",
    "names",
    "segmentor_names",
]


def _lazy_builder(module: str, fn_name: str) -> Callable[..., nn.Module]:
    """Builder ``module.fn_name``, imported when first called so that importing the zoo does
    not import every detector (or classifier)."""

    def build_lazily(*args: Any, **kwargs: Any) -> nn.Module:
        return getattr(importlib.import_module(module), fn_name)(*args, **kwargs)

    build_lazily.__name__ = build_lazily.__qualname__ = fn_name
    return build_lazily


# Detector family -> builder ``f(backbone, num_classes, **kwargs)``.
DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "faster_rcnn": _lazy_builder("glimpse.detectors.two_stage", "faster_rcnn"),
    "mask_rcnn": _lazy_builder("glimpse.detectors.two_stage", "mask_rcnn"),
    "fast_rcnn": _lazy_builder("glimpse.detectors.two_stage", "fast_rcnn"),
    "rpn": _lazy_builder("glimpse.detectors.two_stage", "rpn"),
    "cascade_rcnn": _lazy_builder("glimpse.detectors.two_stage", "cascade_rcnn"),
    "cascade_mask_rcnn": _lazy_builder("glimpse.detectors.two_stage", "cascade_mask_rcnn"),
    "retinanet": _lazy_builder("glimpse.detectors.retinanet", "retinanet"),
}

# Backbone tag -> function returning a backbone of the C2..C5 contract.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "r50": resnet50,
    "r101": resnet101,
    "x50_32x4d": resnext50_32x4d,
    "x101_32x4d": resnext101_32x4d,
    "slim": resnet_slim,
    # FishNet trunks, c2..c5 = body stage 6 and head stages 7-9; FishNet-188 is a documented
    # reconstruction (glimpse.backbones.fishnet.fishnet188).
    "fishnet99": fishnet99_backbone,
    "fishnet150": fishnet150_backbone,
    "fishnet188": fishnet188_backbone,
    "fishnet_slim": fishnet_slim_backbone,
    # torchvision's MobileNetV2, c2..c5 = 24/32/96/1280 channels (mmdet out_indices 1, 2, 4, 7)
    "mobilenetv2": mobilenet_v2_backbone,
}

# Options that :func:`build` routes to the backbone instead of the detector builder.
BACKBONE_KWARGS = frozenset({"pretrained", "frozen_stages", "norm", "norm_eval", "style"})

# Slim smoke models: a narrow FPN on the 2M-parameter backbone (DESIGN sizing guide).
SLIM_DEFAULTS: dict[str, Any] = {"fpn_channels": 64}


@dataclass(frozen=True)
class ModelSpec:
    """One row of the zoo.

    Attributes:
        detector: key of :data:`DETECTORS`.
        backbone: key of :data:`BACKBONES`.
        defaults: detector-builder keyword defaults (overridden by :func:`build`'s kwargs).
        backbone_defaults: backbone keyword defaults.
        base_lr: peak learning rate per 16 images (mmdet's linear scaling rule): 0.02 for the
            two-stage families, 0.01 for RetinaNet (its mmdet config).
    """

    detector: str
    backbone: str
    defaults: dict[str, Any] = field(default_factory=dict)
    backbone_defaults: dict[str, Any] = field(default_factory=dict)
    base_lr: float = 0.02


# Base learning rate per 16 images, per family (mmdet configs; RetinaNet's is 0.01).
_FAMILY_BASE_LR: dict[str, float] = {"retinanet": 0.01}

# Every detector family on every ResNet backbone...
RESNET_BACKBONES = ("r50", "r101", "x50_32x4d", "x101_32x4d", "slim")

# The slim R-CNN recipe. On 128-256 px images mmdet's 1x settings (1000 training proposals,
# 512 sampled RoIs per image, 1024-wide FCs) cost 3-4x the step time for nothing: 300 proposals
# hold every object of a small image, and a 64-channel FPN does not need 1024-wide FCs. So the
# slim R-CNNs sample 128 RoIs from 300 proposals through 256-wide FCs (the R-50 rows keep mmdet's).
_SLIM_RCNN = {"fc_channels": 256, "rcnn_cfg": RCNNConfig(train=RCNNTrainConfig(num_samples=128))}
_SLIM_PROPOSALS = ProposalConfig(nms_pre=1000, max_per_image=300)

# ...with these defaults on top of the slim ones on the slim backbones:
_SLIM_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # from scratch, a 64-channel head learns only with Kaiming-initialised towers
    "retinanet": {"tower_init": "kaiming"},
    "fast_rcnn": _SLIM_RCNN,
    **{family: {**_SLIM_RCNN, "rpn_cfg": RPNConfig(train_proposals=_SLIM_PROPOSALS)}
       for family in ("faster_rcnn", "mask_rcnn")},
    # the cascades keep their own RPN (2000 training proposals there, SmoothL1 beta 1/9)
    **{family: {**_SLIM_RCNN,
                "rpn_cfg": replace(CASCADE_RPN, train_proposals=_SLIM_PROPOSALS)}
       for family in ("cascade_rcnn", "cascade_mask_rcnn")},
}


def _spec(family: str, backbone: str) -> ModelSpec:
    """Row of ``family`` on ``backbone``: slim defaults on slim backbones, the family's lr."""
    defaults: dict[str, Any] = {}
    if backbone.endswith("slim"):
        defaults = {**SLIM_DEFAULTS, **_SLIM_FAMILY_DEFAULTS.get(family, {})}
    return ModelSpec(family, backbone, defaults, base_lr=_FAMILY_BASE_LR.get(family, 0.02))


# name -> spec.
MODELS: dict[str, ModelSpec] = {
    **{f"{family}_{backbone}_fpn": _spec(family, backbone)
       for family in DETECTORS for backbone in RESNET_BACKBONES},
    # FishNet paper (the talk's COCO table: Mask R-CNN with FishNet-188)
    **{f"{family}_{backbone}_fpn": _spec(family, backbone)
       for family, backbone in (("mask_rcnn", "fishnet188"), ("faster_rcnn", "fishnet99"),
                                ("faster_rcnn", "fishnet150"), ("mask_rcnn", "fishnet_slim"),
                                ("faster_rcnn", "fishnet_slim"))},
}

# CARAFE paper (issue 11): mmdet's FPN_CARAFE neck (an upsampler in every top-down step, P6 in the
# top-down path, padding to 64) and, for Mask R-CNN, CARAFE in the mask head. Names follow mmdet:
# ``<family>_<backbone>_fpn_carafe``; ``upsampler=<Table 2 name>`` swaps the neck's upsampler.
CARAFE_DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "faster_rcnn_carafe": _lazy_builder("glimpse.detectors.carafe", "faster_rcnn_carafe"),
    "mask_rcnn_carafe": _lazy_builder("glimpse.detectors.carafe", "mask_rcnn_carafe"),
}
DETECTORS.update(CARAFE_DETECTORS)
_SLIM_FAMILY_DEFAULTS.update({f"{family}_carafe": _SLIM_FAMILY_DEFAULTS[family]
                              for family in ("faster_rcnn", "mask_rcnn")})
MODELS.update({f"{family.removesuffix('_carafe')}_{backbone}_fpn_carafe": _spec(family, backbone)
               for family in CARAFE_DETECTORS for backbone in RESNET_BACKBONES})


# Hybrid Task Cascade (issue 13): with and without its semantic branch, on every ResNet backbone.
_HTC_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "htc": _lazy_builder("glimpse.detectors.htc", "htc"),
    "htc_without_semantic": _lazy_builder("glimpse.detectors.htc", "htc_without_semantic"),
}
DETECTORS.update(_HTC_FAMILIES)
# the slim R-CNN recipe (300 training proposals, 128 RoIs, 256-wide FCs) on HTC's settings
_SLIM_HTC_RCNN = {"fc_channels": 256,
                  "rcnn_cfg": replace(HTC_RCNN, train=replace(HTC_RCNN.train, num_samples=128))}
_SLIM_FAMILY_DEFAULTS.update({family: {**_SLIM_HTC_RCNN, "rpn_cfg": replace(
    CASCADE_RPN, train_proposals=_SLIM_PROPOSALS)} for family in _HTC_FAMILIES})
MODELS.update({f"{family}_{backbone}_fpn": _spec(family, backbone)
               for family in _HTC_FAMILIES for backbone in RESNET_BACKBONES})


# Guided Anchoring (issue 10): GA-RPN, GA-Faster / GA-Fast R-CNN and GA-RetinaNet, every ResNet
# backbone; lr 0.02 (two-stage) and 0.01 (GA-RetinaNet) as their mmdet configs.
_GA_FAMILIES = ("ga_rpn", "ga_faster_rcnn", "ga_fast_rcnn", "ga_retinanet")
DETECTORS.update({family: _lazy_builder("glimpse.detectors.guided_anchoring", family)
                  for family in _GA_FAMILIES})
_FAMILY_BASE_LR["ga_retinanet"] = 0.01
_SLIM_FAMILY_DEFAULTS["ga_retinanet"] = {"tower_init": "kaiming"}
# the slim R-CNN recipe (128 RoIs, 256-wide FCs) on GA's R-CNN settings (IoU 0.6, stds 0.05/0.1)
_SLIM_FAMILY_DEFAULTS.update({family: {"fc_channels": 256, "rcnn_cfg": replace(
    GA_RCNN, train=replace(GA_RCNN.train, num_samples=128))}
    for family in ("ga_faster_rcnn", "ga_fast_rcnn")})
MODELS.update({f"{family}_{backbone}_fpn": _spec(family, backbone)
               for family in _GA_FAMILIES for backbone in RESNET_BACKBONES})

# The talk's four methods in one detector (issue 13, beyond the papers): FishNet, the CARAFE FPN,
# GA-RPN and HTC (glimpse.detectors.composed); FishNet-188 as in the FishNet paper's COCO table.
DETECTORS["htc_ga_carafe"] = _lazy_builder("glimpse.detectors.composed", "htc_ga_carafe")
_SLIM_FAMILY_DEFAULTS["htc_ga_carafe"] = _SLIM_HTC_RCNN  # GA-RPN keeps its own proposal counts
MODELS.update({f"htc_ga_{backbone}_fpn_carafe": _spec("htc_ga_carafe", backbone)
               for backbone in ("fishnet188", "fishnet_slim")})

# ImageNet MobileNetV2-FPN (issue 14): every family above on torchvision's ImageNet MobileNetV2,
# loaded from the installed weights package (``pretrained="imagenet"``, sha256-checked; pass
# ``pretrained=None`` for a random trunk). The heads take the slim recipe (they learn from
# scratch on small data either way) on a 128-channel FPN; stem and layers 1-3 (stride <= 8, the
# costliest backward) stay frozen with fixed BN statistics.
MOBILENETV2_DEFAULTS: dict[str, Any] = {"fpn_channels": 128}
MOBILENETV2_BACKBONE_DEFAULTS: dict[str, Any] = {"pretrained": "imagenet", "frozen_stages": 3,
                                                 "norm_eval": True}


def _mobilenetv2_name(family: str) -> str:
    """``faster_rcnn`` -> ``faster_rcnn_mobilenetv2_fpn``; CARAFE families end in ``_carafe``."""
    base = family.removesuffix("_carafe")
    return f"{base}_mobilenetv2_fpn" + ("_carafe" if base != family else "")


MODELS.update({
    _mobilenetv2_name(family): replace(
        _spec(family, "mobilenetv2"),
        defaults={**MOBILENETV2_DEFAULTS, **_SLIM_FAMILY_DEFAULTS.get(family, {})},
        backbone_defaults=dict(MOBILENETV2_BACKBONE_DEFAULTS))
    for family in DETECTORS if family != "htc_ga_carafe"  # the composed one is FishNet's
})

# Image classifiers (``glimpse.classification.ImageClassifier``; default 1000 classes).
CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    name: _lazy_builder("glimpse.classification", fn_name)
    for name, fn_name in (("fishnet99", "fishnet99_classifier"),
                          ("fishnet150", "fishnet150_classifier"),
                          ("fishnet201", "fishnet201_classifier"),
                          ("resnet50_cls", "resnet50_classifier"),
                          ("resnet101_cls", "resnet101_classifier"),
                          ("resnet152_cls", "resnet152_classifier"))
}

# CARAFE paper, part 2 (issue 12): semantic segmentors, name -> builder
# ``f(num_classes=150, *, backbone_kwargs=None, **kwargs)``. Kept out of :data:`MODELS` (whose
# rows are detector family x backbone) and listed by :func:`segmentor_names`. ``*_carafe``
# puts CARAFE at every position the paper ablates (FPN top-down, PPM, fuse); the keywords
# ``fpn_upsampler`` / ``ppm_upsampler`` / ``fuse_upsampler`` choose any other mix.
_ALL_CARAFE = {"fpn_upsampler": "carafe", "ppm_upsampler": "carafe", "fuse_upsampler": "carafe"}


def _segmentor(fn_name: str, **defaults: Any) -> Callable[..., nn.Module]:
    return functools.partial(_lazy_builder("glimpse.segmentors", fn_name), **defaults)


SEGMENTORS: dict[str, Callable[..., nn.Module]] = {
    "upernet_r50": _segmentor("upernet_r50"),
    "upernet_r50_carafe": _segmentor("upernet_r50", **_ALL_CARAFE),
    "upernet_slim": _segmentor("upernet_slim"),
    "upernet_slim_carafe": _segmentor("upernet_slim", **_ALL_CARAFE),
    "pspnet_r50_d8": _segmentor("pspnet_r50"),
    "pspnet_r50_d8_carafe": _segmentor("pspnet_r50", ppm_upsampler="carafe"),
    "pspnet_slim_d8": _segmentor("pspnet_slim"),
    "pspnet_slim_d8_carafe": _segmentor("pspnet_slim", ppm_upsampler="carafe"),
}


def segmentor_names() -> list[str]:
    """Names of the semantic segmentors of :data:`SEGMENTORS`, sorted."""
    return sorted(SEGMENTORS)


# Inpainting models (CARAFE paper Table 7), name -> builder ``f(**kwargs)``; ``*_carafe``
# replaces the decoder's upsampling (G&L: both transposed convs; Partial Conv: every nearest x2).
def _inpainter(fn_name: str, **defaults: Any) -> Callable[..., nn.Module]:
    return functools.partial(_lazy_builder("glimpse.inpainting", fn_name), **defaults)


INPAINTERS: dict[str, Callable[..., nn.Module]] = {
    name + suffix: _inpainter(name, **({"upsampler": "carafe"} if suffix else {}))
    for name in ("global_local", "global_local_slim", "pconv", "pconv_slim")
    for suffix in ("", "_carafe")
}


def inpainter_names() -> list[str]:
    """Names of the inpainting models of :data:`INPAINTERS`, sorted."""
    return sorted(INPAINTERS)


def inpainter_mask_kind(name: str) -> str:
    """The hole masks inpainting model ``name`` trains and is evaluated on (mmediting's
    configs): ``"box"`` for Global&Local, ``"free_form"`` for Partial Conv."""
    if name not in INPAINTERS:
        raise KeyError(f"unknown inpainting model {name!r}; known: {', '.join(inpainter_names())}")
    return "box" if name.startswith("global_local") else "free_form"


def names() -> list[str]:
    """All model names (detectors and classifiers), sorted."""
    return sorted([*MODELS, *CLASSIFIERS])


def methods() -> list[str]:
    """Detector families available (the "methods supported" column of the overview)."""
    return sorted({spec.detector for spec in MODELS.values()})


def describe() -> list[dict[str, str]]:
    """One row per model: ``{"name", "detector", "backbone"}``, sorted by name."""
    return [
        {"name": n, "detector": MODELS[n].detector, "backbone": MODELS[n].backbone}
        if n in MODELS else {"name": n, "detector": "classifier", "backbone": n}
        for n in names()
    ]


def _spec_of(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}") from None


def base_lr(name: str) -> float:
    """Peak learning rate per 16 images of zoo model ``name`` (see :class:`ModelSpec`)."""
    return _spec_of(name).base_lr


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """The backbone of zoo model ``name`` (or a backbone tag such as ``"r50"``)."""
    if name in BACKBONES:
        return BACKBONES[name](**kwargs)
    spec = _spec_of(name)
    return BACKBONES[spec.backbone](**{**spec.backbone_defaults, **kwargs})


def build(
    name: str,
    num_classes: int | None = None,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    checkpoint: str | os.PathLike | Any | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build zoo model ``name``.

    Args:
        name: a key of :data:`MODELS` (see :func:`names`), :data:`CLASSIFIERS`,
            :data:`SEGMENTORS` (see :func:`segmentor_names`) or :data:`INPAINTERS` (see
            :func:`inpainter_names`; these take no ``num_classes``).
        num_classes: K foreground classes; None means 80 (COCO) for detectors, 1000
            (ImageNet) for the classifiers of :data:`CLASSIFIERS` and 150 (ADE20K) for the
            segmentors.
        backbone_kwargs: extra keyword arguments of the backbone function.
        checkpoint: a glimpse or mmdetection checkpoint file (or a
            :class:`glimpse.checkpoints.Checkpoint` already read) loaded into the model
            (:func:`glimpse.checkpoints.load_checkpoint`: every tensor or an error). For an
            mmdetection file the backbone style (pytorch / caffe) and, when ``num_classes`` is
            None, the number of classes come from the file's metadata when it has them.
        **kwargs: detector builder keywords (``image_scale``, ``fpn_channels``, ...); those in
            :data:`BACKBONE_KWARGS` (``pretrained``, ``frozen_stages``, ...) go to the backbone.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        FileNotFoundError, glimpse.checkpoints.CheckpointError: the checkpoint is missing,
            unreadable or does not fit the model.
    """
    if checkpoint is not None:
        return _build_from_checkpoint(name, num_classes, checkpoint,
                                      backbone_kwargs=backbone_kwargs, **kwargs)
    if name in CLASSIFIERS:
        return CLASSIFIERS[name](1000 if num_classes is None else num_classes, **kwargs)
    if name in INPAINTERS:
        if num_classes is not None or backbone_kwargs:
            raise ValueError(f"inpainting model {name!r} takes no num_classes or "
                             f"backbone_kwargs")
        return INPAINTERS[name](**kwargs)
    if name in SEGMENTORS:  # ADE20K's 150 classes by default
        bb_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in BACKBONE_KWARGS}
        return SEGMENTORS[name](150 if num_classes is None else num_classes,
                                backbone_kwargs={**bb_kwargs, **(backbone_kwargs or {})},
                                **kwargs)
    num_classes = 80 if num_classes is None else num_classes
    spec = _spec_of(name)
    bb_kwargs = {**spec.backbone_defaults, **{k: kwargs.pop(k) for k in list(kwargs)
                                              if k in BACKBONE_KWARGS}}
    bb_kwargs.update(backbone_kwargs or {})
    backbone = BACKBONES[spec.backbone](**bb_kwargs)
    builder = DETECTORS[spec.detector]
    return builder(backbone, num_classes, **{**spec.defaults, **kwargs})


def _build_from_checkpoint(name: str, num_classes: int | None, path: Any,
                           **kwargs: Any) -> nn.Module:
    """:func:`build` with ``checkpoint=path``: read the file, build to fit it, load it."""
    from glimpse import checkpoints  # the loader needs the detector classes: import on use

    ckpt = path if isinstance(path, checkpoints.Checkpoint) else checkpoints.read_checkpoint(path)
    style = checkpoints.backbone_style(ckpt)
    if style is not None and "style" not in kwargs and name in MODELS:
        kwargs["style"] = style
    if num_classes is None and name in MODELS:
        names = checkpoints.class_names_of(ckpt)
        num_classes = len(names) if names else None
    model = build(name, num_classes, **kwargs)
    checkpoints.load_checkpoint(model, ckpt, model_name=name, style=kwargs.get("style"))
    return model
