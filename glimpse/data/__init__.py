"""Datasets (COCO format through pycocotools, synthetic shapes), collation and transforms."""

from glimpse.data.build import DATASET_NAMES, build_dataset
from glimpse.data.coco import CocoDetection, DatasetError, collate
from glimpse.data.synthetic import SEMANTIC_CLASSES, THING_CLASSES, ensure_synthetic, generate

__all__ = [
    "CocoDetection",
    "DatasetError",
    "collate",
    "build_dataset",
    "DATASET_NAMES",
    "generate",
    "ensure_synthetic",
    "THING_CLASSES",
    "SEMANTIC_CLASSES",
]
