"""Image classification in glimpse's model contract, plus the FishNet ImageNet recipe.

:class:`ImageClassifier` wraps any ``nn.Module`` mapping ``[B, 3, H, W]`` normalised images to
logits ``[B, K]`` (FishNet, torchvision ResNet/DenseNet) so that classifiers train through the
same engine as detectors:

* train mode: ``model(images, targets) -> {"loss_cls": CE, "stats_top1": batch accuracy}``;
* eval mode: ``model(images) -> list[{"scores": f32[K] softmax probabilities,
  "labels": i64[] arg-max class}]`` (one dict per image; stack ``scores`` for top-k).

``images`` are ``list[Tensor[3, H, W]]`` (or one ``[B, 3, H, W]`` tensor) in [0, 1], all of
the same size (the classification transforms crop to a fixed size); the wrapper normalises with
the ImageNet mean/std. Classification labels are ``0..K-1`` (ImageFolder order), unlike the
detection labels ``1..K``; a target is ``{"labels": i64[] or i64[1]}``.

The transforms reproduce the official FishNet recipe (``kevin-ssy/FishNet`` ``main.py``,
``utils/data_aug.py``): RandomResizedCrop 224 (8%-100% area, aspect 3/4-4/3), horizontal flip,
PCA lighting 0.1; test: resize 256, centre crop 224.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN_01",
    "IMAGENET_STD_01",
    "PCA_EIGVAL",
    "PCA_EIGVEC",
    "Lighting",
    "ImageClassifier",
    "train_transform",
    "eval_transform",
    "fishnet99_classifier",
    "fishnet150_classifier",
    "fishnet201_classifier",
    "fishnet_slim_classifier",
    "resnet50_classifier",
    "resnet101_classifier",
    "resnet152_classifier",
    "predict_scores",
]

# ImageNet statistics of images in [0, 1] (torchvision / official FishNet normalisation).
IMAGENET_MEAN_01 = (0.485, 0.456, 0.406)
IMAGENET_STD_01 = (0.229, 0.224, 0.225)
# ImageNet RGB PCA (AlexNet lighting; eigen-values as in the official ``utils/data_aug.py``,
# eigen-vectors of the same fb.resnet.torch table).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))


class Lighting(nn.Module):
    """AlexNet-style PCA lighting noise on a [3, H, W] image in [0, 1].

    Adds ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)`` per image.

    Args:
        alphastd: standard deviation of the PCA coefficients (0.1 in the FishNet recipe).
    """

    def __init__(self, alphastd: float = 0.1) -> None:
        super().__init__()
        self.alphastd = alphastd
        self.register_buffer("eigval", torch.tensor(PCA_EIGVAL), persistent=False)
        self.register_buffer("eigvec", torch.tensor(PCA_EIGVEC), persistent=False)

    def forward(self, img: Tensor) -> Tensor:
        """[3, H, W] -> [3, H, W] (not clamped, as the official code)."""
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)  # [3]
        return img + rgb.to(img)[:, None, None]


def train_transform(size: int = 224, *, min_scale: float = 0.08, lighting: float = 0.1
                    ) -> Callable:
    """Official training augmentation for PIL images -> f32[3, size, size] in [0, 1]
    (plus lighting noise). ``min_scale`` is RandomResizedCrop's smallest area fraction."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        Lighting(lighting),
    ])


def eval_transform(size: int = 224, *, resize: int | None = None) -> Callable:
    """Official test transform: resize the short side to ``resize`` (256 for 224, i.e.
    ``size / 0.875``), centre crop ``size``; PIL image -> f32[3, size, size] in [0, 1]."""
    resize = resize if resize is not None else round(size / 0.875)
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor()])


class ImageClassifier(nn.Module):
    """Classifier in the model contract (see module docstring).

    Args:
        net: module mapping normalised ``[B, 3, H, W]`` to logits ``[B, K]``.
        num_classes: K, checked against the logits.
        mean, std: normalisation of images in [0, 1].
        label_smoothing: cross-entropy label smoothing (0 in the official 100-epoch recipe).
    """

    def __init__(self, net: nn.Module, num_classes: int, *,
                 mean: Sequence[float] = IMAGENET_MEAN_01, std: Sequence[float] = IMAGENET_STD_01,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _batch(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        if isinstance(images, Tensor):
            batch = images if images.dim() == 4 else images[None]
        else:
            if len(images) == 0:
                raise ValueError("ImageClassifier got an empty list of images")
            sizes = {tuple(im.shape) for im in images}
            if len(sizes) != 1:
                raise ValueError(f"ImageClassifier needs images of one size (crop them in the "
                                 f"dataset transform), got {sorted(sizes)}")
            batch = torch.stack(list(images))
        if batch.shape[1] != 3:
            raise ValueError(f"ImageClassifier expects 3-channel images, got {tuple(batch.shape)}")
        return (batch.to(self.mean) - self.mean) / self.std

    def logits(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        """Images in [0, 1] -> logits [B, K]."""
        out = self.net(self._batch(images))
        if out.dim() != 2 or out.shape[1] != self.num_classes:
            raise ValueError(f"classifier net returned {tuple(out.shape)}, expected "
                             f"[B, {self.num_classes}]")
        return out

    def forward(self, images: Sequence[Tensor] | Tensor,
                targets: Sequence[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Train: ``{"loss_cls", "stats_top1"}``; eval: one ``{"scores", "labels"}`` per image."""
        logits = self.logits(images)
        if self.training:
            if targets is None:
                raise ValueError("ImageClassifier in train mode needs targets with 'labels'")
            labels = torch.stack([torch.as_tensor(t["labels"]).reshape(()) for t in targets])
            labels = labels.to(logits.device, torch.long)
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"classification labels must be in 0..{self.num_classes - 1}, "
                                 f"got {labels.tolist()}")
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            top1 = (logits.detach().argmax(1) == labels).float().mean()
            return {"loss_cls": loss, "stats_top1": top1}
        scores = logits.softmax(dim=1)
        return [{"scores": s, "labels": s.argmax()} for s in scores]


# Zoo builders: classifiers in the model contract. FishNet follows the official code;
# ResNets are torchvision's constructors (He init, zero-init of nothing), trained from scratch.


def fishnet99_classifier(num_classes: int = 1000, *,
                         pretrained: str | os.PathLike | None = None,
                         **kwargs) -> ImageClassifier:
    """FishNet-99 (16,628,904 parameters at 1000 classes) in the classifier contract;
    ``pretrained``: local path of the official ImageNet checkpoint (``kevin-ssy/FishNet``)."""
    from glimpse.backbones.fishnet import fishnet99

    return ImageClassifier(fishnet99(num_classes, pretrained=pretrained), num_classes, **kwargs)


def fishnet150_classifier(num_classes: int = 1000, *,
                          pretrained: str | os.PathLike | None = None,
                          **kwargs) -> ImageClassifier:
    """FishNet-150 (24,959,400 parameters at 1000 classes) in the classifier contract;
    ``pretrained``: local path of the official ImageNet checkpoint (``kevin-ssy/FishNet``)."""
    from glimpse.backbones.fishnet import fishnet150

    return ImageClassifier(fishnet150(num_classes, pretrained=pretrained), num_classes, **kwargs)


def fishnet201_classifier(num_classes: int = 1000, *,
                          pretrained: str | os.PathLike | None = None,
                          **kwargs) -> ImageClassifier:
    """FishNet-201 (44,584,552 parameters at 1000 classes) in the classifier contract;
    ``pretrained``: local path of the official ImageNet checkpoint (``kevin-ssy/FishNet``)."""
    from glimpse.backbones.fishnet import fishnet201

    return ImageClassifier(fishnet201(num_classes, pretrained=pretrained), num_classes, **kwargs)


def fishnet_slim_classifier(num_classes: int = 1000, **kwargs) -> ImageClassifier:
    """FishNet-99 layout at 1/8 width (smoke tests only)."""
    from glimpse.backbones.fishnet import FISHNET_SLIM, FishNet

    return ImageClassifier(FishNet(FISHNET_SLIM, num_classes), num_classes, **kwargs)


def resnet50_classifier(num_classes: int = 1000, **kwargs) -> ImageClassifier:
    """torchvision ResNet-50 (25,557,032 parameters at 1000 classes)."""
    from torchvision.models import resnet50

    return ImageClassifier(resnet50(num_classes=num_classes), num_classes, **kwargs)


def resnet101_classifier(num_classes: int = 1000, **kwargs) -> ImageClassifier:
    """torchvision ResNet-101 (44,549,160 parameters at 1000 classes)."""
    from torchvision.models import resnet101

    return ImageClassifier(resnet101(num_classes=num_classes), num_classes, **kwargs)


def resnet152_classifier(num_classes: int = 1000, **kwargs) -> ImageClassifier:
    """torchvision ResNet-152 (60,192,808 parameters at 1000 classes)."""
    from torchvision.models import resnet152

    return ImageClassifier(resnet152(num_classes=num_classes), num_classes, **kwargs)


@torch.no_grad()
def predict_scores(model: ImageClassifier, dataset: Dataset, *, device: str | torch.device = "cpu",
                   batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """Class probabilities of every item of a classification dataset.

    Args:
        model: an :class:`ImageClassifier` (switched to eval mode, left there).
        dataset: items ``(image f32[3, H, W], {"labels": i64[]})``.

    Returns:
        (scores f32[N, K] on CPU, labels i64[N]).
    """
    model.eval().to(device)
    scores, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=lambda b: ([x[0] for x in b], [x[1] for x in b]))
    for images, targets in loader:
        out = model([im.to(device) for im in images])
        scores.append(torch.stack([o["scores"] for o in out]).float().cpu())
        labels.append(torch.stack([torch.as_tensor(t["labels"]).reshape(()) for t in targets]))
    if not scores:
        k = model.num_classes
        return torch.zeros(0, k), torch.zeros(0, dtype=torch.long)
    return torch.cat(scores), torch.cat(labels)
