"""Broken data sets give one clear DatasetError, and ``data check`` reports each problem."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse.cli import main
from glimpse.data import CocoDetection, DatasetError, build_dataset
from glimpse.data.check import check_coco


def _load(tiny, **kwargs) -> CocoDetection:
    return CocoDetection(tiny.image_dir, tiny.ann_file, **kwargs)


def test_tiny_dataset_loads(tiny_coco):
    ds = _load(tiny_coco)
    assert ds.ids == [3, 7]
    assert ds.cat_id_to_label == {5: 1, 9: 2} and ds.class_names == ["five", "nine"]
    image, target = ds[1]
    assert image.shape == (3, 24, 32) and target["image_id"] == 7
    torch.testing.assert_close(target["boxes"], torch.tensor([[2., 3., 12., 9.],
                                                              [20., 10., 28., 22.]]))
    assert target["labels"].tolist() == [1, 2]
    torch.testing.assert_close(target["boxes_ignore"], torch.tensor([[0., 0., 4., 4.]]))
    want = np.zeros((24, 32), np.uint8)
    want[3:9, 2:12] = 1  # the rectangle polygon covers rows 3..8, columns 2..11
    np.testing.assert_array_equal(target["masks"][0].numpy(), want)
    gray, _ = ds[0]  # b.png is mode "L"
    assert gray.shape == (3, 16, 20) and torch.equal(gray[0], gray[2])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_image_modes_become_rgb(tiny_coco, mode):
    rgb = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit grayscale
    else:
        img = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img.save(tiny_coco.image_dir / "a.png", format=fmt)
    image, _ = _load(tiny_coco)[1]
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    if mode in ("L", "I;16"):  # gray levels survive (16-bit scaled to 8-bit)
        gray = np.asarray(img.convert("L")) if mode == "L" else rgb[..., 0]
        np.testing.assert_allclose(image[1].numpy() * 255, gray, atol=0.51)


def _write_bytes(name, data):
    def f(t):
        (t.image_dir / name).write_bytes(data if isinstance(data, bytes) else data(t))
    return f


def _set(section, index, key, value):
    def f(t):
        t.data[section][index][key] = value
        t.write()
    return f


def _delete(section, index, key):
    def f(t):
        del t.data[section][index][key]
        t.write()
    return f


def _truncated(t):
    return (t.image_dir / "a.png").read_bytes()[:200]


# (mutation, where the error surfaces, message regex, kind reported by data check)
CASES = {
    "missing image": (lambda t: (t.image_dir / "a.png").unlink(), "item",
                      r"a\.png \(image id 7\): image file not found", "missing_image"),
    "corrupt image": (_write_bytes("a.png", b"definitely not a png"), "item",
                      r"a\.png \(image id 7\): cannot decode image", "unreadable_image"),
    "truncated image": (_write_bytes("a.png", _truncated), "item",
                        r"a\.png \(image id 7\): cannot decode image", "unreadable_image"),
    "size mismatch": (_set("images", 0, "width", 33), "item",
                      r"image id 7\): image is 24x32 .* says 24x33", "size_mismatch"),
    "unknown category": (_set("annotations", 1, "category_id", 99), "init",
                         r"annotations\.json: unknown category id: .*\(image 7\): category id 99",
                         "unknown_category_id"),
    "unknown image": (_set("annotations", 3, "image_id", 42), "init",
                      r"image id 42 is not in 'images'", "unknown_image_id"),
    "duplicate image id": (_set("images", 1, "id", 7), "init",
                           r"duplicate image id: image id 7 appears more than once",
                           "duplicate_image_id"),
    "duplicate annotation id": (_set("annotations", 1, "id", 1), "init",
                                r"annotation id 1 appears more than once",
                                "duplicate_annotation_id"),
    "duplicate category id": (_set("categories", 1, "id", 9), "init",
                              r"category id 9 appears more than once", "duplicate_category_id"),
    "missing bbox": (_delete("annotations", 1, "bbox"), "init",
                     r"annotation 2 \(image 7\): missing bbox", "missing_keys"),
    "string image id": (_set("images", 1, "id", "three"), "init",
                        r"non integer id: image id 'three' is not an integer", "non_integer_id"),
    "list image id": (_set("images", 0, "id", [7]), "init",
                      r"non integer id: image id \[7\] is not an integer", "non_integer_id"),
    "bbox not numbers": (_set("annotations", 1, "bbox", [1, 2, "3", 4]), "init",
                         r"annotation 2 \(image 7\): bbox .* is not four numbers", "bad_bbox"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_dataset_raises_and_check_reports(tiny_coco, case):
    mutate, where, message, kind = CASES[case]
    mutate(tiny_coco)
    with pytest.raises(DatasetError, match=message):
        ds = _load(tiny_coco)
        if where == "item":
            ds[ds.ids.index(7)]
    report = check_coco(tiny_coco.image_dir, tiny_coco.ann_file)
    assert not report.ok and report.counts()[kind] == 1
    assert kind in report.format()


@pytest.mark.parametrize("content, message", [
    (None, "annotation file not found"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"annotations": []}', "missing list 'images'"),
])
def test_unreadable_annotation_file(tiny_coco, content, message, capsys):
    if content is None:
        tiny_coco.ann_file.unlink()
    else:
        tiny_coco.ann_file.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        _load(tiny_coco)
    assert str(tiny_coco.ann_file) in str(info.value)
    code = main(["data", "check", "--image-dir", str(tiny_coco.image_dir), "--ann",
                 str(tiny_coco.ann_file)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_degenerate_boxes_dropped_with_one_warning(tiny_coco):
    poly = [[1, 1, 5, 1, 5, 5]]
    extra = [([3, 3, 0, 4], 5), ([3, 3, 4, -2], 6), ([40, 30, 5, 5], 7), ([30, 20, 10, 10], 8)]
    for box, ann_id in extra:
        tiny_coco.data["annotations"].append({"id": ann_id, "image_id": 7, "category_id": 5,
                                              "bbox": box, "iscrowd": 0, "segmentation": poly})
    tiny_coco.write()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(tiny_coco)
    msgs = [str(w.message) for w in caught if "degenerate" in str(w.message)]
    assert len(msgs) == 1
    assert "dropped 3 degenerate" in msgs[0]
    assert "2 zero or negative size" in msgs[0] and "1 outside the image" in msgs[0]
    _, target = ds[ds.ids.index(7)]
    # The partly outside box is clipped to the 32x24 image and kept.
    torch.testing.assert_close(target["boxes"][-1], torch.tensor([30., 20., 32., 24.]))
    assert len(target["boxes"]) == len(target["masks"]) == 3
    counts = check_coco(tiny_coco.image_dir, tiny_coco.ann_file).counts()
    assert counts == {"zero_area_box": 2, "box_outside_image": 2}


def test_instance_without_segmentation_dropped_for_masks_only(tiny_coco):
    del tiny_coco.data["annotations"][0]["segmentation"]
    tiny_coco.write()
    with pytest.warns(UserWarning, match="1 no usable segmentation .*with_masks=False"):
        ds = _load(tiny_coco)
    assert len(ds.load_target(1)["boxes"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        boxes_only = _load(tiny_coco, with_masks=False)
    assert len(boxes_only.load_target(1)["boxes"]) == 2


def test_check_reports_every_problem_with_counts(tiny_coco, capsys):
    d = tiny_coco.data
    d["images"] += [{"id": 8, "file_name": "missing.png", "width": 4, "height": 4},
                    {"id": 9, "file_name": "bad.png", "width": 4, "height": 4},
                    {"id": 7, "file_name": "a.png", "width": 32, "height": 24}]
    d["images"][1]["width"] = 21
    (tiny_coco.image_dir / "bad.png").write_bytes(b"\x89PNG garbage")
    d["annotations"] += [
        {"id": 5, "image_id": 7, "category_id": 99, "bbox": [1, 1, 2, 2]},
        {"id": 6, "image_id": 7, "category_id": 5, "bbox": [0, 0, 0, 5]},
        {"id": 7, "image_id": 7, "category_id": 5, "bbox": [25, 0, 20, 5]},
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 1, 2, 2]},
    ]
    d["categories"].append({"id": 5, "name": "five again"})
    tiny_coco.write()
    report = check_coco(tiny_coco.image_dir, tiny_coco.ann_file)
    assert report.counts() == {
        "missing_image": 1, "unreadable_image": 1, "size_mismatch": 1,
        "duplicate_image_id": 1, "duplicate_annotation_id": 1, "duplicate_category_id": 1,
        "unknown_category_id": 1, "zero_area_box": 1, "box_outside_image": 1,
    }
    code = main(["data", "check", "--image-dir", str(tiny_coco.image_dir), "--ann",
                 str(tiny_coco.ann_file)])
    out = capsys.readouterr().out
    assert code == 1
    assert "9 problem(s) of 9 kind(s)" in out and "missing.png (image id 8)" in out


def test_check_clean_dataset_and_example_limit(tiny_coco, capsys):
    assert main(["data", "check", "--image-dir", str(tiny_coco.image_dir), "--ann",
                 str(tiny_coco.ann_file)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    for i in range(8):  # eight missing images: the report shows five and counts the rest
        tiny_coco.data["images"].append({"id": 100 + i, "file_name": f"gone{i}.png",
                                         "width": 4, "height": 4})
    tiny_coco.write()
    text = check_coco(tiny_coco.image_dir, tiny_coco.ann_file).format()
    assert "missing_image: 8" in text and "... and 3 more" in text
    assert text.count("gone") == 5


def test_semantic_maps_and_proposals(tiny_coco):
    sem_dir = tiny_coco.root / "sem"
    sem_dir.mkdir()
    sem = np.full((24, 32), 255, np.uint8)
    sem[:12] = 3
    Image.fromarray(sem).save(sem_dir / "a.png")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(sem_dir / "b.png")
    props_pt = tiny_coco.root / "props.pt"
    torch.save({7: torch.tensor([[0., 0., 5., 5., 0.2], [1., 1., 9., 9., 0.9]]),
                3: torch.zeros(0, 5)}, props_pt)
    props_json = tiny_coco.root / "props.json"
    rows = [{"image_id": 7, "bbox": [0, 0, 5, 5], "score": 0.2},
            {"image_id": 7, "bbox": [1, 1, 8, 8], "score": 0.9}]
    props_json.write_text(json.dumps(rows + [{"image_id": 3, "bbox": [0, 0, 2, 2], "score": 0}]))
    for props in (props_pt, props_json):
        ds = _load(tiny_coco, sem_seg_dir=sem_dir, proposals_file=props)
        _, target = ds[ds.ids.index(7)]
        assert target["sem_seg"].dtype == torch.int64
        assert target["sem_seg"][0, 0] == 3 and target["sem_seg"][-1, -1] == 255
        # Best-scoring proposal first, xyxy, score column dropped.
        torch.testing.assert_close(target["proposals"],
                                   torch.tensor([[1., 1., 9., 9.], [0., 0., 5., 5.]]))
        _, other = ds[ds.ids.index(3)]
        assert other["proposals"].shape == ((0, 4) if props == props_pt else (1, 4))
    # an image the file does not hold is an error naming it (a results JSON has no empty images)
    props_json.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="no proposals for image id 3"):
        _load(tiny_coco, proposals_file=props_json)
    Image.fromarray(np.zeros((16, 21), np.uint8)).save(sem_dir / "b.png")
    ds = _load(tiny_coco, sem_seg_dir=sem_dir)
    with pytest.raises(DatasetError, match=r"b\.png \(image id 3\): map is 16x21"):
        ds[0]
    (sem_dir / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"b\.png \(image id 3\): semantic map not found"):
        ds[0]
    with pytest.raises(DatasetError, match="proposals file not found"):
        _load(tiny_coco, proposals_file=tiny_coco.root / "nope.pt")


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="synthetic-smoke, synthetic-cpu, coco, coco128"):
        build_dataset("imagenet")
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        build_dataset("coco", data_root=tmp_path / "nowhere")
    (tmp_path / "coco").mkdir()
    with pytest.raises(DatasetError, match="instances_val2017.json"):
        build_dataset("coco", split="val", data_root=tmp_path / "coco")
