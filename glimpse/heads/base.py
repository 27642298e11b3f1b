"""The protocol every dense head speaks (RPN, RetinaNet, and the guided-anchoring heads).

A dense head predicts something at every location of every pyramid level. The detectors drive
it through four calls and never look inside its raw output::

    raw = head(features)                                    # forward, any structure
    anchors = head.get_anchors(raw, image_sizes, pad_sizes)  # one ImageAnchors per image
    losses = head.loss(raw, anchors, targets, image_sizes, pad_sizes)   # train mode
    detections = head.predict(raw, anchors, image_sizes)    # one Detection per image

Anchors are made once per forward and handed to ``loss`` and ``predict``. They are per image
because guided-anchoring heads predict a different anchor set and location mask for every
image; fixed-grid heads share one grid tensor between the images of a batch and differ only in
the padding mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from glimpse.assign import AnchorGenerator
from glimpse.structures import Detection, Target

__all__ = [
    "DenseHead",
    "ImageAnchors",
    "check_loss_weights",
    "flatten_levels",
    "grid_anchors_per_image",
]


@dataclass(frozen=True)
class ImageAnchors:
    """Anchors of one image, per pyramid level.

    Attributes:
        anchors: per level [N_l, 4] xyxy anchors in padded-batch pixels.
        valid: per level bool[N_l], the anchors that may be trained: on a feature location
            inside the image's padded extent (and, for guided anchoring, inside the predicted
            location mask).
    """

    anchors: tuple[Tensor, ...]
    valid: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.anchors) != len(self.valid):
            raise ValueError(f"ImageAnchors got {len(self.anchors)} anchor levels and "
                             f"{len(self.valid)} valid-flag levels")

    @property
    def num_levels(self) -> int:
        return len(self.anchors)

    def flat(self) -> tuple[Tensor, Tensor]:
        """All levels concatenated: ``([N, 4] anchors, bool[N] valid)``."""
        return torch.cat(self.anchors), torch.cat(self.valid)


@runtime_checkable
class DenseHead(Protocol):
    """Four calls of a dense head (see the module docstring); typically an ``nn.Module``."""

    def __call__(self, features: Sequence[Tensor]) -> Any:
        """``forward``: raw per-level predictions, a structure only the head itself reads."""
        ...

    def get_anchors(
        self,
        raw: Any,
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]],
    ) -> list[ImageAnchors]:
        """One :class:`ImageAnchors` per image.

        Args:
            raw: output of the forward call.
            image_sizes: per image, (height, width) of the resized image before padding.
            pad_sizes: per image, (height, width) of the resized image padded to the size
                divisor; anchors on feature locations beyond it are invalid.
        """
        ...

    def loss(
        self,
        raw: Any,
        anchors: Sequence[ImageAnchors],
        targets: Sequence[Target],
        image_sizes: Sequence[tuple[int, int]],
        pad_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``loss_*`` scalars (weighted) and detached ``stats_*`` diagnostics."""
        ...

    def predict(
        self,
        raw: Any,
        anchors: Sequence[ImageAnchors],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detection]:
        """Per image ``boxes`` [D, 4] xyxy, ``scores`` [D] (descending) and ``labels`` [D]
        (1..K; 1 for class-agnostic proposal heads), in the resized-image frame."""
        ...


def grid_anchors_per_image(
    generator: AnchorGenerator,
    feature_sizes: Sequence[tuple[int, int]],
    pad_sizes: Sequence[tuple[int, int]],
    device: torch.device | str,
) -> list[ImageAnchors]:
    """Fixed-grid anchors of a batch: one grid shared by all images, per-image padding flags.

    Args:
        generator: anchors per level.
        feature_sizes: (height, width) of each level's batch feature map.
        pad_sizes: per image, (height, width) padded to the size divisor.
        device: where to create the anchors.
    """
    grid = tuple(generator.grid_anchors(feature_sizes, device=device))
    return [ImageAnchors(grid, tuple(generator.valid_flags(feature_sizes, pad, device)))
            for pad in pad_sizes]


def flatten_levels(maps: Sequence[Tensor], channels: int) -> Tensor:
    """Per-level ``[B, A*C, H, W]`` -> ``[B, sum_l H*W*A, C]`` in the anchor order (y, x, a)."""
    b = maps[0].shape[0]
    return torch.cat([m.permute(0, 2, 3, 1).reshape(b, -1, channels) for m in maps], dim=1)


def check_loss_weights(
    loss_weights: Mapping[str, float] | None, keys: Sequence[str], owner: str
) -> dict[str, float]:
    """A multiplier for every loss key of a head: those given, 1 for the others.

    Raises:
        ValueError: a key the head does not return (a typo would silently weigh nothing).
    """
    given = dict(loss_weights or {})
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ValueError(f"{owner} loss_weights has unknown keys {unknown}; known: {list(keys)}")
    return {key: float(given.get(key, 1.0)) for key in keys}
