"""``data check`` on instance segmentations and semantic maps (issue 13): an undecodable RLE, a
polygon with an odd number of coordinates, and missing, mis-sized, colour or out-of-range
COCO-stuff style label maps are reported; the loader refuses a broken RLE with one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from glimpse.cli import main
from glimpse.data import CocoDetection, DatasetError
from glimpse.data.check import check_coco
from glimpse.data.coco import segmentation_problem


def _load(tiny, **kwargs) -> CocoDetection:
    return CocoDetection(tiny.image_dir, tiny.ann_file, **kwargs)


# annotation 2 (image 7, 24x32) gets each broken segmentation
BROKEN = {
    "odd polygon": ([[20, 10, 28, 10, 24, 22, 20]], "polygon 0 has an odd number of "
                                                     r"coordinates \(7\)"),
    "two-point polygon": ([[20, 10, 28, 10]], "polygon 0 has fewer than 3 points"),
    "garbage RLE string": ({"size": [24, 32], "counts": "not an rle!"},
                           "compressed RLE counts are not a valid pycocotools string"),
    "short RLE runs": ({"size": [24, 32], "counts": [0, 4, 20]},
                       r"RLE run lengths add up to 24, not 24 x 32 = 768"),
    "RLE of another size": ({"size": [10, 10], "counts": [100]},
                            r"RLE size \[10, 10\] is not the image's \[24, 32\]"),
    "negative RLE run": ({"size": [24, 32], "counts": [0, 800, -32]},
                         "RLE has negative run lengths"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_reports_broken_segmentations(tiny_coco, case, capsys):
    segm, message = BROKEN[case]
    tiny_coco.data["annotations"][1]["segmentation"] = segm
    tiny_coco.write()
    report = check_coco(tiny_coco.image_dir, tiny_coco.ann_file)
    assert report.counts() == {"bad_segmentation": 1}
    assert report.problems["bad_segmentation"][0].startswith("annotation 2 (image 7): ")
    code = main(["data", "check", "--image-dir", str(tiny_coco.image_dir), "--ann",
                 str(tiny_coco.ann_file)])
    assert code == 1 and "bad_segmentation: 1" in capsys.readouterr().out
    if isinstance(segm, dict):  # pycocotools would decode most of these into garbage
        ds = _load(tiny_coco)
        with pytest.raises(DatasetError, match=r"annotation 2 \(image 7\): " + message):
            ds[ds.ids.index(7)]


def test_valid_rles_pass_both_encodings():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = np.asfortranarray((rng.random((h, w)) < rng.random()).astype(np.uint8))
        rle = mask_utils.encode(mask)
        assert segmentation_problem(rle, h, w) is None
        assert segmentation_problem({**rle, "counts": rle["counts"].decode()}, h, w) is None
        # the same RLE claims one pixel more: caught
        assert segmentation_problem(rle, h, w + 1) is not None


def _maps(tiny):
    """Correct label maps of both tiny images (values 0..4 and 255)."""
    sem_dir = tiny.root / "stuffthingmaps"
    sem_dir.mkdir()
    a = np.full((24, 32), 255, np.uint8)
    a[:12] = 4
    Image.fromarray(a).save(sem_dir / "a.png")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(sem_dir / "b.png")
    return sem_dir


def test_check_semantic_maps(tiny_coco, capsys):
    sem_dir = _maps(tiny_coco)
    assert check_coco(tiny_coco.image_dir, tiny_coco.ann_file, sem_seg_dir=sem_dir,
                      sem_seg_classes=5).ok
    Image.fromarray(np.full((24, 32, 3), 4, np.uint8)).save(sem_dir / "a.png")  # colour PNG
    Image.fromarray(np.zeros((16, 21), np.uint8)).save(sem_dir / "b.png")
    report = check_coco(tiny_coco.image_dir, tiny_coco.ann_file, sem_seg_dir=sem_dir)
    assert report.counts() == {"semantic_map_not_single_channel": 1,
                               "semantic_map_size_mismatch": 1}
    assert "b.png (image id 3): map is 16x21 (HxW), image is 16x20" in report.format()
    (sem_dir / "a.png").unlink()
    Image.fromarray(np.full((16, 20), 9, np.uint8)).save(sem_dir / "b.png")
    report = check_coco(tiny_coco.image_dir, tiny_coco.ann_file, sem_seg_dir=sem_dir,
                        sem_seg_classes=5)
    assert report.counts() == {"missing_semantic_map": 1, "semantic_label_out_of_range": 1}
    assert "labels [9] are outside 0..4" in report.format()
    code = main(["data", "check", "--image-dir", str(tiny_coco.image_dir), "--ann",
                 str(tiny_coco.ann_file), "--sem-seg-dir", str(sem_dir),
                 "--sem-seg-classes", "5"])
    out = capsys.readouterr().out
    assert code == 1 and "a.png (image id 7): file not found" in out
    missing = check_coco(tiny_coco.image_dir, tiny_coco.ann_file,
                         sem_seg_dir=tiny_coco.root / "nowhere")
    assert missing.counts() == {"missing_semantic_map": 1}


def test_loader_names_the_image_of_a_bad_semantic_map(tiny_coco):
    sem_dir = _maps(tiny_coco)
    Image.fromarray(np.full((24, 32, 3), 4, np.uint8)).save(sem_dir / "a.png")
    ds = _load(tiny_coco, sem_seg_dir=sem_dir)
    with pytest.raises(DatasetError, match=r"a\.png \(image id 7\): a semantic map must be "
                                           "single-channel"):
        ds[ds.ids.index(7)]


def test_synthetic_maps_pass_the_check(smoke_train):
    from glimpse.data.synthetic import SEMANTIC_CLASSES

    report = check_coco(smoke_train.image_dir, smoke_train.ann_file, decode=False,
                        sem_seg_dir=smoke_train.sem_seg_dir,
                        sem_seg_classes=len(SEMANTIC_CLASSES))
    assert report.ok, report.format()
