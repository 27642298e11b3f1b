"""The one name -> model table of glimpse.

Every model a notebook, the CLI or a test can name is a row of :data:`MODELS`: a detector family
(the builder function in ``glimpse.detectors``) and a backbone (a function in
``glimpse.backbones``), plus default keyword arguments. Names read
``<family>_<backbone>_fpn``, e.g. ``faster_rcnn_r50_fpn`` or ``retinanet_slim_fpn``.

Detector modules are imported only when a model is built, so ``import glimpse.zoo`` stays cheap.
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

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from glimpse.backbones.fishnet import (
    fishnet99_backbone,
    fishnet150_backbone,
    fishnet188_backbone,
    fishnet_slim_backbone,
)
from glimpse.backbones.resnet import (
    resnet50,
    resnet101,
    resnet_slim,
    resnext50_32x4d,
    resnext101_32x4d,
)

__all__ = [
    "BACKBONES",
    "BACKBONE_KWARGS",
    "CARAFE_DETECTORS",
    "CLASSIFIERS",
    "DETECTORS",
    "MODELS",
    "ModelSpec",
    "RESNET_BACKBONES",
    "base_lr",
    "build",
    "build_backbone",
    "describe",
    "methods",
    "names",
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
# ...with these defaults on top of the slim ones on the slim backbone:
_SLIM_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # from scratch, a 64-channel head learns only with Kaiming-initialised towers
    "retinanet": {"tower_init": "kaiming"},
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
MODELS.update({f"{family.removesuffix('_carafe')}_{backbone}_fpn_carafe": _spec(family, backbone)
               for family in CARAFE_DETECTORS for backbone in RESNET_BACKBONES})


# Hybrid Task Cascade (issue 13): with and without its semantic branch, on every ResNet backbone.
_HTC_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "htc": _lazy_builder("glimpse.detectors.htc", "htc"),
    "htc_without_semantic": _lazy_builder("glimpse.detectors.htc", "htc_without_semantic"),
}
DETECTORS.update(_HTC_FAMILIES)
MODELS.update({f"{family}_{backbone}_fpn": _spec(family, backbone)
               for family in _HTC_FAMILIES for backbone in RESNET_BACKBONES})


# Guided Anchoring (issue 10): GA-RPN, GA-Faster / GA-Fast R-CNN and GA-RetinaNet, every ResNet
# backbone; lr 0.02 (two-stage) and 0.01 (GA-RetinaNet) as their mmdet configs.
_GA_FAMILIES = ("ga_rpn", "ga_faster_rcnn", "ga_fast_rcnn", "ga_retinanet")
DETECTORS.update({family: _lazy_builder("glimpse.detectors.guided_anchoring", family)
                  for family in _GA_FAMILIES})
_FAMILY_BASE_LR["ga_retinanet"] = 0.01
_SLIM_FAMILY_DEFAULTS["ga_retinanet"] = {"tower_init": "kaiming"}
MODELS.update({f"{family}_{backbone}_fpn": _spec(family, backbone)
               for family in _GA_FAMILIES for backbone in RESNET_BACKBONES})

# The talk's four methods in one detector (issue 13, beyond the papers): FishNet, the CARAFE FPN,
# GA-RPN and HTC (glimpse.detectors.composed); FishNet-188 as in the FishNet paper's COCO table.
DETECTORS["htc_ga_carafe"] = _lazy_builder("glimpse.detectors.composed", "htc_ga_carafe")
MODELS.update({f"htc_ga_{backbone}_fpn_carafe": _spec("htc_ga_carafe", backbone)
               for backbone in ("fishnet188", "fishnet_slim")})

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
    **kwargs: Any,
) -> nn.Module:
    """Build zoo model ``name``.

    Args:
        name: a key of :data:`MODELS` (see :func:`names`).
        num_classes: K foreground classes; None means 80 (COCO) for detectors and 1000
            (ImageNet) for the classifiers of :data:`CLASSIFIERS`.
        backbone_kwargs: extra keyword arguments of the backbone function.
        **kwargs: detector builder keywords (``image_scale``, ``fpn_channels``, ...); those in
            :data:`BACKBONE_KWARGS` (``pretrained``, ``frozen_stages``, ...) go to the backbone.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name in CLASSIFIERS:
        return CLASSIFIERS[name](1000 if num_classes is None else num_classes, **kwargs)
    num_classes = 80 if num_classes is None else num_classes
    spec = _spec_of(name)
    bb_kwargs = {**spec.backbone_defaults, **{k: kwargs.pop(k) for k in list(kwargs)
                                              if k in BACKBONE_KWARGS}}
    bb_kwargs.update(backbone_kwargs or {})
    backbone = BACKBONES[spec.backbone](**bb_kwargs)
    builder = DETECTORS[spec.detector]
    return builder(backbone, num_classes, **{**spec.defaults, **kwargs})
