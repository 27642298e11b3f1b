"""COCO-format detection datasets (official layout, read through pycocotools).

The loader converts COCO's conventions to glimpse's at the edge: ``bbox`` (x, y, w, h) becomes
xyxy absolute pixels, polygons and RLE become ``uint8[N, H, W]`` masks, category ids become
contiguous labels ``1..K`` (the mapping is kept to write results back in COCO ids) and
``iscrowd`` regions become ``boxes_ignore``, never positives.

Broken inputs raise one :class:`DatasetError` naming the file and the image id. The JSON is
validated once at construction (structure, ids); each image file is checked when it is loaded.
Degenerate boxes are dropped with one summarising warning per dataset, as mmdetection drops
them in ``CocoDataset._parse_ann_info``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor

from glimpse.io import read_json
from glimpse.structures import Target

__all__ = [
    "DatasetError",
    "CocoDetection",
    "collate",
    "load_coco_json",
    "find_structure_problems",
    "load_image",
    "decode_segmentation",
    "segmentation_problem",
    "rle_decode",
]


class DatasetError(ValueError):
    """A dataset on disk is missing, unreadable or inconsistent; the message names the file."""


# ----------------------------------------------------------------------------------------------
# JSON loading and structural validation (shared with ``glimpse.data.check``)
# ----------------------------------------------------------------------------------------------

_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")
_CAT_KEYS = ("id", "name")


def load_coco_json(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO annotation file, raising :class:`DatasetError` when it cannot be used.

    Checks only what every later step relies on: the file exists, parses as JSON, is an object
    and has list-valued ``images`` and ``categories`` (``annotations`` may be absent, as in
    COCO's test-dev ``image_info`` files; it then reads as empty).
    """
    path = Path(ann_file)
    data = read_json(path, "annotation file", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a COCO annotation file must hold a JSON object, "
                           f"found {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing list {key!r} (keys present: {sorted(data)})")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DatasetError(f"{path}: 'annotations' must be a list")
    return data


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def find_structure_problems(data: dict[str, Any]) -> dict[str, list[str]]:
    """Structural problems of a COCO dict that make it unusable, grouped by kind.

    Kinds: ``missing_keys``, ``non_integer_id``, ``duplicate_image_id``,
    ``duplicate_annotation_id``, ``duplicate_category_id``, ``unknown_image_id`` (an
    annotation of an image not in ``images``), ``unknown_category_id``, ``bad_bbox`` (not four
    numbers). Each maps to one human-readable line per occurrence, naming the image id where
    there is one.
    """
    problems: dict[str, list[str]] = {}

    def add(kind: str, msg: str) -> None:
        problems.setdefault(kind, []).append(msg)

    def dupes(items: Iterable[Any]) -> list[Any]:
        return sorted((k for k, n in Counter(items).items() if n > 1), key=repr)

    images = [im for im in data["images"] if isinstance(im, dict)]
    for i, im in enumerate(data["images"]):
        missing = [k for k in _IMAGE_KEYS if not isinstance(im, dict) or k not in im]
        if missing:
            ident = im.get("id", f"#{i}") if isinstance(im, dict) else f"#{i}"
            add("missing_keys", f"image {ident}: missing {', '.join(missing)}")
    cats = [c for c in data["categories"] if isinstance(c, dict)]
    for i, c in enumerate(data["categories"]):
        missing = [k for k in _CAT_KEYS if not isinstance(c, dict) or k not in c]
        if missing:
            add("missing_keys", f"category #{i}: missing {', '.join(missing)}")
    anns = [a for a in data["annotations"] if isinstance(a, dict)]
    for i, a in enumerate(data["annotations"]):
        missing = [k for k in _ANN_KEYS if not isinstance(a, dict) or k not in a]
        if missing:
            ident = a.get("id", f"#{i}") if isinstance(a, dict) else f"#{i}"
            img = f" (image {a['image_id']})" if isinstance(a, dict) and "image_id" in a else ""
            add("missing_keys", f"annotation {ident}{img}: missing {', '.join(missing)}")

    for kind, items in (("image", images), ("annotation", anns), ("category", cats)):
        for x in items:
            if "id" in x and not _is_int(x["id"]):
                add("non_integer_id", f"{kind} id {x['id']!r} is not an integer")

    def key(x: dict, k: str) -> Any:
        """x[k] when present and hashable (unhashable ids are reported above), else None."""
        v = x.get(k)
        return v if isinstance(v, (int, str, float)) else None

    for k in dupes(key(im, "id") for im in images if key(im, "id") is not None):
        add("duplicate_image_id", f"image id {k} appears more than once")
    for k in dupes(key(a, "id") for a in anns if key(a, "id") is not None):
        add("duplicate_annotation_id", f"annotation id {k} appears more than once")
    for k in dupes(key(c, "id") for c in cats if key(c, "id") is not None):
        add("duplicate_category_id", f"category id {k} appears more than once")

    image_ids = {key(im, "id") for im in images} - {None}
    cat_ids = {key(c, "id") for c in cats} - {None}
    for a in anns:
        if "image_id" in a and key(a, "image_id") not in image_ids:
            add("unknown_image_id",
                f"annotation {a.get('id')}: image id {a['image_id']} is not in 'images'")
        if "category_id" in a and key(a, "category_id") not in cat_ids:
            add("unknown_category_id", f"annotation {a.get('id')} (image {a.get('image_id')}): "
                                       f"category id {a['category_id']} is not in 'categories'")
        box = a.get("bbox")
        if "bbox" in a and not (isinstance(box, list) and len(box) == 4
                                and all(_is_number(v) for v in box)):
            add("bad_bbox", f"annotation {a.get('id')} (image {a.get('image_id')}): "
                            f"bbox {box!r} is not four numbers")
    return problems


def _raise_first(path: Path, image_dir: Path, problems: dict[str, list[str]]) -> None:
    if not problems:
        return
    kind, msgs = next(iter(problems.items()))
    more = f" (and {len(msgs) - 1} more)" if len(msgs) > 1 else ""
    others = [k for k in problems if k != kind]
    also = f"; other problems: {', '.join(others)}" if others else ""
    raise DatasetError(f"{path}: {kind.replace('_', ' ')}: {msgs[0]}{more}{also}. "
                       f"For a full report run: python -m glimpse data check "
                       f"--image-dir {image_dir} --ann {path}")


# ----------------------------------------------------------------------------------------------
# Images, masks, proposals
# ----------------------------------------------------------------------------------------------


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale / CMYK / alpha / palette / 16-bit -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit or float grayscale: scale by the dtype's range, not clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0
        elif img.mode.startswith("I;16"):
            top = 65535.0
        else:  # "I": 32-bit container, usually of 16-bit PNG data; 8-bit when it fits
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette with transparency goes to RGB
    return img.convert("RGB")


def load_image(path: str | os.PathLike, *, image_id: Any = None,
               expected_size: tuple[int, int] | None = None) -> Tensor:
    """Read an image file as float32 [3, H, W] RGB in [0, 1].

    Args:
        path: the image file.
        image_id: named in error messages.
        expected_size: (height, width) the annotations were made for. When the stored pixels
            differ but their EXIF-rotated version matches, the rotation is applied (phone
            photos); otherwise a mismatch is a :class:`DatasetError`.
    """
    path = Path(path)
    where = f"{path} (image id {image_id})" if image_id is not None else str(path)
    if not path.is_file():
        raise DatasetError(f"{where}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            if expected_size is not None and (img.height, img.width) != tuple(expected_size):
                rotated = ImageOps.exif_transpose(img)
                if (rotated.height, rotated.width) != tuple(expected_size):
                    raise DatasetError(
                        f"{where}: image is {img.height}x{img.width} (HxW) but the annotation "
                        f"file says {expected_size[0]}x{expected_size[1]}")
                img = rotated
            arr = np.asarray(_to_rgb(img), dtype=np.uint8)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{where}: cannot decode image ({e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> uint8[H, W] mask.

    Polygons with fewer than three points are ignored (pycocotools cannot rasterise them).
    """
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}")
    return np.ascontiguousarray(rle_decode(rle), dtype=np.uint8)


def _rle_string_counts(counts: str) -> list[int] | None:
    """Run lengths of a compressed RLE string (pycocotools' ``rleFrString``: 5 bits a
    character from ``'0'``, continuation bit 0x20, sign bit 0x10, counts after the second
    delta-coded), or None when a character is outside the alphabet or a run is cut off."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why a COCO ``segmentation`` cannot be decoded right for a ``height x width`` image, or
    None when it can.

    Polygons must be lists of an even number (at least 6) of finite numbers; an RLE needs
    ``size == [height, width]`` and run lengths (a list, or pycocotools' compressed string)
    that are non-negative and add up to ``height * width``. pycocotools decodes many broken
    RLEs into garbage without an error, hence the explicit checks.
    """
    if isinstance(segm, list):
        for i, poly in enumerate(segm):
            if not (isinstance(poly, list) and all(_is_number(v) and math.isfinite(v)
                                                   for v in poly)):
                return f"polygon {i} is not a list of numbers"
            if len(poly) % 2:
                return f"polygon {i} has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon {i} has fewer than 3 points ({len(poly)} coordinates)"
        return None
    if not (isinstance(segm, dict) and "size" in segm and "counts" in segm):
        return "segmentation is neither a list of polygons nor an RLE dict with size and counts"
    if segm["size"] != [height, width]:
        return f"RLE size {segm['size']!r} is not the image's [{height}, {width}]"
    counts = segm["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
        if runs is None:
            return "compressed RLE counts are not a valid pycocotools string"
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = counts
    else:
        return "RLE counts are neither a list of integers nor a compressed string"
    if any(r < 0 for r in runs):
        return "RLE has negative run lengths"
    if sum(runs) != height * width:
        return f"RLE run lengths add up to {sum(runs)}, not {height} x {width} = {height * width}"
    return None


def rle_decode(rle: dict | list) -> np.ndarray:
    """``pycocotools.mask.decode`` without its NumPy-2 ``DeprecationWarning`` (pycocotools 2.0.x
    calls ``np.array(..., copy=False)`` internally; harmless, but it floods test logs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def _valid_segmentation(segm: Any) -> bool:
    if isinstance(segm, list):
        return any(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm)
    return isinstance(segm, dict) and "counts" in segm and "size" in segm


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


# Per image: (kept annotations, boxes float32[N, 4] xyxy, labels int64[N], crowd float32[M, 4]).
_ImageInstances = tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format instance dataset: ``dataset[i] -> (image float32[3, H, W] in [0, 1], Target)``.

    Images stay at their original resolution (detectors resize internally). The target holds
    ``boxes`` (float32[N, 4] xyxy), ``labels`` (int64[N] in 1..K), ``masks`` (uint8[N, H, W],
    when ``with_masks``), ``boxes_ignore`` (float32[M, 4], the crowd regions), ``image_id``
    (the COCO id) and, when configured, ``sem_seg`` (int64[H, W], 255 = ignore) and
    ``proposals`` (float32[P, 4] xyxy).

    Args:
        image_dir: folder holding each image's ``file_name``.
        ann_file: COCO instances JSON.
        transforms: ``(image, target) -> (image, target)``, e.g. ``RandomHorizontalFlip(0.5)``.
        with_masks: decode instance masks.
        sem_seg_dir: folder of ``<file_stem>.png`` semantic maps read as integers (e.g. COCO's
            ``stuffthingmaps/train2017``); 255 is ignore.
        skip_empty: drop images without any valid non-crowd instance (training; mmdetection's
            ``filter_empty_gt``). Evaluation keeps them.
        proposals_file: precomputed proposals of every image, all of them in the targets (see
            :mod:`glimpse.data.proposals`; an image without any is an error naming its id).
        image_ids: restrict the dataset to these image ids (a fixed split); ``.coco`` keeps the
            whole file so COCOeval can use it with ``params.imgIds = dataset.ids``.

    Attributes:
        coco: the pycocotools ``COCO`` object of the whole file.
        ids: image ids in dataset order (sorted).
        label_to_cat_id / cat_id_to_label: contiguous label <-> COCO category id.
        class_names: names of labels 1..K (index 0 is label 1).
        sem_seg_classes: names of the semantic map values, when the JSON has
            ``semantic_categories`` (synthetic sets), else None.
        proposals, max_proposals: the :class:`~glimpse.data.proposals.ProposalFile` whose
            ``max_proposals`` best boxes per image go into the targets (None: no proposals;
            set by :func:`glimpse.data.proposals.attach_proposals`).
        name, split, default_image_scale: set by :func:`glimpse.data.build_dataset`.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike, *,
                 transforms: Callable | None = None, with_masks: bool = True,
                 sem_seg_dir: str | os.PathLike | None = None, skip_empty: bool = False,
                 proposals_file: str | os.PathLike | None = None,
                 image_ids: Sequence[int] | None = None):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        self.sem_seg_dir = Path(sem_seg_dir) if sem_seg_dir is not None else None
        self.name = self.ann_file.stem
        self.default_image_scale: tuple[int, int] = (1333, 800)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found")
        if self.sem_seg_dir is not None and not self.sem_seg_dir.is_dir():
            raise DatasetError(f"{self.sem_seg_dir}: semantic map folder not found")

        data = load_coco_json(self.ann_file)
        _raise_first(self.ann_file, self.image_dir, find_structure_problems(data))
        for im in data["images"]:
            if not (isinstance(im["width"], int) and isinstance(im["height"], int)
                    and im["width"] > 0 and im["height"] > 0):
                raise DatasetError(f"{self.ann_file}: image {im['id']} has invalid size "
                                   f"{im['width']!r}x{im['height']!r} (width x height)")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        cat_ids = sorted(self.coco.cats)
        self.label_to_cat_id: dict[int, int] = {i + 1: c for i, c in enumerate(cat_ids)}
        self.cat_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in cat_ids]
        # Names of the semantic map's values, when the JSON lists them (glimpse's synthetic sets).
        sem_cats = data.get("semantic_categories")
        self.sem_seg_classes: list[str] | None = (
            [c["name"] for c in sorted(sem_cats, key=lambda c: c["id"])]
            if isinstance(sem_cats, list)
            and all(isinstance(c, dict) and "id" in c and "name" in c for c in sem_cats)
            else None)
        self.split: str | None = None

        self._instances = self._parse_annotations()
        ids = sorted(self.coco.imgs)
        if image_ids is not None:
            unknown = sorted(set(image_ids) - set(self.coco.imgs))
            if unknown:
                raise DatasetError(f"{self.ann_file}: requested image ids not in the file: "
                                   f"{unknown[:5]}")
            wanted = set(image_ids)
            ids = [i for i in ids if i in wanted]
        if skip_empty:
            ids = [i for i in ids if len(self._instances[i][1])]
        self.ids: list[int] = ids

        self.proposals = None
        self.max_proposals: int | None = None
        if proposals_file is not None:
            # imported here: glimpse.data.proposals imports this module
            from glimpse.data.proposals import attach_proposals

            attach_proposals(self, proposals_file, limit=None)

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.label_to_cat_id)

    def _parse_annotations(self) -> dict[int, _ImageInstances]:
        """Per image: (kept annotations, boxes float32[N, 4], labels int64[N], ignore [M, 4]).

        Boxes are clipped to the image; those left with no area (zero or negative size, fully
        outside, non-finite) or, for mask datasets, without a usable segmentation are dropped
        and counted in one warning.
        """
        dropped: Counter[str] = Counter()
        out = {}
        for img_id, info in self.coco.imgs.items():
            w, h = info["width"], info["height"]
            kept, boxes, labels, ignore = [], [], [], []
            for ann in self.coco.imgToAnns.get(img_id, []):
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                if not all(math.isfinite(v) for v in (x, y, bw, bh)):
                    dropped["non-finite"] += 1
                    continue
                if bw <= 0 or bh <= 0:
                    dropped["zero or negative size"] += 1
                    continue
                x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
                x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
                if x2 <= x1 or y2 <= y1:
                    dropped["outside the image"] += 1
                    continue
                if ann.get("iscrowd", 0):
                    ignore.append((x1, y1, x2, y2))
                    continue
                if self.with_masks and not _valid_segmentation(ann.get("segmentation")):
                    dropped["no usable segmentation"] += 1
                    continue
                kept.append(ann)
                boxes.append((x1, y1, x2, y2))
                labels.append(self.cat_id_to_label[ann["category_id"]])
            out[img_id] = (kept, np.asarray(boxes, np.float32).reshape(-1, 4),
                           np.asarray(labels, np.int64),
                           np.asarray(ignore, np.float32).reshape(-1, 4))
        if dropped:
            detail = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
            if dropped["no usable segmentation"]:
                detail += " (box-only data: pass with_masks=False)"
            warnings.warn(f"{self.ann_file}: dropped {sum(dropped.values())} degenerate "
                          f"annotation(s): {detail}", stacklevel=3)
        self.num_dropped = sum(dropped.values())
        return out

    def label_map_for(self, class_names: Sequence[str] | None) -> dict[int, int]:
        """Model label -> COCO category id for a model trained on ``class_names`` (label
        ``i + 1`` is ``class_names[i]``), matched by name; ``None`` means this file's own
        categories in id order.

        Raises:
            DatasetError: a class name is not a category of this annotation file.
        """
        if class_names is None:
            return dict(self.label_to_cat_id)
        by_name = {self.coco.cats[c]["name"]: c for c in self.coco.cats}
        missing = [n for n in class_names if n not in by_name]
        if missing:
            raise DatasetError(f"class {missing[0]!r} is not a category of {self.ann_file} "
                               f"({len(missing)} missing)")
        return {i + 1: by_name[n] for i, n in enumerate(class_names)}

    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` from the JSON, without reading the image."""
        info = self.coco.imgs[self.ids[index]]
        return info["height"], info["width"]

    def load_target(self, index: int) -> Target:
        """The target of item ``index`` before transforms (no image decoding)."""
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        h, w = info["height"], info["width"]
        anns, boxes, labels, ignore = self._instances[img_id]
        target: Target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "boxes_ignore": torch.from_numpy(ignore.copy()),
            "image_id": int(img_id),
        }
        if self.with_masks:
            masks = np.zeros((len(anns), h, w), dtype=np.uint8)
            for i, ann in enumerate(anns):
                segm = ann["segmentation"]
                problem = (segmentation_problem(segm, h, w) if isinstance(segm, dict)
                           else None)
                if problem:
                    raise DatasetError(f"{self.ann_file}: annotation {ann['id']} (image "
                                       f"{img_id}): {problem}")
                try:
                    masks[i] = decode_segmentation(ann["segmentation"], h, w)
                except Exception as e:  # pycocotools raises bare exceptions on bad RLE
                    raise DatasetError(f"{self.ann_file}: annotation {ann['id']} (image "
                                       f"{img_id}): cannot decode segmentation ({e})") from None
            target["masks"] = torch.from_numpy(masks)
        if self.sem_seg_dir is not None:
            target["sem_seg"] = self._load_sem_seg(info)
        if self.proposals is not None:
            target["proposals"] = self.proposals.boxes(int(img_id), self.max_proposals)
        return target

    def _load_sem_seg(self, info: dict) -> Tensor:
        path = self.sem_seg_dir / (Path(info["file_name"]).stem + ".png")
        where = f"{path} (image id {info['id']})"
        if not path.is_file():
            raise DatasetError(f"{where}: semantic map not found")
        try:
            with Image.open(path) as img:
                arr = np.asarray(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{where}: cannot decode semantic map ({e})") from None
        if arr.ndim != 2:
            raise DatasetError(f"{where}: a semantic map must be single-channel, got {arr.shape}")
        if arr.shape != (info["height"], info["width"]):
            raise DatasetError(f"{where}: map is {arr.shape[0]}x{arr.shape[1]} but the image is "
                               f"{info['height']}x{info['width']}")
        return torch.from_numpy(arr.astype(np.int64))

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        image = load_image(self.image_dir / info["file_name"], image_id=img_id,
                           expected_size=(info["height"], info["width"]))
        target = self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
                f"classes={self.num_classes}, ann_file={str(self.ann_file)!r})")


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])``; images keep their sizes."""
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    return images, targets
