"""CocoDetection on the real COCO128 set, against pycocotools read independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from glimpse.data import CocoDetection, build_dataset, collate
from glimpse.data.build import COCO128_NUM_VAL

pytestmark = pytest.mark.data


_CACHE: dict = {}


@pytest.fixture
def c128(coco128):
    """(root, CocoDetection of all 128 images, pycocotools COCO), built once per module."""
    if coco128 not in _CACHE:
        ann = coco128 / "annotations" / "instances_train2017.json"
        _CACHE[coco128] = (coco128, CocoDetection(coco128 / "train2017", ann), COCO(str(ann)))
    return _CACHE[coco128]


def test_counts_match_pycocotools(c128):
    _, ds, gt = c128
    crowd = [a for a in gt.anns.values() if a["iscrowd"]]
    assert (len(gt.imgs), len(gt.anns), len(crowd)) == (128, 939, 10)  # the README's numbers
    assert len(ds) == 128 and ds.ids == sorted(gt.imgs)
    n_boxes = n_ignore = 0
    for i in range(len(ds)):
        target = ds.load_target(i)
        n_boxes += len(target["boxes"])
        n_ignore += len(target["boxes_ignore"])
        assert target["masks"].shape == (len(target["boxes"]), *ds.image_size(i))
        assert target["image_id"] == ds.ids[i]
    assert (n_boxes, n_ignore) == (939 - 10, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' annToMask on NumPy 2
def test_boxes_masks_and_labels_equal_the_annotations(c128):
    _, ds, gt = c128
    for index in (0, 5, 77):
        img_id = ds.ids[index]
        image, target = ds[index]
        info = gt.imgs[img_id]
        assert image.shape == (3, info["height"], info["width"])
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=img_id)) if not a["iscrowd"]]
        want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        torch.testing.assert_close(target["boxes"], want.float().view(-1, 4))
        cat_ids = [ds.label_to_cat_id[int(lab)] for lab in target["labels"]]
        assert cat_ids == [a["category_id"] for a in anns]
        for m, a in zip(target["masks"], anns):
            np.testing.assert_array_equal(m.numpy(), gt.annToMask(a))


def test_crowd_regions_become_boxes_ignore(c128):
    _, ds, gt = c128
    crowd = [a for a in gt.anns.values() if a["iscrowd"]]
    img_id = crowd[0]["image_id"]
    target = ds.load_target(ds.ids.index(img_id))
    x, y, w, h = crowd[0]["bbox"]
    assert any(torch.allclose(b, torch.tensor([x, y, x + w, y + h], dtype=torch.float32))
               for b in target["boxes_ignore"])
    n_plain = sum(1 for a in gt.imgToAnns[img_id] if not a["iscrowd"])
    assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) == n_plain


def test_category_mapping_round_trip(c128):
    _, ds, gt = c128
    assert ds.num_classes == 80
    assert sorted(ds.label_to_cat_id) == list(range(1, 81))
    for cat_id in gt.cats:
        assert ds.label_to_cat_id[ds.cat_id_to_label[cat_id]] == cat_id
    assert ds.class_names[0] == "person" and ds.class_names[-1] == "toothbrush"
    assert ds.label_to_cat_id[80] == 90  # COCO ids have gaps; labels do not


def test_grayscale_image_becomes_rgb(c128):
    _, ds, _ = c128
    image, _ = ds[ds.ids.index(86)]  # 000000000086.jpg is stored as mode "L"
    assert image.shape[0] == 3
    torch.testing.assert_close(image[0], image[1])
    torch.testing.assert_close(image[0], image[2])


def test_skip_empty_and_collate(c128):
    root, ds, _ = c128
    train = CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json",
                          skip_empty=True, with_masks=False)
    assert set(ds.ids) - set(train.ids) == {250, 508}  # the two images without annotations
    images, targets = collate([train[0], train[1]])
    assert isinstance(images, list) and len(images) == len(targets) == 2
    assert "masks" not in targets[0]


def test_coco128_split(coco128):
    val = build_dataset("coco128", split="val", data_root=coco128, train=False)
    tr = build_dataset("coco128", split="train", data_root=coco128, train=False)
    all_ids = sorted(json.loads((coco128 / "annotations" / "instances_train2017.json")
                                .read_text())["images"], key=lambda im: im["id"])
    assert val.ids == [im["id"] for im in all_ids[-COCO128_NUM_VAL:]]
    assert len(tr) == 128 - COCO128_NUM_VAL and not set(tr.ids) & set(val.ids)
    assert len(val.coco.imgs) == 128  # the GT stays whole for COCOeval
    assert val.default_image_scale == (640, 640) and val.name == "coco128"
    assert val.transforms is None
    train = build_dataset("coco128", split="train", data_root=coco128, train=True)
    assert len(train) == len(tr) - 2 and train.transforms is not None



def test_data_check_on_coco128_is_clean(coco128, capsys):
    from glimpse.cli import main

    code = main(["data", "check", "--image-dir", str(coco128 / "train2017"),
                 "--ann", str(coco128 / "annotations" / "instances_train2017.json")])
    assert code == 0
    assert "128 images, 939 annotations" in capsys.readouterr().out
