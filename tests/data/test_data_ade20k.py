"""ADE20K and segmentation folders: the real sample, the reduce-zero-label shift, every broken
case with a one-line error naming the file, ``data check --labels`` and the named sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse.cli import main
from glimpse.data import DatasetError, build_dataset
from glimpse.data.ade20k import SegmentationFolder, ade20k
from glimpse.data.check import check_segmentation

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "ade20k-sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(),
                                  reason=f"ADE20K sample not found at {SAMPLE}")


def _write_ade(root: Path, labels: dict[str, np.ndarray], split: str = "validation",
               image_sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """An ADEChallengeData2016-style tree with one image per label map (same size unless
    ``image_sizes`` says otherwise)."""
    images, anns = root / "images" / split, root / "annotations" / split
    images.mkdir(parents=True)
    anns.mkdir(parents=True)
    for stem, lab in labels.items():
        h, w = (image_sizes or {}).get(stem, lab.shape)
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(images / f"{stem}.jpg")
        Image.fromarray(lab.astype(np.uint8), mode="L").save(anns / f"{stem}.png")
    return root


def test_reduce_zero_label_shift(tmp_path):
    lab = np.array([[0, 1, 150], [2, 0, 75]])
    ds = ade20k(_write_ade(tmp_path, {"ADE_val_1": lab}), "val")
    image, target = ds[0]
    assert image.shape == (3, 2, 3)
    assert target["sem_seg"].tolist() == [[255, 0, 149], [1, 255, 74]]
    assert ds.num_classes == 150 and ds.split == "val"


@pytest.mark.parametrize("case, message", [
    ("missing_annotation", r"ADE_val_2\.png: annotation of image ADE_val_2\.jpg not found"),
    ("size_mismatch", r"ADE_val_1\.png: label map is 4x5 \(HxW\) but its image is 6x5"),
    ("out_of_range", r"ADE_val_1\.png: label values \[151, 200\] outside the 150 classes"),
    ("rgb_label", r"ADE_val_1\.png: label map must have one channel"),
    ("corrupt_label", r"ADE_val_1\.png: cannot decode label map"),
    ("missing_split", r"images/training: image folder of split 'train' not found"),
])
def test_broken_ade20k_inputs_name_the_file(tmp_path, case, message):
    lab = np.ones((4, 5))
    root = _write_ade(tmp_path, {"ADE_val_1": lab, "ADE_val_2": lab})
    ann = root / "annotations" / "validation"
    if case == "missing_annotation":
        (ann / "ADE_val_2.png").unlink()
    elif case == "size_mismatch":
        Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(
            root / "images" / "validation" / "ADE_val_1.jpg")
    elif case == "out_of_range":
        bad = lab.copy()
        bad[0, :2] = (151, 200)
        Image.fromarray(bad.astype(np.uint8), mode="L").save(ann / "ADE_val_1.png")
    elif case == "rgb_label":
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(ann / "ADE_val_1.png")
    elif case == "corrupt_label":
        (ann / "ADE_val_1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=message) as err:
        ds = ade20k(root, "train" if case == "missing_split" else "val")
        ds[0]
    assert "\n" not in str(err.value)


def test_missing_root_and_bad_split(tmp_path):
    with pytest.raises(DatasetError, match="ADE20K root folder not found"):
        ade20k(tmp_path / "ADEChallengeData2016")
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        ade20k(tmp_path, "test")
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        ade20k(tmp_path)


def test_check_segmentation_lists_every_problem(tmp_path):
    lab = np.ones((4, 5))
    root = _write_ade(tmp_path, {"a": lab, "b": lab, "c": lab, "d": lab},
                      image_sizes={"b": (6, 5)})
    ann = root / "annotations" / "validation"
    (ann / "a.png").unlink()
    Image.fromarray(np.full((4, 5), 201, np.uint8), mode="L").save(ann / "c.png")
    Image.fromarray(lab.astype(np.uint8), mode="L").save(ann / "orphan.png")
    report = check_segmentation(root / "images" / "validation", ann, num_classes=150,
                                reduce_zero_label=True)
    assert report.counts() == {"missing_annotation": 1, "size_mismatch": 1,
                               "label_out_of_range": 1, "orphan_annotation": 1}
    assert "c.png: values [201]" in report.problems["label_out_of_range"][0]


def test_data_check_cli_with_labels(tmp_path, capsys):
    root = _write_ade(tmp_path, {"a": np.ones((4, 5))})
    args = ["data", "check", "--image-dir", str(root / "images" / "validation"),
            "--labels", str(root / "annotations" / "validation"), "--reduce-zero-label"]
    assert main(args) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    Image.fromarray(np.full((4, 5), 151, np.uint8), mode="L").save(
        root / "annotations" / "validation" / "a.png")
    assert main(args) == 1
    assert "label_out_of_range: 1" in capsys.readouterr().out


@needs_sample
def test_ade20k_sample_reads_and_checks():
    ds = build_dataset("ade20k-sample", split="val", train=False)
    assert len(ds) == 3 and ds.classes[:3] == ["wall", "building", "sky"]
    image, target = ds[2]
    assert image.shape == (3, 300, 400) and target["sem_seg"].shape == (300, 400)
    seg = target["sem_seg"]
    assert seg.min() >= 0 and ((seg < 150) | (seg == 255)).all()
    report = check_segmentation(SAMPLE / "images", SAMPLE / "annotations", num_classes=150,
                                reduce_zero_label=True)
    assert report.ok, report.format()


def test_synthetic_segmentation_set(tmp_path):
    ds = build_dataset("synthetic-smoke-seg", split="val", data_root=tmp_path, train=False)
    assert isinstance(ds, SegmentationFolder) and len(ds) == 50 and ds.num_classes == 10
    assert ds.classes[0] == "background" and ds.classes[-1] == "sand"
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and target["sem_seg"].max() < 10
    with pytest.raises(ValueError, match="unknown dataset 'ade21k'.*ade20k-sample"):
        build_dataset("ade21k")


def test_random_short_side_resize_is_the_csail_recipe():
    import random

    import torch

    from glimpse.data.transforms import RandomShortSideResize

    random.seed(0)
    t = RandomShortSideResize()
    seg = torch.zeros(200, 800, dtype=torch.long)
    seg[:, 400:] = 7
    for _ in range(10):
        image, target = t(torch.rand(3, 200, 800), {"sem_seg": seg})
        h, w = image.shape[-2:]
        assert w <= 1000 and (min(h, w) in (300, 375, 450, 525, 600) or w == 1000)
        assert target["sem_seg"].shape == (h, w)
        assert set(target["sem_seg"].unique().tolist()) == {0, 7}  # nearest: no new labels
    with pytest.raises(ValueError, match="must be positive"):
        RandomShortSideResize(short_sides=())
