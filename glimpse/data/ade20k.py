"""Semantic segmentation folders: ADE20K (SceneParsing, ``ADEChallengeData2016``) and the
synthetic scenes' semantic maps, as ``(image, {"sem_seg": int64[H, W]})`` pairs.

ADE20K's official layout::

    ADEChallengeData2016/
      images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
      annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png   (8-bit, 0..150)
      objectInfo150.csv                                                 (optional class table)

Annotation value 0 is "other" (unlabelled) and 1..150 are the classes. As mmsegmentation's
``reduce_zero_label=True`` (and CSAIL's ``segm - 1``), glimpse shifts labels to 0..149 and maps
0 to the ignore index 255. The same class reads any ``images/`` + label folder pair, e.g. the
three-image ``../shared/data/ade20k-sample`` (no split level) and the synthetic scenes'
``sem_seg/`` maps (:data:`glimpse.data.synthetic.SEMANTIC_CLASSES`, 10 classes, no shift).

Every broken case raises :class:`~glimpse.data.coco.DatasetError` with one line naming the
file: a missing folder, an image without annotation, an unreadable or non-single-channel label
map, a label map whose size differs from its image, a label value outside the classes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from glimpse.data.coco import DatasetError, load_image
from glimpse.structures import Target

__all__ = [
    "ADE20K_NUM_CLASSES",
    "ADE20K_SPLITS",
    "IGNORE_INDEX",
    "SegmentationFolder",
    "ade20k",
    "load_label_map",
    "out_of_range_labels",
    "read_ade20k_classes",
    "read_label_png",
]

ADE20K_NUM_CLASSES = 150
ADE20K_SPLITS = {"train": "training", "val": "validation"}
IGNORE_INDEX = 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def out_of_range_labels(raw: np.ndarray, num_classes: int, reduce_zero_label: bool
                        ) -> list[int]:
    """Sorted stored values of a label map that are no class (at most 5), before any shift:
    allowed are ``0..K`` with ``reduce_zero_label`` (0 = ignored), else ``0..K-1`` and 255."""
    if reduce_zero_label:
        bad = (raw < 0) | (raw > num_classes)
    else:
        bad = (raw != IGNORE_INDEX) & ((raw < 0) | (raw >= num_classes))
    return [int(v) for v in np.unique(raw[bad])[:5]]


def read_label_png(path: Path) -> np.ndarray:
    """int64[H, W] stored values of a one-channel label PNG.

    Raises:
        DatasetError: missing, unreadable or multi-channel file.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: annotation (label map) not found")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"{path}: label map must have one channel (mode L or P), "
                                   f"got mode {img.mode}")
            return np.asarray(img).astype(np.int64)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode label map ({e})") from None


def load_label_map(path: str | os.PathLike, *, num_classes: int, reduce_zero_label: bool,
                   expected_size: tuple[int, int] | None = None) -> Tensor:
    """Read a label PNG as int64[H, W] in ``0..num_classes-1`` or :data:`IGNORE_INDEX`.

    Args:
        path: the label map (one channel: mode ``L`` or ``P``; palette indices are the labels).
        num_classes: K.
        reduce_zero_label: 0 -> 255 and v -> v - 1 (ADE20K).
        expected_size: (height, width) of the image it annotates.

    Raises:
        DatasetError: missing, unreadable, multi-channel, wrong-size or out-of-range map.
    """
    path = Path(path)
    arr = read_label_png(path)
    if expected_size is not None and arr.shape != tuple(expected_size):
        raise DatasetError(f"{path}: label map is {arr.shape[0]}x{arr.shape[1]} (HxW) but its "
                           f"image is {expected_size[0]}x{expected_size[1]}")
    bad = out_of_range_labels(arr, num_classes, reduce_zero_label)
    if bad:
        allowed = (f"0..{num_classes}" if reduce_zero_label
                   else f"0..{num_classes - 1} and {IGNORE_INDEX}")
        raise DatasetError(f"{path}: label values {bad} outside the {num_classes} classes "
                           f"(allowed {allowed})")
    if reduce_zero_label:
        arr = np.where(arr == 0, IGNORE_INDEX + 1, arr) - 1  # 0 -> 255, v -> v - 1
    return torch.from_numpy(arr)


def read_ade20k_classes(csv_file: str | os.PathLike) -> list[str]:
    """Class names (first name of each ``Name`` cell, ordered by ``Idx``) of
    ``objectInfo150.csv``."""
    path = Path(csv_file)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        rows.sort(key=lambda r: int(r["Idx"]))
        return [r["Name"].split(";")[0].strip() for r in rows]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read the ADE20K class table ({e})") from None


class SegmentationFolder(Dataset):
    """Images and same-stem label PNGs: ``images/<stem>.<jpg|png>`` <-> ``labels/<stem>.png``.

    Args:
        image_dir: the images.
        label_dir: the label maps (``<stem>.png``).
        num_classes: K.
        reduce_zero_label: ADE20K's shift (module docstring).
        classes: K class names (defaults to ``"class_<i>"``).
        transforms: ``(image, target) -> (image, target)`` (e.g. random flip for training).

    Items: ``(float32[3, H, W] in [0, 1], {"sem_seg": int64[H, W]})``.
    """

    def __init__(self, image_dir: str | os.PathLike, label_dir: str | os.PathLike, *,
                 num_classes: int, reduce_zero_label: bool = False,
                 classes: Sequence[str] | None = None,
                 transforms: Callable | None = None) -> None:
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        for what, d in (("image folder", self.image_dir), ("annotation folder", self.label_dir)):
            if not d.is_dir():
                raise DatasetError(f"{d}: {what} not found")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"classes has {len(classes)} names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.classes = list(classes) if classes is not None else [
            f"class_{i}" for i in range(num_classes)]
        self.transforms = transforms
        self.images = sorted(p for p in self.image_dir.iterdir()
                             if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not self.images:
            raise DatasetError(f"{self.image_dir}: no images (.jpg/.png) found")
        missing = [p for p in self.images if not self.label_path(p).is_file()]
        if missing:
            raise DatasetError(f"{self.label_path(missing[0])}: annotation of image "
                               f"{missing[0].name} not found ({len(missing)} images lack one)")
        self.name = self.split = ""
        self.ignore_index = IGNORE_INDEX

    def label_path(self, image_path: Path) -> Path:
        """The label map of ``image_path``."""
        return self.label_dir / f"{image_path.stem}.png"

    def __len__(self) -> int:
        return len(self.images)

    def load_target(self, index: int, expected_size: tuple[int, int] | None = None) -> Target:
        """``{"sem_seg": int64[H, W]}`` of item ``index`` (no transforms)."""
        path = self.label_path(self.images[index])
        return {"sem_seg": load_label_map(path, num_classes=self.num_classes,
                                          reduce_zero_label=self.reduce_zero_label,
                                          expected_size=expected_size)}

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = load_image(self.images[index])
        target = self.load_target(index, expected_size=tuple(image.shape[-2:]))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
                f"classes={self.num_classes}, image_dir={str(self.image_dir)!r})")


def ade20k(root: str | os.PathLike, split: str = "val", *,
           transforms: Callable | None = None) -> SegmentationFolder:
    """ADE20K (SceneParsing 150 classes) from ``root``.

    Args:
        root: the ``ADEChallengeData2016`` folder (``images/{training,validation}``), or a flat
            folder with ``images/`` and ``annotations/`` directly (e.g. ade20k-sample).
        split: ``"train"`` or ``"val"`` (ignored for a flat folder).
        transforms: item transforms.
    """
    if split not in ADE20K_SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: ADE20K root folder not found (expected "
                           f"ADEChallengeData2016 with images/ and annotations/)")
    sub = ADE20K_SPLITS[split]
    nested = (root / "images" / sub).is_dir()
    if not nested and any((root / "images" / d).is_dir() for d in ADE20K_SPLITS.values()):
        raise DatasetError(f"{root / 'images' / sub}: image folder of split {split!r} not found")
    image_dir = root / "images" / sub if nested else root / "images"
    label_dir = root / "annotations" / sub if nested else root / "annotations"
    table = root / "objectInfo150.csv"
    classes = read_ade20k_classes(table) if table.is_file() else None
    if classes is not None and len(classes) != ADE20K_NUM_CLASSES:
        raise DatasetError(f"{table}: {len(classes)} classes, expected {ADE20K_NUM_CLASSES}")
    ds = SegmentationFolder(image_dir, label_dir, num_classes=ADE20K_NUM_CLASSES,
                            reduce_zero_label=True, classes=classes, transforms=transforms)
    ds.split = split
    return ds
