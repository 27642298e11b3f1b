"""``build_dataset(name, split=..., train=...)``: the named data sets of glimpse (detection, and
semantic segmentation at the end of this docstring).

=================  ==========================================================  ==============
name               data                                                        image scale
=================  ==========================================================  ==============
synthetic-smoke    generated shapes, 128 px, 200 train / 50 val, with sem_seg  (128, 128)
synthetic-cpu      generated shapes, 256 px, 800 train / 200 val, with sem_seg (256, 256)
coco               official COCO 2017 under ``data_root`` (default data/coco)   (1333, 800)
coco128            the first 128 COCO train2017 images, split by image id      (640, 640)
=================  ==========================================================  ==============

Training datasets (``train=True``) flip horizontally with probability 0.5 and skip images
without a usable instance; evaluation datasets do neither. ``proposals=PATH`` (detection sets)
attaches a proposal file's boxes to every target for Fast R-CNN: the best
:data:`~glimpse.data.proposals.TRAIN_PROPOSALS` (300) per image in training, all at evaluation.

COCO128 has no validation set, so glimpse fixes one: with the images sorted by id, the last
:data:`COCO128_NUM_VAL` (16: ids 590 .. 650) are ``val`` and the other 112 are ``train``. Both
splits read the same JSON; ``dataset.coco`` is the whole file and ``dataset.ids`` the split, so
evaluation restricts COCOeval with ``params.imgIds = dataset.ids``.

Semantic segmentation (:data:`SEGMENTATION_DATASET_NAMES`; items ``(image, {"sem_seg"})``, a
:class:`~glimpse.data.ade20k.SegmentationFolder`; training sets flip with probability 0.5):

====================  =========================================================================
name                  data
====================  =========================================================================
synthetic-smoke-seg   the synthetic-smoke scenes' semantic maps: 10 classes (background, 6
                      shapes, 3 stuff), 128 px
synthetic-cpu-seg     the same at 256 px (synthetic-cpu)
ade20k                ADEChallengeData2016 under ``data_root`` (default data/ade20k/
                      ADEChallengeData2016): 150 classes, 0 ignored; training also resizes
                      to a random short side in 300..600, long side <= 1000 (CSAIL)
ade20k-sample         the 3 validation images of ``../shared/data/ade20k-sample`` (both splits)
====================  =========================================================================

Inpainting (:data:`INPAINTING_DATASET_NAMES`; items ``(image, mask)``, an
:class:`~glimpse.data.places.InpaintingImages`; free-form masks, fixed seeded set in ``val``):

=======================  ======================================================================
name                     data
=======================  ======================================================================
places365                Places365 under ``data_root`` (default data/places365): ``data_256/``
                         (train) and ``val_256/`` (val), 256 px
inpaint-imagenette       ``../shared/data/imagenette-mini/{train,val}`` photographs, 128 px
inpaint-synthetic-smoke  the synthetic-smoke scenes' images, 64 px
=======================  ======================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from glimpse.data.ade20k import SegmentationFolder, ade20k
from glimpse.data.coco import CocoDetection, DatasetError, load_coco_json
from glimpse.data.places import PLACES365_SPLITS, InpaintingImages
from glimpse.data.proposals import TRAIN_PROPOSALS, with_proposals
from glimpse.data.synthetic import PROFILES, SEMANTIC_CLASSES, ensure_synthetic
from glimpse.data.transforms import Compose, RandomHorizontalFlip, RandomShortSideResize

__all__ = ["DATASET_NAMES", "COCO128_NUM_VAL", "INPAINTING_DATASET_NAMES",
           "SEGMENTATION_DATASET_NAMES", "build_dataset", "coco128_split", "repo_root"]

DATASET_NAMES = ("synthetic-smoke", "synthetic-cpu", "coco", "coco128")
SEGMENTATION_DATASET_NAMES = ("synthetic-smoke-seg", "synthetic-cpu-seg", "ade20k",
                              "ade20k-sample")
INPAINTING_DATASET_NAMES = ("places365", "inpaint-imagenette", "inpaint-synthetic-smoke")
_INPAINTING_SIZES = {"places365": 256, "inpaint-imagenette": 128, "inpaint-synthetic-smoke": 64}
COCO128_NUM_VAL = 16

_IMAGE_SCALES = {
    "synthetic-smoke": (128, 128),
    "synthetic-cpu": (256, 256),
    "coco": (1333, 800),  # mmdetection's 1x schedule scale, used by all four papers
    "coco128": (640, 640),  # COCO128 images are at most 640 px; keep them at native size
}


def repo_root() -> Path:
    """The checkout holding the ``glimpse`` package (its ``data/`` folder lives there)."""
    return Path(__file__).resolve().parents[2]


def coco128_split(ann_file: str | os.PathLike, split: str) -> list[int]:
    """Image ids of the fixed COCO128 split: the last 16 ids (sorted) are val, the rest train."""
    ids = sorted(im["id"] for im in load_coco_json(ann_file)["images"])
    return ids[-COCO128_NUM_VAL:] if split == "val" else ids[:-COCO128_NUM_VAL]


def _require(path: Path, what: str, name: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: {what} of dataset {name!r} not found (pass --data-root / "
                           f"data_root=...; see data/README.md for the expected layout)")
    return path


def build_dataset(name: str, *, split: str = "train", data_root: str | os.PathLike | None = None,
                  train: bool = True, with_masks: bool = True,
                  proposals: str | os.PathLike | None = None
                  ) -> CocoDetection | SegmentationFolder | InpaintingImages:
    """Build one of :data:`DATASET_NAMES`, :data:`SEGMENTATION_DATASET_NAMES` or
    :data:`INPAINTING_DATASET_NAMES`.

    Args:
        name: the data set.
        split: "train" or "val".
        data_root: where the data lives. ``coco``: the folder with ``train2017/``,
            ``val2017/``, ``annotations/`` and optionally ``stuffthingmaps/`` (default
            ``<repo>/data/coco``); ``coco128``: the folder with ``train2017/`` and
            ``annotations/`` (default ``<repo>/../shared/data/coco128``); synthetic sets: the
            cache root instead of ``<repo>/data/generated``.
        train: training pipeline (random flip, skip images without instances) or evaluation.
        with_masks: decode instance masks.
        proposals: a proposal file (:mod:`glimpse.data.proposals`) of this split's images,
            for Fast R-CNN (detection sets only).

    Returns:
        a :class:`CocoDetection` (segmentation: :class:`SegmentationFolder`) with ``.name`` and
        ``.default_image_scale`` set.
    """
    known = DATASET_NAMES + SEGMENTATION_DATASET_NAMES + INPAINTING_DATASET_NAMES
    if name not in known:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(known)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if proposals is not None and name not in DATASET_NAMES:
        raise ValueError(f"proposals: only detection datasets take proposals, not {name!r}")
    if name in SEGMENTATION_DATASET_NAMES:
        return _segmentation_dataset(name, split, data_root, train)
    if name in INPAINTING_DATASET_NAMES:
        return _inpainting_dataset(name, split, data_root, train)
    kwargs = dict(transforms=RandomHorizontalFlip(0.5) if train else None,
                  with_masks=with_masks, skip_empty=train)
    if name in PROFILES:
        paths = ensure_synthetic(name, split, root=data_root)
        ds = CocoDetection(paths.image_dir, paths.ann_file, sem_seg_dir=paths.sem_seg_dir,
                           **kwargs)
    elif name == "coco":
        root = Path(data_root) if data_root else repo_root() / "data" / "coco"
        _require(root, "root folder", name)
        ann = _require(root / "annotations" / f"instances_{split}2017.json", "annotation file",
                       name)
        image_dir = _require(root / f"{split}2017", "image folder", name)
        stuff = root / "stuffthingmaps" / f"{split}2017"
        ds = CocoDetection(image_dir, ann, sem_seg_dir=stuff if stuff.is_dir() else None,
                           **kwargs)
    else:  # coco128
        root = (Path(data_root) if data_root
                else repo_root().parent / "shared" / "data" / "coco128")
        _require(root, "root folder", name)
        ann = _require(root / "annotations" / "instances_train2017.json", "annotation file",
                       name)
        image_dir = _require(root / "train2017", "image folder", name)
        ds = CocoDetection(image_dir, ann, image_ids=coco128_split(ann, split), **kwargs)
    ds.name = name
    ds.split = split
    ds.default_image_scale = _IMAGE_SCALES[name]
    if proposals is not None:
        ds = with_proposals(ds, proposals, limit=TRAIN_PROPOSALS if train else None)
    return ds


def _segmentation_dataset(name: str, split: str, data_root: str | os.PathLike | None,
                          train: bool) -> SegmentationFolder:
    transforms = RandomHorizontalFlip(0.5) if train else None
    if train and name == "ade20k":  # CSAIL UperNet recipe (the paper's Table 5)
        transforms = Compose([RandomShortSideResize(), RandomHorizontalFlip(0.5)])
    if name.startswith("synthetic"):
        profile = name.removesuffix("-seg")
        paths = ensure_synthetic(profile, split, root=data_root)
        ds = SegmentationFolder(paths.image_dir, paths.sem_seg_dir,
                                num_classes=len(SEMANTIC_CLASSES), classes=SEMANTIC_CLASSES,
                                transforms=transforms)
        scale = _IMAGE_SCALES[profile]
    else:
        default = (repo_root() / "data" / "ade20k" / "ADEChallengeData2016" if name == "ade20k"
                   else repo_root().parent / "shared" / "data" / "ade20k-sample")
        root = _require(Path(data_root) if data_root else default, "root folder", name)
        ds = ade20k(root, split, transforms=transforms)
        scale = (2048, 512)  # mmseg's ADE20K test scale (long side 2048, short side 512)
    ds.name, ds.split, ds.default_image_scale = name, split, scale
    return ds


def _inpainting_dataset(name: str, split: str, data_root: str | os.PathLike | None,
                        train: bool) -> InpaintingImages:
    if name == "places365":
        root = Path(data_root) if data_root else repo_root() / "data" / "places365"
        folder = _require(root / PLACES365_SPLITS[split], f"{split} image folder", name)
    elif name == "inpaint-imagenette":
        root = (Path(data_root) if data_root
                else repo_root().parent / "shared" / "data" / "imagenette-mini")
        folder = _require(root / split, f"{split} image folder", name)
    else:
        folder = ensure_synthetic("synthetic-smoke", split, root=data_root).image_dir
    size = _INPAINTING_SIZES[name]
    ds = InpaintingImages(folder, size, "free_form", train=train)
    ds.name, ds.split, ds.default_image_scale = name, split, (size, size)
    return ds
