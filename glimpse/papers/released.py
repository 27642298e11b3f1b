"""Released mmdetection model-zoo checkpoints evaluated by glimpse: the ``full`` profile's way
to the papers' COCO numbers in minutes on a GPU instead of GPU-weeks of training (issue 9).

A researcher downloads the files of mmdetection's v2 model zoo (the links in mmdetection's
``configs/<method>/README.md``; nothing downloads here) into one folder, keeping their names:
each starts with its v2 config name, e.g. ``faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth``.
:func:`find_checkpoints` matches the files to glimpse models by that prefix
(``results/codebase/paper/mmdet_zoo_v2.csv`` lists the prefixes and the zoo's own values) and
:func:`evaluate_released` runs each through the same path as ``python -m glimpse test``
(mmdetection's test resize 1333x800, the checkpoint's class names mapped to the annotation
file's categories) and puts the measured AP beside the zoo's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from glimpse import checkpoints, zoo
from glimpse.data import CocoDetection
from glimpse.engine.coco_eval import evaluate_to_file
from glimpse.report import load_paper

__all__ = ["ZOO_TABLE", "zoo_table", "find_checkpoints", "evaluate_released"]

ZOO_TABLE = "mmdet_zoo_v2"  # results/codebase/paper/mmdet_zoo_v2.csv


def zoo_table(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """mmdetection v2 model-zoo rows: ``model`` (glimpse zoo name), ``checkpoint_prefix`` (the
    released file's v2 config name), ``box_AP`` / ``mask_AP`` / ``AR1000`` (x100), ``source``."""
    return load_paper("codebase", ZOO_TABLE, root=root)


def find_checkpoints(folder: str | os.PathLike, table: pd.DataFrame) -> dict[str, Path]:
    """glimpse model -> the file in ``folder`` whose name is ``<checkpoint_prefix>_*.pth``;
    models without a file are left out.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: two files match one model (both are named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    found = {}
    for model, prefix in zip(table["model"], table["checkpoint_prefix"], strict=True):
        files = sorted(folder.glob(f"{prefix}_*.pth"))
        if len(files) > 1:
            raise ValueError(f"{folder}: {len(files)} files match {prefix}_*.pth "
                             f"({', '.join(f.name for f in files)}); keep one")
        if files:
            found[model] = files[0]
    return found


def _metrics_row(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The table's measured columns (x100) from ``evaluate_to_file``'s metrics."""
    if "proposal" in metrics:
        return {"AR1000": 100 * metrics["proposal"]["AR@1000"]}
    row = {"box_AP": 100 * metrics["bbox"]["AP"]}
    if "segm" in metrics:
        row["mask_AP"] = 100 * metrics["segm"]["AP"]
    return row


def evaluate_released(folder: str | os.PathLike, dataset: CocoDetection,
                      out_dir: str | os.PathLike, *,
                      table: pd.DataFrame | None = None, device: str = "cpu",
                      batch_size: int = 1, trust_checkpoints: bool = False,
                      progress: bool = True) -> pd.DataFrame:
    """Evaluate every released checkpoint found in ``folder`` on a COCO-format set.

    Args:
        folder: the downloaded model-zoo files (see :func:`find_checkpoints`).
        dataset: the evaluation set, e.g. COCO val2017 (``build_dataset("coco", split="val")``).
        out_dir: where each model's COCO results JSON is written (``<model>.json``).
        table: the zoo rows to look for; default :func:`zoo_table`.
        trust_checkpoints: allow arbitrary pickled objects in the files (mmengine v3 ``meta``).

    Returns:
        One row per evaluated model: ``model``, ``checkpoint`` (file name), ``metric``
        (box_AP / mask_AP / AR1000), ``zoo`` (mmdetection's value), ``measured``, ``delta``
        (measured - zoo), ``source``. Empty (with those columns) when no file matched.
    """
    table = zoo_table() if table is None else table
    found = find_checkpoints(folder, table)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for zoo_row in table.itertuples(index=False):
        if zoo_row.model not in found:
            continue
        path = found[zoo_row.model]
        ckpt = checkpoints.read_checkpoint(path, trusted=trust_checkpoints)
        label_to_cat_id = dataset.label_map_for(checkpoints.class_names_of(ckpt))
        model = zoo.build(zoo_row.model, len(label_to_cat_id), checkpoint=ckpt)
        is_rpn = zoo.MODELS[zoo_row.model].detector in ("rpn", "ga_rpn")
        with_masks = pd.notna(zoo_row.mask_AP)
        iou_types = ("proposal",) if is_rpn else ("bbox", "segm") if with_masks else ("bbox",)
        metrics = evaluate_to_file(model, dataset, out_dir / f"{zoo_row.model}.json",
                                   label_to_cat_id=None if is_rpn else label_to_cat_id,
                                   iou_types=iou_types, device=device, batch_size=batch_size,
                                   progress=progress)
        for metric, measured in _metrics_row(metrics).items():
            zoo_value = getattr(zoo_row, metric)
            rows.append({"model": zoo_row.model, "checkpoint": path.name, "metric": metric,
                         "zoo": zoo_value, "measured": round(measured, 1),
                         "delta": round(measured - zoo_value, 1), "source": zoo_row.source})
    columns = ["model", "checkpoint", "metric", "zoo", "measured", "delta", "source"]
    return pd.DataFrame(rows, columns=columns)
