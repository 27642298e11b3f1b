"""Deterministic synthetic COCO-format data: textured shapes on textured "stuff" scenes.

Each image holds a few instances of six shape classes (:data:`THING_CLASSES`), each with its own
colour and texture statistics so that a small CNN learns them in minutes, over a wide range of
scales (square-root area from 8 px to 70% of the image side) and aspect ratios (1:4 to 4:1), so
that anchor shapes and FPN levels matter. Instances are painted largest first; a later instance
occludes earlier ones, and every annotation describes the *visible* part: a polygon when the
instance is fully visible, a compressed RLE when it is occluded (or has a hole, the ring). So
the decoded masks equal the painted pixels exactly. Placements that would hide more than 60% of
an earlier instance are re-drawn.

Dense "stuff" regions (:data:`STUFF_CLASSES`: sky, grass, sand) cover the background, and each
image has a semantic map PNG (``sem_seg/<stem>.png``, 8-bit grayscale) with the label layout of
:data:`SEMANTIC_CLASSES`::

    0         background (textured, no stuff class)
    1 .. 6    things, equal to the instance labels (rectangle .. diamond)
    7 .. 9    stuff: sky, grass, sand
    255       ignore (reserved; the generator labels every pixel)

Same parameters -> byte-identical JSON and PNGs: a NumPy generator seeded per image, no
timestamps, PIL's PNG writer with fixed settings. :func:`ensure_synthetic` caches a profile's
split under ``<repo>/data/generated/<profile>/`` (git-ignored), generating it on first use into
a temporary folder that is then renamed into place, so concurrent users never see half a set.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from glimpse.data.coco import rle_decode

__all__ = [
    "GENERATOR_VERSION",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "SEMANTIC_CLASSES",
    "SyntheticProfile",
    "SyntheticPaths",
    "PROFILES",
    "generate",
    "ensure_synthetic",
    "generated_root",
]

# Bump when the generator's output changes, so that cached sets are regenerated.
GENERATOR_VERSION = 2

THING_CLASSES = ("rectangle", "ellipse", "triangle", "cross", "ring", "diamond")
STUFF_CLASSES = ("sky", "grass", "sand")
SEMANTIC_CLASSES = ("background", *THING_CLASSES, *STUFF_CLASSES)

# Per class: base RGB colour in [0, 1] and a texture kind, distinct enough to be learnt fast.
_THING_STYLE = {
    1: ((0.85, 0.15, 0.15), "noise"),
    2: ((0.15, 0.30, 0.90), "hstripes"),
    3: ((0.95, 0.75, 0.10), "flat"),
    4: ((0.80, 0.20, 0.80), "checker"),
    5: ((0.10, 0.80, 0.75), "noise"),
    6: ((0.95, 0.95, 0.95), "dstripes"),
}
_MIN_VISIBLE = 0.4  # an occluded instance keeps at least 40% of its pixels ...
_MIN_VISIBLE_PX = 16  # ... and at least 16 of them


@dataclass(frozen=True)
class SyntheticProfile:
    """Parameters of a cached synthetic data set (both splits)."""

    name: str
    image_size: int
    num_train: int
    num_val: int
    train_seed: int
    val_seed: int
    min_instances: int
    max_instances: int


PROFILES: dict[str, SyntheticProfile] = {
    "synthetic-smoke": SyntheticProfile("synthetic-smoke", 128, 200, 50, 1001, 2001, 2, 6),
    "synthetic-cpu": SyntheticProfile("synthetic-cpu", 256, 800, 200, 1002, 2002, 3, 10),
}


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated split lives: images, COCO JSON and semantic maps."""

    root: Path
    image_dir: Path
    ann_file: Path
    sem_seg_dir: Path


# ----------------------------------------------------------------------------------------------
# Textures
# ----------------------------------------------------------------------------------------------


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights (align-corners) for a smooth upsampling."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] smooth noise in [-1, 1]: a random ``cells`` x ``cells`` grid, upsampled."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells))
    m = _interp_matrix(size, cells)
    return m @ grid @ m.T


def _thing_texture(rng: np.random.Generator, label: int, y0: int, x0: int, h: int,
                   w: int) -> np.ndarray:
    """[h, w, 3] appearance of one instance of class ``label`` over the crop at (y0, x0).

    Patterns use absolute image coordinates, so only the crop holding the instance is drawn.
    """
    base, kind = _THING_STYLE[label]
    colour = np.clip(np.asarray(base) + rng.uniform(-0.08, 0.08, 3), 0, 1)
    colour = colour * rng.uniform(0.85, 1.05)
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w]
    if kind == "noise":
        pattern = rng.normal(0.0, 0.06, (h, w))
    elif kind == "hstripes":
        period = rng.uniform(3.0, 6.0)
        pattern = 0.15 * np.sign(np.sin(2 * np.pi * yy / period))
    elif kind == "checker":
        cell = int(rng.integers(2, 5))
        pattern = 0.15 * (((yy // cell) + (xx // cell)) % 2 * 2 - 1)
    elif kind == "dstripes":
        period = rng.uniform(4.0, 8.0)
        pattern = -0.25 * (np.sin(2 * np.pi * (xx + yy) / period) > 0.3)
    else:  # flat
        pattern = rng.normal(0.0, 0.02, (h, w))
    return np.clip(colour[None, None, :] + pattern[..., None], 0.0, 1.0)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured scene with stuff regions: ([size, size, 3] image, [size, size] semantic map)."""
    grey = 0.45 + 0.12 * _smooth_noise(rng, size, 5) + rng.normal(0, 0.03, (size, size))
    image = np.stack([grey * 1.05, grey, grey * 0.9], axis=-1)
    sem = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    sky, grass, sand = (len(THING_CLASSES) + 1 + i for i in range(3))

    if rng.random() < 0.5:  # sand: a blob where a smooth field is high
        field = _smooth_noise(rng, size, 4)
        region = field > rng.uniform(0.2, 0.5)
        tex = np.stack([np.full((size, size), v) for v in (0.80, 0.70, 0.50)], -1)
        tex = tex + rng.normal(0, 0.07, (size, size))[..., None]
        image[region], sem[region] = tex[region], sand
    if rng.random() < 0.5:  # sky: a top band with a wavy lower edge, lighter at the top
        edge = size * rng.uniform(0.2, 0.45) + size * 0.06 * _smooth_noise(rng, size, 6)[0]
        region = yy < edge[None, :]
        ramp = (yy / size)[..., None]
        tex = np.asarray([0.70, 0.82, 0.95]) - 0.2 * ramp + rng.normal(0, 0.01, (size, size, 1))
        image[region], sem[region] = tex[region], sky
    if rng.random() < 0.5:  # grass: a bottom band with a wavy upper edge, high-frequency noise
        edge = size * rng.uniform(0.55, 0.8) + size * 0.06 * _smooth_noise(rng, size, 6)[0]
        region = yy > edge[None, :]
        blades = rng.normal(0, 0.09, (size, size)) + 0.05 * np.sin(xx * 1.7)
        tex = np.asarray([0.30, 0.45, 0.15]) + blades[..., None] * np.asarray([0.6, 1.0, 0.4])
        image[region], sem[region] = tex[region], grass
    return np.clip(image, 0.0, 1.0), sem


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> list[float]:
    n = int(min(64, max(12, math.pi * (rx + ry) / 2)))
    t = np.arange(n) * (2 * np.pi / n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).ravel().tolist()


def _shape_polygons(label: int, x0: float, y0: float, w: float, h: float,
                    flip: bool) -> tuple[list[float], list[float] | None]:
    """(outer polygon, hole polygon or None) of one shape filling the box (x0, y0, w, h)."""
    x1, y1, cx, cy = x0 + w, y0 + h, x0 + w / 2, y0 + h / 2
    hole = None
    if label == 1:  # rectangle
        poly = [x0, y0, x1, y0, x1, y1, x0, y1]
    elif label == 2:  # ellipse
        poly = _ellipse(cx, cy, w / 2, h / 2)
    elif label == 3:  # triangle, apex up or down
        poly = [x0, y0, x1, y0, cx, y1] if flip else [x0, y1, x1, y1, cx, y0]
    elif label == 4:  # cross / plus with arms one third of the box
        a, b, c, d = x0 + w / 3, x0 + 2 * w / 3, y0 + h / 3, y0 + 2 * h / 3
        poly = [a, y0, b, y0, b, c, x1, c, x1, d, b, d, b, y1, a, y1, a, d, x0, d, x0, c, a, c]
    elif label == 5:  # ring: ellipse with an elliptic hole
        poly = _ellipse(cx, cy, w / 2, h / 2)
        hole = _ellipse(cx, cy, 0.55 * w / 2, 0.55 * h / 2)
    else:  # diamond
        poly = [cx, y0, x1, cy, cx, y1, x0, cy]
    # Round so that the JSON holds exactly the vertices that were rasterised.
    poly = [round(v, 2) for v in poly]
    hole = [round(v, 2) for v in hole] if hole is not None else None
    return poly, hole


def _rasterise(poly: list[float], size: int) -> np.ndarray:
    rle = mask_utils.frPyObjects([poly], size, size)
    return rle_decode(rle)[..., 0].astype(bool)


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _render_image(rng: np.random.Generator, size: int, min_instances: int,
                  max_instances: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One image: (uint8[H, W, 3], uint8[H, W] semantic map, annotations without ids)."""
    image, sem = _background(rng, size)
    n = int(rng.integers(min_instances, max_instances + 1))
    lo, hi = math.log(8.0), math.log(0.7 * size)
    specs = []
    for _ in range(n):
        s = math.exp(rng.uniform(lo, hi))  # sqrt(area) of the box, log-uniform
        r = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))  # w / h, log-uniform
        w = min(max(s * math.sqrt(r), 4.0), 0.95 * size)
        h = min(max(s / math.sqrt(r), 4.0), 0.95 * size)
        specs.append((w * h, int(rng.integers(1, len(THING_CLASSES) + 1)), w, h))
    specs.sort(key=lambda t: -t[0])  # big first: small objects lie on top, as in real scenes

    owner = np.full((size, size), -1, dtype=np.int32)
    placed: list[tuple[int, np.ndarray, list[float], int]] = []  # (label, full mask, poly, area)
    for _, label, w, h in specs:
        flip = bool(rng.random() < 0.5)
        for _attempt in range(10):
            x0 = rng.uniform(0.0, size - w)
            y0 = rng.uniform(0.0, size - h)
            poly, hole = _shape_polygons(label, x0, y0, w, h, flip)
            mask = _rasterise(poly, size)
            if hole is not None:
                mask &= ~_rasterise(hole, size)
            if mask.sum() < _MIN_VISIBLE_PX:
                continue
            # Would this placement hide too much of an instance below it?
            covered = np.bincount(owner[mask & (owner >= 0)], minlength=len(placed))
            visible = np.bincount(owner[owner >= 0], minlength=len(placed))
            left = visible - covered
            if all(left[i] >= max(_MIN_VISIBLE * placed[i][3], _MIN_VISIBLE_PX)
                   for i in range(len(placed))):
                break
        else:
            continue
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        crop = mask[y0:y1, x0:x1]
        texture = _thing_texture(rng, label, y0, x0, y1 - y0, x1 - x0)
        image[y0:y1, x0:x1][crop] = texture[crop]
        sem[mask] = label
        owner[mask] = len(placed)
        placed.append((label, mask, poly if hole is None else [], int(mask.sum())))

    anns = []
    for i, (label, full, poly, area) in enumerate(placed):
        vis = owner == i
        rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        segm = [poly] if poly and int(vis.sum()) == area else _encode(vis)
        anns.append({"category_id": label, "bbox": [x, y, bw, bh],
                     "area": float(mask_utils.area(rle)), "iscrowd": 0, "segmentation": segm})
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return pixels, sem, anns


# ----------------------------------------------------------------------------------------------
# Writing and caching
# ----------------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    # Fixed writer settings and no metadata chunks -> identical bytes for identical pixels.
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=1)


def generate(out_dir: str | os.PathLike, *, num_images: int, image_size: int, seed: int,
             split: str, min_instances: int = 2, max_instances: int = 8) -> SyntheticPaths:
    """Write a synthetic COCO split into ``out_dir`` (created if needed).

    Layout: ``images/<id:06d>.png`` (RGB), ``sem_seg/<id:06d>.png`` (labels of
    :data:`SEMANTIC_CLASSES`), ``annotations/instances_<split>.json`` with image ids 1..N,
    category ids 1..6 (:data:`THING_CLASSES`) and an extra ``semantic_categories`` list.

    Args:
        out_dir: destination folder.
        num_images: N.
        image_size: side of the square images in pixels.
        seed: image ``i`` draws from ``numpy.random.default_rng([seed, i])``.
        split: name written into the JSON and file name (e.g. "train", "val").
        min_instances / max_instances: instances drawn per image (placements that would hide
            too much of an earlier instance are dropped after 10 tries, so a few images have
            fewer).

    Returns:
        the :class:`SyntheticPaths` of the split.
    """
    if num_images < 0 or image_size < 32:
        raise ValueError(f"need num_images >= 0 and image_size >= 32, got {num_images}, "
                         f"{image_size}")
    root = Path(out_dir)
    paths = SyntheticPaths(root, root / "images", root / "annotations" / f"instances_{split}.json",
                           root / "sem_seg")
    for d in (paths.image_dir, paths.sem_seg_dir, paths.ann_file.parent):
        d.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        pixels, sem, anns = _render_image(rng, image_size, min_instances, max_instances)
        image_id = index + 1
        name = f"{image_id:06d}.png"
        _save_png(pixels, paths.image_dir / name)
        _save_png(sem, paths.sem_seg_dir / name)
        images.append({"id": image_id, "file_name": name, "width": image_size,
                       "height": image_size})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    data = {
        "info": {"description": "glimpse synthetic shapes", "version": str(GENERATOR_VERSION),
                 "split": split, "seed": seed, "image_size": image_size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                       for i, n in enumerate(THING_CLASSES)],
        "semantic_categories": [{"id": i, "name": n} for i, n in enumerate(SEMANTIC_CLASSES)],
    }
    tmp = paths.ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, paths.ann_file)
    return paths


def generated_root() -> Path:
    """``$GLIMPSE_GENERATED_DIR`` or ``<repo>/data/generated`` (git-ignored)."""
    env = os.environ.get("GLIMPSE_GENERATED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data" / "generated"


def ensure_synthetic(profile: str | SyntheticProfile, split: str = "train",
                     root: str | os.PathLike | None = None) -> SyntheticPaths:
    """The cached split of a profile, generated on first use.

    The folder ``<root>/<profile>/<split>-s<size>-n<N>-seed<seed>-v<version>`` is keyed by every
    parameter. A missing one is generated into a temporary sibling and renamed into place with
    ``os.replace``; when another process wins that race, its copy (identical) is used.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise KeyError(f"unknown synthetic profile {profile!r}; valid: {sorted(PROFILES)}")
        profile = PROFILES[profile]
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    num = profile.num_train if split == "train" else profile.num_val
    seed = profile.train_seed if split == "train" else profile.val_seed
    parent = Path(root) if root is not None else generated_root()
    final = (parent / profile.name /
             f"{split}-s{profile.image_size}-n{num}-seed{seed}-v{GENERATOR_VERSION}")
    ann = final / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            generate(tmp, num_images=num, image_size=profile.image_size, seed=seed, split=split,
                     min_instances=profile.min_instances, max_instances=profile.max_instances)
            try:
                os.replace(tmp, final)
            except OSError:
                if not ann.is_file():  # not a lost race: a real failure
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticPaths(final, final / "images", ann, final / "sem_seg")
