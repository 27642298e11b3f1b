"""Synthetic generator: byte-determinism, annotations equal pixels, scale coverage, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from glimpse.data import CocoDetection, build_dataset, generate
from glimpse.data.coco import decode_segmentation
from glimpse.data.synthetic import (
    PROFILES,
    SEMANTIC_CLASSES,
    THING_CLASSES,
    ensure_synthetic,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_generator_is_byte_deterministic(tmp_path):
    kw = dict(num_images=6, image_size=96, split="train")
    a = generate(tmp_path / "a", seed=5, **kw)
    b = generate(tmp_path / "b", seed=5, **kw)
    c = generate(tmp_path / "c", seed=6, **kw)
    fa, fb, fc = _files(a.root), _files(b.root), _files(c.root)
    assert len(fa) == 1 + 2 * 6  # JSON + images + semantic maps
    assert fa.keys() == fb.keys() == fc.keys()
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between two runs with the same seed"
    assert fa["annotations/instances_train.json"] != fc["annotations/instances_train.json"]
    assert sum(fa[n] != fc[n] for n in fa) >= 12  # every image differs with another seed


def test_json_is_valid_coco_without_volatile_fields(tmp_path):
    paths = generate(tmp_path, num_images=4, image_size=64, seed=0, split="val")
    data = json.loads(paths.ann_file.read_text())
    assert [c["name"] for c in data["categories"]] == list(THING_CLASSES)
    assert [c["name"] for c in data["semantic_categories"]] == list(SEMANTIC_CLASSES)
    assert "date_created" not in data["info"]
    assert [im["id"] for im in data["images"]] == [1, 2, 3, 4]
    ids = [a["id"] for a in data["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def test_annotations_match_painted_pixels(smoke_train):
    """Decoded masks are the visible pixels: disjoint, equal to the semantic map's thing
    labels, and the boxes are the masks' tight boxes."""
    data = json.loads(smoke_train.ann_file.read_text())
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in data["images"][:40]:
        h, w = im["height"], im["width"]
        sem = np.asarray(Image.open(smoke_train.sem_seg_dir / im["file_name"]))
        assert sem.shape == (h, w)
        things = np.zeros((h, w), dtype=np.int64)
        for a in by_image.get(im["id"], []):
            m = decode_segmentation(a["segmentation"], h, w).astype(bool)
            assert m.sum() == a["area"] > 0
            assert (things[m] == 0).all(), "visible masks overlap"
            things[m] = a["category_id"]
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
        is_thing = (sem >= 1) & (sem <= len(THING_CLASSES))
        np.testing.assert_array_equal(np.where(is_thing, sem, 0), things)


def test_scale_and_aspect_coverage(smoke_train):
    coco = COCO(str(smoke_train.ann_file))
    anns = list(coco.anns.values())
    assert len(coco.imgs) == PROFILES["synthetic-smoke"].num_train
    assert len(anns) >= 2 * len(coco.imgs)
    w = np.array([a["bbox"][2] for a in anns])
    h = np.array([a["bbox"][3] for a in anns])
    scale, ratio = np.sqrt(w * h), w / h
    # Objects from ~8 px to most of the 128 px image, ratios from about 1:4 to 4:1.
    assert scale.min() <= 10 and scale.max() >= 80
    assert (scale < 32).sum() > 0.2 * len(anns) and (scale > 64).sum() > 0.05 * len(anns)
    assert ratio.min() <= 0.3 and ratio.max() >= 3.3
    assert (ratio < 0.5).sum() > 0.1 * len(anns) and (ratio > 2).sum() > 0.1 * len(anns)
    # Every class appears often; occluded (RLE) and intact (polygon) instances both occur.
    counts = np.bincount([a["category_id"] for a in anns], minlength=7)[1:]
    assert counts.min() > 0.08 * len(anns)
    kinds = [isinstance(a["segmentation"], dict) for a in anns]
    assert 0.1 < np.mean(kinds) < 0.9
    # Stuff classes appear in the semantic maps.
    seen = set()
    for p in sorted(smoke_train.sem_seg_dir.iterdir())[:20]:
        seen |= set(np.unique(np.asarray(Image.open(p))).tolist())
    assert {0, 7, 8, 9} <= seen


def test_cache_generates_once_and_leaves_no_temp(tmp_path):
    profile = PROFILES["synthetic-smoke"]
    assert all(p.train_seed != p.val_seed for p in PROFILES.values())
    small = type(profile)(**{**profile.__dict__, "name": "tiny", "num_train": 3, "num_val": 2})
    p1 = ensure_synthetic(small, "val", root=tmp_path)
    stamp = p1.ann_file.stat().st_mtime_ns
    p2 = ensure_synthetic(small, "val", root=tmp_path)
    assert p1 == p2 and p2.ann_file.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [p1.root.name]
    assert len(list(p1.image_dir.iterdir())) == 2
    with pytest.raises(KeyError, match="synthetic-smoke"):
        ensure_synthetic("nope", "train", root=tmp_path)


def test_build_synthetic_dataset(smoke_train):
    root = smoke_train.root.parent.parent  # the cache root of the session fixture
    ds = build_dataset("synthetic-smoke", split="train", data_root=root, train=False)
    assert isinstance(ds, CocoDetection)
    assert ds.name == "synthetic-smoke" and ds.default_image_scale == (128, 128)
    assert ds.class_names == list(THING_CLASSES)
    assert ds.sem_seg_classes == list(SEMANTIC_CLASSES)
    assert len(ds) == 200 and ds.transforms is None
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert target["sem_seg"].dtype == torch.int64 and target["sem_seg"].shape == (128, 128)
    assert target["masks"].shape == (len(target["boxes"]), 128, 128)
    # Each instance's mask pixels carry its label in the semantic map.
    for m, label in zip(target["masks"], target["labels"]):
        assert (target["sem_seg"][m.bool()] == label).all()
    assert math.isclose(float(image.max()), 1.0, abs_tol=0.3) and float(image.min()) >= 0
    train = build_dataset("synthetic-smoke", split="train", data_root=root, train=True)
    assert train.transforms is not None
