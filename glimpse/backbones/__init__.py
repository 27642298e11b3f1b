"""Backbones returning the C2..C5 feature dict of the backbone contract (ResNet, ResNeXt,
MobileNetV2)."""

from glimpse.backbones.mobilenet_v2 import (
    MobileNetV2,
    imagenet_weights_path,
    mobilenet_v2_backbone,
)
from glimpse.backbones.resnet import (
    ResNet,
    resnet50,
    resnet101,
    resnet_slim,
    resnext50_32x4d,
    resnext101_32x4d,
)

__all__ = [
    "ResNet",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnet_slim",
    "MobileNetV2",
    "mobilenet_v2_backbone",
    "imagenet_weights_path",
]
