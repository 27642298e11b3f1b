"""RetinaNet (Lin et al., ICCV 2017): backbone + FPN P3..P7 + :class:`~glimpse.heads.retina.
RetinaHead`, with mmdetection v2's ``retinanet_r50_fpn_1x`` configuration.

With a ResNet-50 backbone the model has 37,968,692 parameters, as mmdet's
(23,508,032 backbone + 7,997,440 FPN + 6,463,220 head).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from torch import Tensor, nn

from glimpse.assign import AnchorGenerator
from glimpse.detectors.parts import check_part
from glimpse.heads.base import DenseHead
from glimpse.heads.retina import RetinaHead, RetinaTestConfig
from glimpse.necks.fpn import FPN
from glimpse.preprocess import DetectionPreprocessor
from glimpse.structures import Detection, Target

__all__ = ["RetinaNet", "retinanet"]


class RetinaNet(nn.Module):
    """Single-stage detector following the glimpse model contract.

    Args:
        backbone: module returning the ``c2..c5`` feature dict.
        neck: module mapping the backbone maps to pyramid levels, finest first (P3..P7).
        head: any :class:`~glimpse.heads.base.DenseHead` (RetinaNet's, GA-RetinaNet's);
            its raw output is passed back to it untouched.
        preprocessor: resize / normalise / pad and the inverse mapping.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: DenseHead,
        preprocessor: DetectionPreprocessor,
    ) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def features(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] normalised padded batch -> FPN levels, finest first."""
        return self.neck(list(self.backbone(images).values()))

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[Target] | None = None
    ) -> dict[str, Tensor] | list[Detection]:
        """Losses in train mode, detections in eval mode.

        Args:
            images: ``B`` tensors [3, H_i, W_i] in [0, 1] at original resolution.
            targets: per-image targets in original pixels (train mode only): ``boxes`` xyxy,
                ``labels`` 1..K, optional ``boxes_ignore``.

        Returns:
            Train: the head's loss dict (RetinaHead: ``{"loss_cls", "loss_box",
            "stats_pos"}``). Eval: one :class:`~glimpse.structures.Detection` per image in
            original pixels.
        """
        if self.training and targets is None:
            raise ValueError("RetinaNet in train mode needs targets (call model.eval() to detect)")
        batch = self.preprocessor(images, targets if self.training else None)
        raw = self.head(self.features(batch.tensor))
        anchors = self.head.get_anchors(raw, batch.image_sizes, batch.pad_sizes)
        if self.training:
            return self.head.loss(raw, anchors, batch.targets, batch.image_sizes,
                                  batch.pad_sizes)
        detections = self.head.predict(raw, anchors, batch.image_sizes)
        return self.preprocessor.postprocess(detections, batch)


def retinanet(
    backbone: nn.Module,
    num_classes: int = 80,
    *,
    image_scale: tuple[int, int] = (1333, 800),
    size_divisor: int = 32,
    fpn_channels: int = 256,
    upsampler: Callable[[int], nn.Module] | None = None,
    neck: nn.Module | None = None,
    head: DenseHead | None = None,
    stacked_convs: int | None = None,
    test_cfg: RetinaTestConfig | None = None,
    loss_weights: Mapping[str, float] | None = None,
    tower_init: Literal["normal", "kaiming"] | None = None,
    anchor_generator: AnchorGenerator | None = None,
) -> RetinaNet:
    """RetinaNet with mmdet v2's defaults on any backbone of the C2..C5 contract.

    FPN uses C3..C5 (``start_level=1``) plus two stride-2 convs, the first on C5
    (``add_extra="conv_on_input"``), for P3..P7 at strides 8..128.

    Parts can be passed in ready-made (GA-RetinaNet passes its head, CARAFE its neck); the
    settings of a part passed in are not used, and giving both raises ``ValueError``.

    Args:
        backbone: e.g. :func:`glimpse.backbones.resnet50`.
        num_classes: K foreground classes (of the default head).
        image_scale: (long, short) edge bound of the internal resize.
        size_divisor: padding multiple of the batch.
        fpn_channels: FPN and head tower width (256; 64 for the slim smoke model).
        upsampler: FPN top-down upsampler factory (default nearest). Neck setting.
        neck: a ready neck returning 5 levels of strides 8..128 (replaces the FPN).
        head: a ready :class:`~glimpse.heads.base.DenseHead` (replaces the RetinaHead).
        stacked_convs: convs per head tower (4). Head setting.
        test_cfg: inference thresholds (:class:`RetinaTestConfig`). Head setting.
        loss_weights: multiplier per loss key. Head setting.
        tower_init: head tower init, ``"normal"`` (mmdet, default) or ``"kaiming"`` (narrow
            heads trained from scratch; see :class:`~glimpse.heads.retina.RetinaHead`). Head
            setting.
        anchor_generator: anchors on P3..P7; default
            :func:`~glimpse.heads.retina.retina_anchor_generator` (32 to 813 px). Small
            inputs with small objects may want a smaller ``octave_base_scale``. Head setting.
    """
    head_settings = {"stacked_convs": stacked_convs, "test_cfg": test_cfg,
                     "loss_weights": loss_weights, "tower_init": tower_init,
                     "anchor_generator": anchor_generator}
    check_part("neck", neck, upsampler=upsampler)
    check_part("head", head, **head_settings)
    if neck is None:
        neck = FPN(list(backbone.out_channels.values()), fpn_channels, num_outs=5,
                   add_extra="conv_on_input", upsampler=upsampler, start_level=1)
    if head is None:
        given = {k: v for k, v in head_settings.items() if v is not None}
        head = RetinaHead(num_classes, in_channels=fpn_channels, feat_channels=fpn_channels,
                          **given)
    preprocessor = DetectionPreprocessor(image_scale=image_scale, size_divisor=size_divisor)
    return RetinaNet(backbone, neck, head, preprocessor)
