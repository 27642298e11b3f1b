"""Fixtures of the data tests: a tiny hand-written COCO set to break, and a cached synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse.data.synthetic import PROFILES, SyntheticPaths, ensure_synthetic


class TinyCoco:
    """Two images (32x24 RGB, 20x16 grayscale) with three instances and one crowd region.

    ``data`` is the JSON dict; edit it and call ``write()`` to make a broken variant.
    """

    def __init__(self, root: Path):
        self.root = root
        self.image_dir = root / "images"
        self.ann_file = root / "annotations.json"
        self.image_dir.mkdir(parents=True)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            self.image_dir / "a.png")
        Image.fromarray(rng.integers(0, 255, (16, 20), dtype=np.uint8), mode="L").save(
            self.image_dir / "b.png")
        self.data = {
            "images": [
                {"id": 7, "file_name": "a.png", "width": 32, "height": 24},
                {"id": 3, "file_name": "b.png", "width": 20, "height": 16},
            ],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 5, "bbox": [2, 3, 10, 6], "area": 60,
                 "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},
                {"id": 2, "image_id": 7, "category_id": 9, "bbox": [20, 10, 8, 12], "area": 48,
                 "iscrowd": 0, "segmentation": [[20, 10, 28, 10, 24, 22]]},
                {"id": 3, "image_id": 7, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16,
                 "iscrowd": 1, "segmentation": {"size": [24, 32], "counts": [0, 4, 20, 4, 20, 4,
                                                                             20, 4, 692]}},
                {"id": 4, "image_id": 3, "category_id": 9, "bbox": [5, 5, 10, 5], "area": 50,
                 "iscrowd": 0, "segmentation": [[5, 5, 15, 5, 15, 10, 5, 10]]},
            ],
            "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
        }
        self.write()

    def write(self) -> None:
        self.ann_file.write_text(json.dumps(self.data))


@pytest.fixture
def tiny_coco(tmp_path: Path) -> TinyCoco:
    return TinyCoco(tmp_path / "tiny")


@pytest.fixture(scope="session")
def smoke_train(tmp_path_factory) -> SyntheticPaths:
    """The synthetic-smoke train split, generated once per session into a temp folder."""
    return ensure_synthetic(PROFILES["synthetic-smoke"], "train",
                            root=tmp_path_factory.mktemp("generated"))
