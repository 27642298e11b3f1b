"""Datasets (COCO format through pycocotools, synthetic shapes, ADE20K and other semantic
segmentation folders, inpainting images with seeded masks), collation and transforms."""

from glimpse.data.ade20k import SegmentationFolder, ade20k
from glimpse.data.build import (
    DATASET_NAMES,
    INPAINTING_DATASET_NAMES,
    SEGMENTATION_DATASET_NAMES,
    build_dataset,
)
from glimpse.data.coco import CocoDetection, DatasetError, collate
from glimpse.data.places import InpaintingImages
from glimpse.data.proposals import ProposalFile, read_proposals, with_proposals, write_proposals
from glimpse.data.synthetic import SEMANTIC_CLASSES, THING_CLASSES, ensure_synthetic, generate

__all__ = [
    "CocoDetection",
    "DatasetError",
    "collate",
    "build_dataset",
    "DATASET_NAMES",
    "INPAINTING_DATASET_NAMES",
    "InpaintingImages",
    "ProposalFile",
    "read_proposals",
    "with_proposals",
    "write_proposals",
    "SEGMENTATION_DATASET_NAMES",
    "SegmentationFolder",
    "ade20k",
    "generate",
    "ensure_synthetic",
    "THING_CLASSES",
    "SEMANTIC_CLASSES",
]
