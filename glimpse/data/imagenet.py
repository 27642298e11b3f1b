"""Classification data: ImageNet-style folders and a small deterministic synthetic set.

Both datasets yield ``(image f32[3, H, W] in [0, 1], {"labels": i64[] in 0..K-1,
"image_id": int})`` so that :func:`glimpse.data.collate` and the engine treat them like the
detection sets, and :class:`glimpse.classification.ImageClassifier` consumes them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from glimpse.data.coco import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderClassification", "SyntheticClassification"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageFolderClassification(Dataset):
    """``root/<class>/<image>`` folders (ImageNet / imagenette layout), classes in sorted order.

    Args:
        root: the split folder (e.g. ``.../imagenette-mini/train``).
        transform: PIL RGB image -> f32[3, H, W] (e.g. :func:`glimpse.classification
            .train_transform`); default: ``ToTensor`` only.
        class_names: expected class folders in label order (use the train split's for val, so
            both splits share labels); default: the sorted sub-folders of ``root``.

    Raises:
        DatasetError: missing root, no class folders, an empty class, or a missing class.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 class_names: list[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: image folder not found")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not found:
            raise DatasetError(f"{self.root}: no class sub-folders (expected root/<class>/*.jpg)")
        self.class_names = list(class_names) if class_names is not None else found
        missing = sorted(set(self.class_names) - set(found))
        if missing:
            raise DatasetError(f"{self.root}: class folders missing: {missing[:5]}")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.class_names):
            files = sorted(p for p in (self.root / name).iterdir()
                           if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DatasetError(f"{self.root / name}: class folder holds no images "
                                   f"({', '.join(IMAGE_EXTENSIONS)})")
            self.samples += [(f, label) for f in files]
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """The RGB PIL image of sample ``index`` (a clear error names a broken file)."""
        path, _ = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"{path}: cannot read image ({e})") from None

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor | int]]:
        img = self.load(index)
        label = self.samples[index][1]
        if self.transform is not None:
            image = self.transform(img)
        else:
            from torchvision.transforms.functional import to_tensor
            image = to_tensor(img)
        return image, {"labels": torch.tensor(label, dtype=torch.long), "image_id": index}


class SyntheticClassification(Dataset):
    """Deterministic synthetic classes for smoke runs: class ``c`` is an oriented sinusoidal
    grating (angle ``pi * c / K``) tinted by a class colour, with a random phase, frequency
    jitter, position of a bright disc and pixel noise drawn from ``seed`` and the index.

    Args:
        num_classes: K.
        num_images: dataset length (labels cycle ``index % K``).
        size: square image side (pixels).
        seed: base seed; item ``i`` depends only on ``(seed, i)``.
        train: if True, also flip horizontally at random (item-seeded).
    """

    def __init__(self, num_classes: int = 10, num_images: int = 200, size: int = 64, *,
                 seed: int = 0, train: bool = True) -> None:
        if num_classes < 1 or num_images < 0 or size < 1:
            raise ValueError(f"SyntheticClassification: bad sizes num_classes={num_classes}, "
                             f"num_images={num_images}, size={size}")
        self.num_classes, self.num_images, self.size = num_classes, num_images, size
        self.seed, self.train = seed, train
        self.class_names = [f"class_{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor | int]]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        c = index % self.num_classes
        s = self.size
        ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32),
                                torch.arange(s, dtype=torch.float32), indexing="ij")
        angle = math.pi * c / self.num_classes
        freq = (2 * math.pi / max(s / 4, 2.0)) * (0.8 + 0.4 * torch.rand((), generator=g))
        phase = 2 * math.pi * torch.rand((), generator=g)
        grating = 0.5 + 0.5 * torch.sin(freq * (xs * math.cos(angle) + ys * math.sin(angle))
                                         + phase)  # [s, s]
        hue = torch.tensor([math.cos(2 * math.pi * c / self.num_classes + k * 2.094)
                            for k in range(3)]) * 0.25 + 0.5  # [3] class colour
        img = grating[None] * hue[:, None, None]  # [3, s, s]
        cy, cx = (torch.rand(2, generator=g) * s).tolist()
        disc = ((ys - cy) ** 2 + (xs - cx) ** 2 < (s / 8) ** 2).float()
        img = img + 0.3 * disc[None] + 0.05 * torch.randn(3, s, s, generator=g)
        if self.train and torch.rand((), generator=g) < 0.5:
            img = img.flip(-1)
        return img.clamp(0, 1), {"labels": torch.tensor(c, dtype=torch.long), "image_id": index}
