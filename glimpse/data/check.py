"""Report every problem of a COCO set (``python -m glimpse data check --image-dir D --ann A``)
or of a semantic segmentation folder pair (``... --image-dir D --labels L --num-classes K``).

Unlike :class:`~glimpse.data.CocoDetection`, which stops at the first problem, the checker
reads every image and lists each kind of problem with its count and a few examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from glimpse.data.ade20k import out_of_range_labels, read_label_png
from glimpse.data.coco import (
    DatasetError,
    find_structure_problems,
    load_coco_json,
    segmentation_problem,
)

__all__ = ["CheckReport", "check_coco", "check_segmentation"]

_MAX_EXAMPLES = 5
# Boxes may stick out of the image by rounding; COCO's own boxes stay within this.
_OUTSIDE_TOLERANCE = 1.0


@dataclass
class CheckReport:
    """Problems of a COCO data set by kind (e.g. ``missing_image``), one message each.

    Attributes:
        ann_file / image_dir: what was checked.
        num_images / num_annotations: sizes read from the JSON.
        problems: kind -> every message of that kind.
    """

    ann_file: Path
    image_dir: Path
    num_images: int = 0
    num_annotations: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """kind -> number of occurrences."""
        return {k: len(v) for k, v in self.problems.items()}

    def add(self, kind: str, message: str) -> None:
        self.problems.setdefault(kind, []).append(message)

    def format(self, max_examples: int = _MAX_EXAMPLES) -> str:
        """A human-readable report: counts per kind and up to ``max_examples`` examples each."""
        head = (f"{self.ann_file}: {self.num_images} images, {self.num_annotations} annotations, "
                f"images under {self.image_dir}")
        if self.ok:
            return f"{head}\nOK: no problems found"
        total = sum(self.counts().values())
        lines = [head, f"{total} problem(s) of {len(self.problems)} kind(s):"]
        for kind in sorted(self.problems):
            msgs = self.problems[kind]
            lines.append(f"  {kind}: {len(msgs)}")
            lines += [f"    - {m}" for m in msgs[:max_examples]]
            if len(msgs) > max_examples:
                lines.append(f"    ... and {len(msgs) - max_examples} more")
        return "\n".join(lines)


def _check_image(report: CheckReport, image_dir: Path, im: dict, decode: bool) -> None:
    path = image_dir / str(im["file_name"])
    where = f"{path} (image id {im['id']})"
    if not path.is_file():
        report.add("missing_image", f"{where}: file not found")
        return
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            size = (img.height, img.width)
            expected = (im["height"], im["width"])
            if size != expected:
                rotated = ImageOps.exif_transpose(img) if decode else img
                if (rotated.height, rotated.width) != expected:
                    report.add("size_mismatch", f"{where}: image is {size[0]}x{size[1]} (HxW), "
                                                f"JSON says {expected[0]}x{expected[1]}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        report.add("unreadable_image", f"{where}: {e}")


def _check_semantic_map(report: CheckReport, sem_seg_dir: Path, im: dict,
                        num_classes: int | None, ignore_index: int) -> None:
    """The image's ``<stem>.png`` label map: present, decodable, single-channel, the image's
    size and, with ``num_classes``, labels in ``0..num_classes-1`` or ``ignore_index``."""
    path = sem_seg_dir / (Path(str(im["file_name"])).stem + ".png")
    where = f"{path} (image id {im['id']})"
    if not path.is_file():
        report.add("missing_semantic_map", f"{where}: file not found")
        return
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        report.add("unreadable_semantic_map", f"{where}: {e}")
        return
    if arr.ndim != 2:
        report.add("semantic_map_not_single_channel",
                   f"{where}: shape {arr.shape}; labels must be one channel of class indices "
                   f"(a colour PNG is not a label map)")
        return
    if arr.shape != (im["height"], im["width"]):
        report.add("semantic_map_size_mismatch",
                   f"{where}: map is {arr.shape[0]}x{arr.shape[1]} (HxW), image is "
                   f"{im['height']}x{im['width']}")
    if num_classes is not None:
        values = np.unique(arr)
        bad = values[(values != ignore_index) & ((values < 0) | (values >= num_classes))]
        if bad.size:
            report.add("semantic_label_out_of_range",
                       f"{where}: labels {bad[:5].tolist()} are outside 0..{num_classes - 1} "
                       f"and not the ignore value {ignore_index}")


def check_coco(image_dir: str | Path, ann_file: str | Path, *, decode: bool = True,
               sem_seg_dir: str | Path | None = None, sem_seg_classes: int | None = None,
               ignore_index: int = 255) -> CheckReport:
    """Validate a COCO instances data set and collect every problem.

    Kinds reported: those of :func:`~glimpse.data.coco.find_structure_problems`
    (``missing_keys``, ``non_integer_id``, ``duplicate_image_id``, ``duplicate_annotation_id``,
    ``duplicate_category_id``, ``unknown_image_id``, ``unknown_category_id``, ``bad_bbox``)
    plus ``missing_image``, ``unreadable_image``, ``size_mismatch``, ``zero_area_box``
    (width or height <= 0), ``box_outside_image`` (more than 1 px beyond the image border),
    ``non_finite_box``, ``bad_segmentation`` (a polygon with an odd number of coordinates or
    fewer than 3 points, an RLE whose size is not the image's or whose runs do not cover it,
    undecodable RLE counts) and, with ``sem_seg_dir``, ``missing_semantic_map``,
    ``unreadable_semantic_map``, ``semantic_map_not_single_channel``,
    ``semantic_map_size_mismatch`` and, with ``sem_seg_classes``,
    ``semantic_label_out_of_range``.

    Args:
        image_dir: folder of the images' ``file_name``.
        ann_file: the COCO JSON.
        decode: fully decode each image (finds truncated files; slower). ``False`` reads only
            the headers.
        sem_seg_dir: folder of the ``<file stem>.png`` semantic label maps (COCO-stuff
            ``stuffthingmaps/<split>2017``), checked when given.
        sem_seg_classes: number of semantic classes (183 for COCO-stuff); labels beyond it
            (other than ``ignore_index``) are reported.
        ignore_index: the maps' unlabelled value (255).

    Raises:
        DatasetError: the annotation file is missing, is not JSON or lacks ``images`` /
            ``categories``.
    """
    image_dir, ann_file = Path(image_dir), Path(ann_file)
    data = load_coco_json(ann_file)
    report = CheckReport(ann_file, image_dir, len(data["images"]), len(data["annotations"]))
    report.problems.update(find_structure_problems(data))
    if not image_dir.is_dir():
        report.add("missing_image", f"{image_dir}: image folder not found")
    sem_seg_dir = Path(sem_seg_dir) if sem_seg_dir is not None else None
    if sem_seg_dir is not None and not sem_seg_dir.is_dir():
        report.add("missing_semantic_map", f"{sem_seg_dir}: semantic map folder not found")
        sem_seg_dir = None

    images = {}
    for im in data["images"]:
        if not (isinstance(im, dict) and all(k in im for k in ("id", "file_name", "width",
                                                                "height"))):
            continue  # already reported as missing_keys
        if isinstance(im["id"], (int, str)):
            images.setdefault(im["id"], im)
        if image_dir.is_dir():
            _check_image(report, image_dir, im, decode)
        if sem_seg_dir is not None:
            _check_semantic_map(report, sem_seg_dir, im, sem_seg_classes, ignore_index)

    for a in data["annotations"]:
        box = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            continue  # reported as bad_bbox / missing_keys
        where = f"annotation {a.get('id')} (image {a.get('image_id')})"
        x, y, w, h = box
        if not all(math.isfinite(v) for v in box):
            report.add("non_finite_box", f"{where}: bbox {box}")
            continue
        if w <= 0 or h <= 0:
            report.add("zero_area_box", f"{where}: bbox {box} has width or height <= 0")
            continue
        image_id = a.get("image_id")
        im = images.get(image_id) if isinstance(image_id, (int, str)) else None
        if im is None:
            continue
        tol = _OUTSIDE_TOLERANCE
        if x < -tol or y < -tol or x + w > im["width"] + tol or y + h > im["height"] + tol:
            report.add("box_outside_image", f"{where}: bbox {box} (xywh) exceeds the "
                                            f"{im['width']}x{im['height']} (WxH) image")
        if "segmentation" in a:
            problem = segmentation_problem(a["segmentation"], im["height"], im["width"])
            if problem:
                report.add("bad_segmentation", f"{where}: {problem}")
    return report


def check_segmentation(image_dir: str | Path, label_dir: str | Path, *, num_classes: int,
                       reduce_zero_label: bool = False, decode: bool = True) -> CheckReport:
    """Every problem of an image folder and its label maps (``<stem>.png`` per image).

    Kinds: ``missing_annotation``, ``orphan_annotation`` (a label map without image),
    ``unreadable_image``, ``unreadable_annotation``, ``size_mismatch``,
    ``label_out_of_range`` (see :func:`glimpse.data.ade20k.out_of_range_labels`). The report's
    ``ann_file`` is the label folder.

    Raises:
        DatasetError: a folder is missing.
    """
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    for what, d in (("image folder", image_dir), ("annotation folder", label_dir)):
        if not d.is_dir():
            raise DatasetError(f"{d}: {what} not found")
    images = sorted(p for p in image_dir.iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
    report = CheckReport(label_dir, image_dir, num_images=len(images),
                         num_annotations=len(labels))
    for stem in sorted(set(labels) - {p.stem for p in images}):
        report.add("orphan_annotation", f"{labels[stem]}: no image {stem}.* in {image_dir}")
    for path in images:
        label = labels.get(path.stem)
        if label is None:
            report.add("missing_annotation", f"{path}: no label map {path.stem}.png")
            continue
        try:
            with Image.open(path) as img:
                if decode:
                    img.load()
                size = (img.height, img.width)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            report.add("unreadable_image", f"{path}: cannot decode image ({e})")
            continue
        try:
            raw = read_label_png(label)
        except DatasetError as e:
            report.add("unreadable_annotation", str(e))
            continue
        if raw.shape != size:
            report.add("size_mismatch", f"{label}: label map is {raw.shape[0]}x{raw.shape[1]} "
                                        f"(HxW) but its image is {size[0]}x{size[1]}")
        bad = out_of_range_labels(raw, num_classes, reduce_zero_label)
        if bad:
            report.add("label_out_of_range", f"{label}: values {bad} outside the "
                                             f"{num_classes} classes")
    return report
