"""Inpainting data: seeded box and free-form masks, the image folders and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse.data import DatasetError, InpaintingImages, build_dataset
from glimpse.data.masks import box_mask, free_form_mask, make_mask, mask_for_index

IMAGENETTE = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenette-mini"


def test_box_mask_follows_the_gl_config():
    for i in range(50):
        m = box_mask((256, 256), np.random.default_rng(i))
        ys, xs = torch.nonzero(m[0], as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert 88 <= h <= 128 and 88 <= w <= 128 and int(m.sum()) == h * w
        assert ys.min() >= 20 and xs.min() >= 20 and ys.max() < 236 and xs.max() < 236


def test_free_form_mask_area_and_values():
    for i in range(20):
        m = free_form_mask((128, 128), np.random.default_rng(i))
        assert m.shape == (1, 128, 128) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert 0.15 <= m.mean() <= 0.65


def test_fixed_masks_are_reproducible_and_differ_by_index():
    for kind in ("box", "free_form"):
        a = mask_for_index(kind, (64, 64), seed=3, index=5)
        assert torch.equal(a, mask_for_index(kind, (64, 64), seed=3, index=5))
        assert not torch.equal(a, mask_for_index(kind, (64, 64), seed=3, index=6))
    with pytest.raises(ValueError, match="mask kind must be 'box' or 'free_form'"):
        make_mask("circle", (8, 8), np.random.default_rng(0))


def test_inpainting_images_crops_and_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        InpaintingImages(tmp_path / "none")
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        InpaintingImages(tmp_path)
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "a" / "b" / "x.jpg")
    (tmp_path / "a" / "broken.png").write_bytes(b"nope")
    ds = InpaintingImages(tmp_path, 32, "box")
    assert [p.name for p in ds.files] == ["x.jpg", "broken.png"]
    with pytest.raises(DatasetError, match=r"broken\.png: cannot decode image"):
        ds[1]
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert torch.equal(mask, mask_for_index("box", (32, 32), 0, 0))
    with pytest.raises(ValueError, match="mask_kind must be"):
        InpaintingImages(tmp_path, mask_kind="rect")


def test_named_inpainting_sets(tmp_path):
    ds = build_dataset("inpaint-synthetic-smoke", split="val", data_root=tmp_path, train=False)
    image, mask = ds[0]
    assert len(ds) == 50 and image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    with pytest.raises(DatasetError, match="val image folder of dataset 'places365' not found"):
        build_dataset("places365", split="val", data_root=tmp_path)


@pytest.mark.skipif(not IMAGENETTE.is_dir(), reason=f"imagenette-mini not found at {IMAGENETTE}")
def test_imagenette_photographs_for_cpu():
    ds = build_dataset("inpaint-imagenette", split="val", train=False)
    image, mask = ds[0]
    assert len(ds) == 200 and image.shape == (3, 128, 128) and 0 < mask.mean() < 1
