"""The one name -> model table of glimpse.

Every model a notebook, the CLI or a test can name is a row of :data:`MODELS`: a detector family
(the builder function in ``glimpse.detectors``) and a backbone (a function in
``glimpse.backbones``), plus default keyword arguments. Names read
``<family>_<backbone>_fpn``, e.g. ``faster_rcnn_r50_fpn`` or ``retinanet_slim_fpn``.

Detector modules are imported only when a model is built, so ``import glimpse.zoo`` stays cheap.
To add a model, add a backbone to :data:`BACKBONES` and/or a row to :data:`MODELS`.

Example::

    from glimpse import zoo
    model = zoo.build("faster_rcnn_slim_fpn", num_classes=3, image_scale=(128, 128))
    model = zoo.build("mask_rcnn_r50_fpn", pretrained="/data/weights/resnet50.pth")

Keyword arguments of :func:`build` go to the detector builder, except the backbone options
(:data:`BACKBONE_KWARGS`: ``pretrained``, ``frozen_stages``, ``norm``, ``norm_eval``, ``style``),
which go to the backbone; ``backbone_kwargs={...}`` passes any other backbone option.
"""

from __future__ import annotations

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
    "CLASSIFIERS",
    "DETECTORS",
    "MODELS",
    "ModelSpec",
    "base_lr",
    "build",
    "build_backbone",
    "describe",
    "methods",
    "names",
]

# Detector builders ``f(backbone, num_classes, **kwargs)``, imported when first called so that
# importing the zoo does not import every detector.
def _faster_rcnn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.two_stage import faster_rcnn

    return faster_rcnn(backbone, num_classes, **kwargs)


def _mask_rcnn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.two_stage import mask_rcnn

    return mask_rcnn(backbone, num_classes, **kwargs)


def _fast_rcnn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.two_stage import fast_rcnn

    return fast_rcnn(backbone, num_classes, **kwargs)


def _rpn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.two_stage import rpn

    return rpn(backbone, num_classes, **kwargs)


def _cascade_rcnn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.two_stage import cascade_rcnn

    return cascade_rcnn(backbone, num_classes, **kwargs)


def _cascade_mask_rcnn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.two_stage import cascade_mask_rcnn

    return cascade_mask_rcnn(backbone, num_classes, **kwargs)


def _retinanet(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    from glimpse.detectors.retinanet import retinanet

    return retinanet(backbone, num_classes, **kwargs)


# Detector family -> builder.
DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "faster_rcnn": _faster_rcnn,
    "mask_rcnn": _mask_rcnn,
    "fast_rcnn": _fast_rcnn,
    "rpn": _rpn,
    "cascade_rcnn": _cascade_rcnn,
    "cascade_mask_rcnn": _cascade_mask_rcnn,
    "retinanet": _retinanet,
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


# name -> spec: every detector family on every ResNet backbone.
MODELS: dict[str, ModelSpec] = {
    "faster_rcnn_r50_fpn": ModelSpec("faster_rcnn", "r50"),
    "faster_rcnn_r101_fpn": ModelSpec("faster_rcnn", "r101"),
    "faster_rcnn_x50_32x4d_fpn": ModelSpec("faster_rcnn", "x50_32x4d"),
    "faster_rcnn_x101_32x4d_fpn": ModelSpec("faster_rcnn", "x101_32x4d"),
    "faster_rcnn_slim_fpn": ModelSpec("faster_rcnn", "slim", SLIM_DEFAULTS),
    "mask_rcnn_r50_fpn": ModelSpec("mask_rcnn", "r50"),
    "mask_rcnn_r101_fpn": ModelSpec("mask_rcnn", "r101"),
    "mask_rcnn_x50_32x4d_fpn": ModelSpec("mask_rcnn", "x50_32x4d"),
    "mask_rcnn_x101_32x4d_fpn": ModelSpec("mask_rcnn", "x101_32x4d"),
    "mask_rcnn_slim_fpn": ModelSpec("mask_rcnn", "slim", SLIM_DEFAULTS),
    "fast_rcnn_r50_fpn": ModelSpec("fast_rcnn", "r50"),
    "fast_rcnn_r101_fpn": ModelSpec("fast_rcnn", "r101"),
    "fast_rcnn_x50_32x4d_fpn": ModelSpec("fast_rcnn", "x50_32x4d"),
    "fast_rcnn_x101_32x4d_fpn": ModelSpec("fast_rcnn", "x101_32x4d"),
    "fast_rcnn_slim_fpn": ModelSpec("fast_rcnn", "slim", SLIM_DEFAULTS),
    "rpn_r50_fpn": ModelSpec("rpn", "r50"),
    "rpn_r101_fpn": ModelSpec("rpn", "r101"),
    "rpn_x50_32x4d_fpn": ModelSpec("rpn", "x50_32x4d"),
    "rpn_x101_32x4d_fpn": ModelSpec("rpn", "x101_32x4d"),
    "rpn_slim_fpn": ModelSpec("rpn", "slim", SLIM_DEFAULTS),
    "retinanet_r50_fpn": ModelSpec("retinanet", "r50", base_lr=0.01),
    "retinanet_r101_fpn": ModelSpec("retinanet", "r101", base_lr=0.01),
    "retinanet_x50_32x4d_fpn": ModelSpec("retinanet", "x50_32x4d", base_lr=0.01),
    "retinanet_x101_32x4d_fpn": ModelSpec("retinanet", "x101_32x4d", base_lr=0.01),
    # from scratch, a 64-channel head learns only with Kaiming-initialised towers
    "retinanet_slim_fpn": ModelSpec(
        "retinanet", "slim", {**SLIM_DEFAULTS, "tower_init": "kaiming"}, base_lr=0.01
    ),
    "cascade_rcnn_r50_fpn": ModelSpec("cascade_rcnn", "r50"),
    "cascade_rcnn_r101_fpn": ModelSpec("cascade_rcnn", "r101"),
    "cascade_rcnn_x50_32x4d_fpn": ModelSpec("cascade_rcnn", "x50_32x4d"),
    "cascade_rcnn_x101_32x4d_fpn": ModelSpec("cascade_rcnn", "x101_32x4d"),
    "cascade_rcnn_slim_fpn": ModelSpec("cascade_rcnn", "slim", SLIM_DEFAULTS),
    "cascade_mask_rcnn_r50_fpn": ModelSpec("cascade_mask_rcnn", "r50"),
    "cascade_mask_rcnn_r101_fpn": ModelSpec("cascade_mask_rcnn", "r101"),
    "cascade_mask_rcnn_x50_32x4d_fpn": ModelSpec("cascade_mask_rcnn", "x50_32x4d"),
    "cascade_mask_rcnn_x101_32x4d_fpn": ModelSpec("cascade_mask_rcnn", "x101_32x4d"),
    "cascade_mask_rcnn_slim_fpn": ModelSpec("cascade_mask_rcnn", "slim", SLIM_DEFAULTS),
    # FishNet paper (the talk's COCO table: Mask R-CNN with FishNet-188)
    "mask_rcnn_fishnet188_fpn": ModelSpec("mask_rcnn", "fishnet188"),
    "faster_rcnn_fishnet99_fpn": ModelSpec("faster_rcnn", "fishnet99"),
    "faster_rcnn_fishnet150_fpn": ModelSpec("faster_rcnn", "fishnet150"),
    "mask_rcnn_fishnet_slim_fpn": ModelSpec("mask_rcnn", "fishnet_slim", SLIM_DEFAULTS),
    "faster_rcnn_fishnet_slim_fpn": ModelSpec("faster_rcnn", "fishnet_slim", SLIM_DEFAULTS),
}


def _classifier(fn_name: str) -> Callable[..., nn.Module]:
    """An image classifier builder ``f(num_classes=1000, **kwargs)`` of glimpse.classification,
    imported when first called."""

    def build_classifier(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
        from glimpse import classification

        return getattr(classification, fn_name)(num_classes, **kwargs)

    return build_classifier


# Image classifiers (``glimpse.classification.ImageClassifier``; default 1000 classes).
CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "fishnet99": _classifier("fishnet99_classifier"),
    "fishnet150": _classifier("fishnet150_classifier"),
    "fishnet201": _classifier("fishnet201_classifier"),
    "resnet50_cls": _classifier("resnet50_classifier"),
    "resnet101_cls": _classifier("resnet101_classifier"),
    "resnet152_cls": _classifier("resnet152_classifier"),
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
