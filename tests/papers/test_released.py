"""Released mmdetection checkpoints evaluated in bulk (``glimpse.papers.released``): the same
results and metrics as ``python -m glimpse test`` on each file, files matched by their v2
config-name prefix, and clear errors for a missing folder, an ambiguous match and classes the
annotation file does not have."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from glimpse import zoo
from glimpse.checkpoints import glimpse_to_mmdet
from glimpse.cli import main
from glimpse.data import CocoDetection, DatasetError
from glimpse.papers import released

ROWS = [  # slim stand-ins for the zoo's R-50 rows: same columns, made-up zoo values
    {"model": "mask_rcnn_slim_fpn", "checkpoint_prefix": "mask_rcnn_slim_fpn_1x_coco",
     "box_AP": 30.0, "mask_AP": 25.0, "AR1000": None, "source": "test"},
    {"model": "rpn_slim_fpn", "checkpoint_prefix": "rpn_slim_fpn_1x_coco",
     "box_AP": None, "mask_AP": None, "AR1000": 50.0, "source": "test"},
    {"model": "retinanet_slim_fpn", "checkpoint_prefix": "retinanet_slim_fpn_1x_coco",
     "box_AP": 20.0, "mask_AP": None, "AR1000": None, "source": "test"},
]


@pytest.fixture
def three_images(coco128: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = json.loads((coco128 / "annotations" / "instances_train2017.json").read_text())
    ids = sorted(im["id"] for im in data["images"])[:3]
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    return coco128 / "train2017", ann, names


def _save_released(name: str, folder: Path, classes: list[str]) -> Path:
    """A seeded model saved as mmdetection would, under a model-zoo style file name."""
    torch.manual_seed(3)
    model = zoo.build(name, len(classes))
    path = folder / f"{name}_1x_coco_20200101-0123abcd.pth"
    torch.save({"state_dict": glimpse_to_mmdet(model.state_dict(), model),
                "meta": {"dataset_meta": {"classes": classes}}}, path)
    return path


def test_zoo_table_lists_existing_models_with_sources():
    table = released.zoo_table()
    assert set(table["model"]) <= set(zoo.MODELS)
    assert table["checkpoint_prefix"].is_unique
    assert table[["box_AP", "AR1000"]].notna().any(axis=1).all()  # every row has a value
    assert table.loc[table["model"] == "faster_rcnn_r50_fpn", "box_AP"].item() == 37.4


def test_released_checkpoints_evaluate_as_the_test_command(three_images, tmp_path, capsys):
    images, ann, classes = three_images
    folder = tmp_path / "zoo"
    folder.mkdir()
    files = {r["model"]: _save_released(r["model"], folder, classes) for r in ROWS[:2]}
    (folder / "unrelated_model_1x_coco_20200101-0123abcd.pth").write_bytes(b"")

    table = released.evaluate_released(folder, CocoDetection(images, ann), tmp_path / "out",
                                       table=pd.DataFrame(ROWS), progress=False)
    # retinanet has no file: left out; mask rcnn gives box and mask rows, the RPN AR1000
    assert list(zip(table["model"], table["metric"], strict=True)) == [
        ("mask_rcnn_slim_fpn", "box_AP"), ("mask_rcnn_slim_fpn", "mask_AP"),
        ("rpn_slim_fpn", "AR1000")]
    for model, path in files.items():
        out = tmp_path / f"cli_{model}.json"
        assert main(["test", model, "--checkpoint", str(path), "--image-dir", str(images),
                     "--ann", str(ann), "--out", str(out), "--device", "cpu",
                     "--no-progress"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert json.loads(out.read_text()) == json.loads(
            (tmp_path / "out" / f"{model}.json").read_text())
        rows = table[table["model"] == model].set_index("metric")
        expected = ({"AR1000": metrics["proposal"]["AR@1000"]} if model == "rpn_slim_fpn"
                    else {"box_AP": metrics["bbox"]["AP"], "mask_AP": metrics["segm"]["AP"]})
        for metric, value in expected.items():
            assert rows.loc[metric, "measured"] == round(100 * value, 1)
            assert rows.loc[metric, "delta"] == round(100 * value - rows.loc[metric, "zoo"], 1)
            assert rows.loc[metric, "checkpoint"] == path.name


def test_no_matching_file_gives_an_empty_table(three_images, tmp_path):
    images, ann, _ = three_images
    table = released.evaluate_released(tmp_path, CocoDetection(images, ann), tmp_path / "out",
                                       table=pd.DataFrame(ROWS), progress=False)
    assert table.empty and "measured" in table.columns


def test_missing_folder_and_ambiguous_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found: .*nowhere"):
        released.find_checkpoints(tmp_path / "nowhere", pd.DataFrame(ROWS))
    for stamp in ("20200101-aaaaaaaa", "20210101-bbbbbbbb"):
        (tmp_path / f"rpn_slim_fpn_1x_coco_{stamp}.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="2 files match rpn_slim_fpn_1x_coco_.*keep one"):
        released.find_checkpoints(tmp_path, pd.DataFrame(ROWS))


def test_classes_missing_from_the_annotations_are_named(three_images, tmp_path):
    images, ann, classes = three_images
    folder = tmp_path / "zoo"
    folder.mkdir()
    _save_released("rpn_slim_fpn", folder, [*classes[:-1], "unicorn"])
    with pytest.raises(DatasetError, match="class 'unicorn' is not a category of .*ann.json"):
        released.evaluate_released(folder, CocoDetection(images, ann), tmp_path / "out",
                                   table=pd.DataFrame(ROWS[1:2]), progress=False)
