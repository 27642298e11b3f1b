"""Inpainting image sets: Places365 in its official layout, or any folder of photographs
(imagenette-mini for ``cpu``, the synthetic scenes for ``smoke``), paired with seeded masks.

Places365's official layouts are read as folders of images, found recursively:
``data_256/<letter>/<class>/*.jpg`` (train, Places365-Standard small images) and
``val_256/Places365_val_XXXXXXXX.jpg`` (validation). Items are ``(image float32[3, S, S] in
[0, 1], mask float32[1, S, S], 1 = hole)``: the image's shorter side is resized to ``S``, then
a crop of ``S x S`` is taken (random in training, centred in evaluation; mmediting's G&L
pipeline crops 384 and resizes to 256, so glimpse's crop keeps more of the scene). Masks come
from :mod:`glimpse.data.masks`: in training a fresh one per draw from Python's ``random`` (the
engine seeds workers), in evaluation mask ``i`` of the fixed set ``mask_seed``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from glimpse.data.coco import DatasetError, load_image
from glimpse.data.masks import MaskKind, make_mask, mask_for_index

__all__ = ["InpaintingImages", "PLACES365_SPLITS"]

PLACES365_SPLITS = {"train": "data_256", "val": "val_256"}
_SUFFIXES = (".jpg", ".jpeg", ".png")


class InpaintingImages(Dataset):
    """Images under ``root`` (recursively, sorted) with masks.

    Args:
        root: folder of images.
        image_size: S (256 in the paper's configs).
        mask_kind: ``"box"`` (Global&Local) or ``"free_form"`` (Partial Conv).
        train: random crops and random masks, else centred crops and the fixed mask set.
        mask_seed: seed of the fixed evaluation masks.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 256,
                 mask_kind: MaskKind = "free_form", *, train: bool = False,
                 mask_seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: image folder not found")
        if mask_kind not in ("box", "free_form"):
            raise ValueError(f"mask_kind must be 'box' or 'free_form', got {mask_kind!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in _SUFFIXES)
        if not self.files:
            raise DatasetError(f"{self.root}: no images (.jpg/.png) found")
        self.image_size = image_size
        self.mask_kind = mask_kind
        self.train = train
        self.mask_seed = mask_seed
        self.name = self.split = ""

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self._crop(load_image(self.files[index]))
        size = (self.image_size, self.image_size)
        if self.train:
            mask = make_mask(self.mask_kind, size,
                             np.random.default_rng(random.getrandbits(64)))
        else:
            mask = mask_for_index(self.mask_kind, size, self.mask_seed, index)
        return image, mask

    def _crop(self, image: Tensor) -> Tensor:
        s = self.image_size
        h, w = image.shape[-2:]
        factor = s / min(h, w)
        nh, nw = max(s, round(h * factor)), max(s, round(w * factor))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear",
                              align_corners=False, antialias=True)[0].clamp(0, 1)
        if self.train:
            top, left = random.randint(0, nh - s), random.randint(0, nw - s)
        else:
            top, left = (nh - s) // 2, (nw - s) // 2
        return image[:, top:top + s, left:left + s]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
                f"size={self.image_size}, masks={self.mask_kind!r}, root={str(self.root)!r})")
