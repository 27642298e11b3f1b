"""Faster / Mask R-CNN's RoI head (Ren et al., NeurIPS 2015; He et al., ICCV 2017): the
one-stage case of :class:`~glimpse.heads.cascade.CascadeRoIHead`'s loop."""

from __future__ import annotations

from glimpse.heads.cascade import CascadeRoIHead
from glimpse.heads.roi_box import BoxHead, RCNNTestConfig, RCNNTrainConfig
from glimpse.heads.roi_extractor import RoIExtractor
from glimpse.heads.roi_mask import FCNMaskHead

__all__ = ["StandardRoIHead"]


class StandardRoIHead(CascadeRoIHead):
    """Faster / Mask R-CNN's RoI head: one box head (and mask head), loss keys without a stage
    suffix.

    Args:
        box_head: the :class:`BoxHead` (class-specific regression in mmdet's configs).
        train_cfg: proposal assignment and sampling.
        test_cfg: detection post-processing.
        box_extractor: 7x7 RoI extractor; default mmdet's.
        mask_head: :class:`FCNMaskHead` for Mask R-CNN, else None.
        mask_extractor: 14x14 RoI extractor; default mmdet's.
    """

    def __init__(
        self,
        box_head: BoxHead,
        train_cfg: RCNNTrainConfig = RCNNTrainConfig(),
        test_cfg: RCNNTestConfig = RCNNTestConfig(),
        box_extractor: RoIExtractor | None = None,
        mask_head: FCNMaskHead | None = None,
        mask_extractor: RoIExtractor | None = None,
    ) -> None:
        super().__init__([box_head], [train_cfg], [1.0], box_extractor,
                         None if mask_head is None else [mask_head], mask_extractor, test_cfg)
