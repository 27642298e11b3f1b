"""Encoder-decoder semantic segmentor: the one model contract shared by UperNet and PSPNet.

Images come at their own resolution (``list[Tensor[3, H_i, W_i]]`` in [0, 1]); the model
normalises them (ImageNet mean/std, as the backbones expect), pads the batch bottom/right to a
multiple of ``size_divisor`` (labels padded with ``ignore_index``), runs backbone and decode
head, and upsamples the logits bilinearly to the padded input size before the loss
(mmsegmentation; CSAIL instead downsamples the labels x4, ``segm_downsampling_rate``: glimpse
departs here so that one resolution serves the loss and the prediction).

* train mode: ``model(images, targets)`` with ``targets[i]["sem_seg"]`` int64[H_i, W_i] in
  ``0..K-1`` or ``ignore_index`` -> ``{"loss_seg": CE}`` (+ ``"loss_aux"`` already weighted,
  when an auxiliary head is given);
* eval mode: ``model(images)`` -> one :class:`~glimpse.structures.Segmentation` per image
  (``sem_seg`` float32[K, H_i, W_i] logits, ``labels`` int64[H_i, W_i]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.preprocess import normalize, pad_batch
from glimpse.structures import Segmentation, Target

__all__ = ["EncoderDecoder"]


class EncoderDecoder(nn.Module):
    """Backbone -> decode head (-> optional auxiliary head) -> per-pixel logits.

    Args:
        backbone: maps [B, 3, H, W] to a dict of feature maps (``c2..c5``).
        decode_head: maps that dict to logits [B, K, h, w].
        num_classes: K.
        aux_head: optional second head on the same dict (PSPNet's FCN head on C4), trained
            with weight ``aux_weight`` and unused at inference.
        aux_weight: weight of the auxiliary cross-entropy (0.4 in PSPNet and mmseg).
        ignore_index: label of unlabelled pixels (255).
        size_divisor: the padded batch is a multiple of this (32).
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, num_classes: int, *,
                 aux_head: nn.Module | None = None, aux_weight: float = 0.4,
                 ignore_index: int = 255, size_divisor: int = 32) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id "
                             f"(0..{num_classes - 1})")
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.size_divisor = size_divisor

    def forward(self, images: Sequence[Tensor], targets: Sequence[Target] | None = None
                ) -> dict[str, Tensor] | list[Segmentation]:
        """Losses in train mode, one :class:`Segmentation` per image in eval mode."""
        self._check_images(images)
        if self.training and targets is None:
            raise ValueError("a segmentor in train mode needs targets with 'sem_seg' (call "
                             "model.eval() to predict)")
        batch, sizes = pad_batch([normalize(im) for im in images], self.size_divisor)
        labels = self._labels(targets, sizes, batch) if self.training else None
        feats = self.backbone(batch)
        logits = self._full_size(self.decode_head(feats), batch)
        if labels is not None:
            losses = {"loss_seg": F.cross_entropy(logits, labels,
                                                  ignore_index=self.ignore_index)}
            if self.aux_head is not None:
                aux = self._full_size(self.aux_head(feats), batch)
                losses["loss_aux"] = self.aux_weight * F.cross_entropy(
                    aux, labels, ignore_index=self.ignore_index)
            return losses
        out: list[Segmentation] = []
        for i, (h, w) in enumerate(sizes):
            seg = logits[i, :, :h, :w].float()
            out.append({"sem_seg": seg, "labels": seg.argmax(0)})
        return out

    @staticmethod
    def _full_size(logits: Tensor, batch: Tensor) -> Tensor:
        return F.interpolate(logits, size=batch.shape[-2:], mode="bilinear",
                             align_corners=False)

    @staticmethod
    def _check_images(images: Sequence[Tensor]) -> None:
        if len(images) == 0:
            raise ValueError("images is empty: a segmentor needs at least one image")
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3 or im.shape[1] < 1 or im.shape[2] < 1:
                raise ValueError(f"images[{i}] must be [3, H, W] with H, W >= 1, "
                                 f"got {tuple(im.shape)}")

    def _labels(self, targets: Sequence[Target], sizes: list[tuple[int, int]], batch: Tensor
                ) -> Tensor:
        """Stack the label maps into [B, H, W], padding with ``ignore_index``."""
        if len(targets) != len(sizes):
            raise ValueError(f"targets has {len(targets)} entries for {len(sizes)} images")
        labels = torch.full((batch.shape[0], *batch.shape[-2:]), self.ignore_index,
                            dtype=torch.long, device=batch.device)
        for i, (t, size) in enumerate(zip(targets, sizes)):
            if "sem_seg" not in t:
                raise ValueError(f"targets[{i}] has no 'sem_seg' label map")
            seg = t["sem_seg"]
            if tuple(seg.shape) != size:
                raise ValueError(f"targets[{i}]['sem_seg'] is {tuple(seg.shape)}, "
                                 f"its image is {size}")
            bad = (seg != self.ignore_index) & ((seg < 0) | (seg >= self.num_classes))
            if bad.any():
                raise ValueError(f"targets[{i}]['sem_seg'] has labels outside 0.."
                                 f"{self.num_classes - 1} and {self.ignore_index}: "
                                 f"{seg[bad].unique()[:5].tolist()}")
            labels[i, : size[0], : size[1]] = seg.to(labels.device)
        return labels
