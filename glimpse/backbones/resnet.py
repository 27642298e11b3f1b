"""ResNet / ResNeXt backbones for detection with mmdetection's options.

The module tree and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1``..
``layer4``, blocks with ``conv1..3``, ``bn1..3`` and ``downsample.0/1``), so torchvision
``state_dict`` files load directly (``pretrained="/local/file.pth"``; never a URL).

Detection-specific behaviour follows mmdet's ``ResNet``:

* ``style="pytorch"`` puts a block's stride on the 3x3 conv (torchvision, mmdet default);
  ``style="caffe"`` on the first 1x1 conv (MSRA/Detectron weights, GA-RPN configs);
* ``frozen_stages``: ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages
  ``1..k`` (parameters get ``requires_grad=False`` and the modules stay in eval mode);
  mmdet detectors use 1;
* ``norm="bn"`` with ``norm_eval=True`` (mmdet default) keeps BN statistics fixed in training
  while the affine parameters still train; ``norm="frozen_bn"`` uses torchvision's
  ``FrozenBatchNorm2d`` (buffers only, so it is absent from ``parameters()``);
  ``norm="gn"`` uses GroupNorm with 32 groups (mmdet GN configs);
* ``strides`` / ``dilations`` per stage make the dilated ResNets of semantic segmentation
  (PSPNet / mmseg ``-d8``: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), output stride 8). As
  CSAIL's ``_nostride_dilate`` and mmseg's ``contract_dilation``, the first block of a dilated
  stage uses half the stage's dilation; parameter counts do not change.

The forward returns the C2..C5 maps of the backbone contract::

    {"c2": [B, e*w, H/4, W/4], "c3": [B, 2e*w, H/8, W/8],
     "c4": [B, 4e*w, H/16, W/16], "c5": [B, 8e*w, H/32, W/32]}

(with the default strides; ``out_strides`` holds each map's actual stride)

with ``w`` the base width (64) and ``e`` the block expansion (4 for bottlenecks), i.e.
256/512/1024/2048 channels for ResNet-50; sizes are rounded up (``ceil``) at each stride-2 step.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from glimpse.backbones.frozen_stages import FrozenStagesBackbone
from glimpse.backbones.pretrained import load_exact_state_dict, read_state_dict

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnet_slim",
]

Norm = Literal["bn", "frozen_bn", "gn"]
Style = Literal["pytorch", "caffe"]


_GN_GROUPS = 32  # mmdet GN configs: dict(type='GN', num_groups=32)


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(min(_GN_GROUPS, channels), channels)
    raise ValueError(f"norm must be 'bn', 'frozen_bn' or 'gn', got {norm!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). ``groups``/``width_per_group``/``style`` must be defaults."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        style: Style = "pytorch",
        norm: Norm = "bn",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = _norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = _norm_layer(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: ``out`` is a fresh BN output (as torchvision)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1 bottleneck with expansion 4.

    The 3x3 width is ``floor(planes * width_per_group / 64) * groups`` (ResNeXt, Xie et al.
    CVPR 2017; identical in torchvision and mmdet). ``style`` places the stride on the 3x3
    (``"pytorch"``) or on the first 1x1 (``"caffe"``).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        style: Style = "pytorch",
        norm: Norm = "bn",
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        width = int(planes * (width_per_group / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=stride_1x1, bias=False)
        self.bn1 = _norm_layer(norm, width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride_3x3, padding=dilation, dilation=dilation,
            groups=groups, bias=False
        )
        self.bn2 = _norm_layer(norm, width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = _norm_layer(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place: ``out`` is a fresh BN output (as torchvision)
        return self.relu(out)


class ResNet(FrozenStagesBackbone):
    """ResNet/ResNeXt trunk returning C2..C5 (no pooling head, no classifier).

    Args:
        block: :class:`Bottleneck` (ResNet-50 and deeper, ResNeXt) or :class:`BasicBlock`.
        layers: number of blocks in each of the four stages, e.g. ``(3, 4, 6, 3)``.
        groups: cardinality of the 3x3 convs (ResNeXt 32x4d: 32).
        width_per_group: bottleneck width per group at the first stage (ResNeXt 32x4d: 4).
        base_width: channels of the stem and of the first stage's ``planes`` (64 in every
            published ResNet; smaller for the slim smoke backbone).
        style: ``"pytorch"`` or ``"caffe"`` stride placement.
        frozen_stages: ``-1`` none, ``0`` stem, ``k`` stem + stages ``1..k`` (mmdet semantics).
        norm: ``"bn"``, ``"frozen_bn"`` or ``"gn"``.
        norm_eval: keep every BatchNorm in eval mode during training (mmdet default True);
            ignored for ``"gn"`` and ``"frozen_bn"``.
        pretrained: local path of a torchvision-format ``state_dict`` (``fc.*`` keys are
            ignored); loaded after initialisation. ``None`` keeps the random init.
        strides: stride of each of the four stages ((1, 2, 2, 2); dilated: (1, 2, 1, 1)).
        dilations: dilation of each stage's 3x3 convs ((1, 1, 1, 1); dilated: (1, 1, 2, 4)).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        groups: int = 1,
        width_per_group: int = 64,
        base_width: int = 64,
        style: Style = "pytorch",
        frozen_stages: int = 1,
        norm: Norm = "bn",
        norm_eval: bool = True,
        pretrained: str | os.PathLike | None = None,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stages, got {tuple(layers)}")
        for name, values in (("strides", strides), ("dilations", dilations)):
            if len(values) != 4 or any(not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must be 4 positive ints, got {tuple(values)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        _norm_layer(norm, 1 if norm != "gn" else _GN_GROUPS)  # validates ``norm`` early
        self.frozen_stages = frozen_stages
        self.norm = norm
        self.norm_eval = norm_eval
        self.style = style

        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm_layer(norm, base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = base_width
        stages = []
        for i, (num_blocks, stride, dilation) in enumerate(zip(layers, strides, dilations)):
            planes = base_width * 2**i
            first_dilation = max(1, dilation // 2)  # contract_dilation (mmseg) / CSAIL
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                    _norm_layer(norm, planes * block.expansion),
                )
            blocks = [
                block(inplanes, planes, stride, downsample, groups, width_per_group, style, norm,
                      first_dilation)
            ]
            inplanes = planes * block.expansion
            for _ in range(1, num_blocks):
                blocks.append(
                    block(inplanes, planes, 1, None, groups, width_per_group, style, norm,
                          dilation)
                )
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.out_channels: dict[str, int] = {
            f"c{i + 2}": base_width * 2**i * block.expansion for i in range(4)
        }
        self.out_strides: dict[str, int] = {
            f"c{i + 2}": 4 * math.prod(strides[: i + 1]) for i in range(4)
        }
        self.reset_parameters()
        if pretrained is not None:
            self.load_torchvision_weights(pretrained)
        self.freeze_stages()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convs and unit/zero norm affine (torchvision = mmdet init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_torchvision_weights(self, path: str | os.PathLike) -> None:
        """Load a torchvision-format ResNet ``state_dict`` from a local file.

        The file may hold the state dict itself or wrap it under ``"state_dict"`` / ``"model"``.
        ``fc.*`` keys are ignored; with ``norm="gn"`` the BN running statistics are ignored.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a state dict, or its keys or shapes do not match.
        """
        state = read_state_dict(path)
        ignored = ("running_mean", "running_var", "num_batches_tracked")
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith("fc.") and not (self.norm == "gn" and k.endswith(ignored))
        }
        if self.norm == "frozen_bn":  # FrozenBatchNorm2d has no num_batches_tracked buffer
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        load_exact_state_dict(self, state, path, "ResNet (torchvision key names expected)")

    def frozen_modules(self) -> list[nn.Module]:
        """The stem (``conv1``, ``bn1``) and ``layer1..layer<frozen_stages>`` (none for -1)."""
        stem = [self.conv1, self.bn1] if self.frozen_stages >= 0 else []
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] normalised images -> ordered dict ``c2..c5`` (strides ``out_strides``:
        4, 8, 16, 32 by default)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats: OrderedDict[str, Tensor] = OrderedDict()
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            feats[f"c{i + 2}"] = x
        return feats


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (3, 4, 6, 3 bottlenecks); ``kwargs`` go to :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (3, 4, 23, 3 bottlenecks)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d: ResNet-50 layout with 32 groups of width 4."""
    return ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, **kwargs)


def resnext101_32x4d(**kwargs) -> ResNet:
    """ResNeXt-101 32x4d (mmdet ``X-101-32x4d``)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=4, **kwargs)


def resnet_slim(**kwargs) -> ResNet:
    """Small ResNet for the CPU smoke profile (2,011,168 parameters), trained from scratch.

    One bottleneck per stage at base width 32: C2..C5 have 128/256/512/1024 channels, the same
    block code path as ResNet-50 at 1/4 of its width. Defaults differ from the
    ImageNet-pretrained backbones because nothing is pretrained: ``frozen_stages=-1`` and
    ``norm_eval=False`` (BatchNorm statistics are learnt).
    """
    kwargs.setdefault("frozen_stages", -1)
    kwargs.setdefault("norm_eval", False)
    kwargs.setdefault("base_width", 32)
    return ResNet(Bottleneck, kwargs.pop("layers", (1, 1, 1, 1)), **kwargs)
