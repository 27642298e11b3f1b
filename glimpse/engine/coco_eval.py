"""COCO evaluation: detector inference, COCO results, COCOeval (bbox, segm, proposal recall).

Detection metrics come from pycocotools' ``COCOeval``, the implementation behind every number
in the four papers; glimpse only converts its detections to COCO results (``xywh`` boxes,
original category ids, RLE masks) and reads ``COCOeval.stats``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from glimpse.engine.distributed import init_distributed, resolve_device
from glimpse.io import atomic_write, read_json
from glimpse.structures import Detection, box_xyxy_to_xywh

__all__ = [
    "COCO_METRICS",
    "inference",
    "iter_inference",
    "coco_results",
    "coco_from_dict",
    "load_results",
    "coco_evaluate",
    "proposal_recall",
    "evaluate_detector",
    "evaluate_to_file",
]

# Names of COCOeval.stats[0:6] for bbox / segm.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ---------------------------------------------------------------------------------- inference


def iter_inference(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Iterator[tuple[int, Detection]]:
    """Run ``model`` in eval mode over ``dataset`` in order, yielding one image at a time.

    A generator, so that callers can turn full-resolution masks into RLEs image by image
    (COCO val holds 5000 images: keeping every mask would take hundreds of GB).

    Args:
        model: eval mode ``model(images) -> list[Detection]``; when every target carries
            ``proposals`` (Fast R-CNN data) they are passed as ``model(images, proposals=...)``.
        dataset: items ``(image float[3,H,W], Target)`` at original resolution.
        device: where the model runs (``"auto"``: a GPU when there is one).
        batch_size: images per forward.
        collate_fn: default :func:`glimpse.data.collate`.
        num_workers: DataLoader workers.
        progress: show a tqdm bar (only on a terminal).

    Yields:
        ``(image_id, detection)``: detection tensors on CPU, boxes xyxy in original pixels. The
        image id is ``target["image_id"]``, else ``dataset.ids[i]``, else the index ``i``.
    """
    if collate_fn is None:
        from glimpse.data import collate as collate_fn
    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
        num_workers=num_workers,
    )  # fmt: skip
    ids = getattr(dataset, "ids", None)
    index = 0
    try:
        for images, targets in tqdm(loader, desc="inference", disable=None if progress else True):
            images = [im.to(device) for im in images]
            kwargs = {}
            if targets and all(isinstance(t, dict) and "proposals" in t for t in targets):
                kwargs["proposals"] = [t["proposals"].to(device) for t in targets]
            with torch.no_grad():
                detections = model(images, **kwargs)
            for target, det in zip(targets, detections):
                image_id = target.get("image_id") if isinstance(target, dict) else None
                if image_id is None:
                    image_id = ids[index] if ids is not None else index
                index += 1
                yield int(image_id), {k: v.detach().cpu() for k, v in det.items()}
    finally:
        model.train(was_training)


def inference(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> list[tuple[int, Detection]]:
    """:func:`iter_inference` collected in a list: ``[(image_id, detection), ...]``."""
    return list(
        iter_inference(
            model, dataset, device=device, batch_size=batch_size, collate_fn=collate_fn,
            num_workers=num_workers, progress=progress,
        )
    )  # fmt: skip


def coco_results(
    detections: Sequence[Detection],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int] | None = None,
    with_masks: bool = False,
) -> list[dict[str, Any]]:
    """Detections -> COCO results (the JSON format of COCO's evaluation server).

    Args:
        detections: per image ``boxes`` float[D,4] xyxy, ``scores`` float[D], ``labels``
            int64[D] in 1..K and, for ``with_masks``, ``masks`` [D,H,W] (uint8 binary, or
            float probabilities thresholded at 0.5).
        image_ids: the COCO image id of each detection dict.
        label_to_cat_id: contiguous label -> COCO category id (``dataset.label_to_cat_id``);
            ``None`` keeps the label as the category id (proposals).
        with_masks: add ``segmentation`` (RLE with ``counts`` as str).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "segmentation"]}]``.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detections but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for det, image_id in zip(detections, image_ids):
        boxes = box_xyxy_to_xywh(det["boxes"].detach().cpu().float()).tolist()
        scores = det["scores"].detach().cpu().float().tolist()
        labels = det["labels"].detach().cpu().tolist() if "labels" in det else [1] * len(boxes)
        rles: list[dict[str, Any]] | None = None
        if with_masks:
            if "masks" in det:
                rles = _encode_masks(det["masks"])
            elif boxes:
                raise ValueError(f"image {image_id}: with_masks=True but a detection has no masks")
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
            label = int(label)
            if label_to_cat_id is not None:
                if label not in label_to_cat_id:
                    raise ValueError(f"image {image_id}: label {label} has no category id")
                label = label_to_cat_id[label]
            row = {"image_id": int(image_id), "category_id": label, "bbox": box, "score": score}
            if rles is not None:
                row["segmentation"] = rles[i]
            results.append(row)
    return results


def _encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """uint8/bool/float [D,H,W] -> D compressed RLEs with str counts (JSON-serialisable)."""
    masks = masks.detach().cpu()
    binary = masks >= 0.5 if masks.is_floating_point() else masks > 0
    if binary.numel() == 0:
        return []
    # pycocotools wants Fortran-ordered uint8 [H, W, D]
    array = np.asfortranarray(binary.permute(1, 2, 0).numpy().astype(np.uint8))
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


# ---------------------------------------------------------------------------------- COCOeval


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` from an already loaded annotation dict, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(path: str | os.PathLike, iou_type: str = "bbox") -> list[dict[str, Any]]:
    """Read and check a COCO results JSON file.

    Args:
        path: the file (a JSON list of ``{"image_id", "category_id", "bbox", "score"}``, plus
            ``"segmentation"`` for segm).
        iou_type: ``"bbox"``, ``"segm"`` or ``"proposal"`` (``category_id`` optional).

    Raises:
        ValueError: naming the file and the first problem (missing, not JSON, wrong fields).
    """
    path = os.fspath(path)
    rows = read_json(path, "results file")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: COCO results must be a JSON list, found {type(rows).__name__}")
    required = ["image_id", "bbox", "score"]
    if iou_type != "proposal":
        required.append("category_id")
    if iou_type == "segm":
        required.append("segmentation")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: result #{i} is not an object")
        missing = [k for k in required if k not in r]
        if missing:
            raise ValueError(f"{path}: result #{i} lacks {', '.join(missing)}")
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_finite(v) for v in box)):
            raise ValueError(f"{path}: result #{i} has bbox {box!r}, expected [x, y, w, h]")
        if not _finite(r["score"]):
            raise ValueError(f"{path}: result #{i} has score {r['score']!r}, expected a number")
        segm = r.get("segmentation")
        if iou_type == "segm" and not (
            isinstance(segm, dict) and isinstance(segm.get("counts"), (str, list))
            and isinstance(segm.get("size"), list) and len(segm["size"]) == 2
        ):
            raise ValueError(f"{path}: result #{i} has no RLE segmentation "
                             "({'size': [h, w], 'counts': ...})")
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_results(coco_gt: COCO, results: Sequence[dict[str, Any]], need: str) -> COCO:
    """``coco_gt.loadRes`` on copies of ``results`` (loadRes edits its input), checked first."""
    known = set(coco_gt.getImgIds())
    unknown = sorted({r.get("image_id") for r in results} - known, key=str)
    if unknown:
        raise ValueError(f"results refer to image ids not in the annotations: {unknown[:5]}")
    for i, r in enumerate(results):
        if need not in r:
            raise ValueError(f"result #{i} (image {r.get('image_id')}) has no {need!r}")
    copies = [dict(r) for r in results]
    if need == "segmentation":
        # Without a box, loadRes takes the instance area from the mask (as mmdetection does);
        # with one it would use the box area and shift APs/APm/APl.
        for r in copies:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(copies)


def _run_cocoeval(
    coco_gt: COCO, coco_dt: COCO, iou_type: str, img_ids: Iterable[int] | None,
    use_cats: bool = True, max_dets: Sequence[int] | None = None,
) -> np.ndarray:
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    if img_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in img_ids)
    evaluator.params.useCats = int(use_cats)
    if max_dets is not None:
        evaluator.params.maxDets = list(max_dets)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def coco_evaluate(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_type: str,
    img_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """COCO AP of ``results`` (see :func:`coco_results`) against ``coco_gt``.

    Args:
        coco_gt: ground truth (``dataset.coco``).
        results: COCO results; ``segmentation`` is needed for ``"segm"``.
        iou_type: ``"bbox"`` or ``"segm"``.
        img_ids: evaluate only these images (e.g. ``dataset.ids`` of a split of the file).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in [0, 1] (COCOeval gives -1 for an
        area range without ground truth). Empty results give 0 everywhere.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if img_ids is not None:
        wanted = {int(i) for i in img_ids}
        results = [r for r in results if r.get("image_id") in wanted]
    if not results:
        return dict.fromkeys(COCO_METRICS, 0.0)
    coco_dt = _load_results(coco_gt, results, "bbox" if iou_type == "bbox" else "segmentation")
    stats = _run_cocoeval(coco_gt, coco_dt, iou_type, img_ids)
    return {name: float(v) for name, v in zip(COCO_METRICS, stats[:6])}


def proposal_recall(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    img_ids: Iterable[int] | None = None,
    max_dets: Sequence[int] = (100, 300, 1000),
) -> dict[str, float]:
    """Class-agnostic average recall of proposals, as mmdetection reports for RPNs.

    COCOeval on boxes with ``useCats=0`` and ``maxDets=max_dets``; AR is recall averaged over
    IoU 0.50:0.95 (the Guided Anchoring paper's AR100/300/1000 and AR_S/M/L).

    Returns:
        ``{"AR@100", "AR@300", "AR@1000", "AR_S", "AR_M", "AR_L"}`` (size ranges at the largest
        ``max_dets``); 0 everywhere for empty results.
    """
    if len(max_dets) != 3:
        raise ValueError(f"max_dets needs three values, got {tuple(max_dets)}")
    keys = [f"AR@{m}" for m in max_dets] + ["AR_S", "AR_M", "AR_L"]
    if img_ids is not None:
        wanted = {int(i) for i in img_ids}
        results = [r for r in results if r.get("image_id") in wanted]
    if not results:
        return dict.fromkeys(keys, 0.0)
    # With useCats=0 COCOeval still looks detections up under the ground truth's category ids,
    # so every proposal gets one of them.
    cat_id = min(coco_gt.getCatIds()) if coco_gt.getCatIds() else 1
    results = [{**r, "category_id": cat_id} for r in results]
    coco_dt = _load_results(coco_gt, results, "bbox")
    stats = _run_cocoeval(coco_gt, coco_dt, "bbox", img_ids, use_cats=False, max_dets=max_dets)
    # COCOeval.stats[6:9]: AR at maxDets[0..2]; [9:12]: AR small/medium/large at maxDets[2]
    return {k: float(v) for k, v in zip(keys, stats[6:12])}


def evaluate_detector(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    iou_types: Sequence[str] | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """:func:`iter_inference` then COCO metrics on ``dataset.coco`` restricted to ``dataset.ids``.

    Detections become COCO results (masks as RLE) image by image, so memory stays small.

    Args:
        iou_types: any of ``"bbox"``, ``"segm"``, ``"proposal"``; ``None`` means ``bbox``
            plus ``segm`` when the model returned masks.

    Returns:
        ``{iou_type: metrics}``, see :func:`coco_evaluate` and :func:`proposal_recall`.
    """
    if iou_types is not None:
        unknown = set(iou_types) - {"bbox", "segm", "proposal"}
        if unknown:
            raise ValueError(f"unknown iou types {sorted(unknown)}; use bbox, segm or proposal")
    label_to_cat_id = getattr(dataset, "label_to_cat_id", None)
    proposals: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    has_masks = False
    stream = iter_inference(model, dataset, device=device, batch_size=batch_size, progress=progress)
    for image_id, det in stream:
        has_masks = has_masks or "masks" in det
        want_masks = "masks" in det if iou_types is None else "segm" in iou_types
        if iou_types is None or set(iou_types) & {"bbox", "segm"}:
            results += coco_results([det], [image_id], label_to_cat_id, with_masks=want_masks)
        if iou_types is not None and "proposal" in iou_types:
            proposals += coco_results([det], [image_id])
    if iou_types is None:
        iou_types = ("bbox", "segm") if has_masks else ("bbox",)
    coco_gt, ids = dataset.coco, getattr(dataset, "ids", None)
    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type == "proposal":
            metrics[iou_type] = proposal_recall(coco_gt, proposals, ids)
        else:
            metrics[iou_type] = coco_evaluate(coco_gt, results, iou_type, ids)
    return metrics


def evaluate_to_file(
    model: nn.Module,
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    label_to_cat_id: Mapping[int, int] | None,
    iou_types: Sequence[str],
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, float]] | None:
    """Detect over a COCO dataset, write the COCO results JSON and return its metrics; under
    ``torchrun`` every rank detects on its share of the images and rank 0 writes and scores.

    Rank ``r`` of ``W`` takes the images ``r, r + W, ...``; rank 0 gathers the per-image
    results and orders them as a single process would, so the file and the metrics do not
    depend on the number of processes.

    Args:
        model: eval-mode detector ``model(images) -> list[Detection]``.
        dataset: a :class:`glimpse.data.CocoDetection` (``.coco``, ``.ids``).
        out: the results JSON to write (``bbox``, plus ``segmentation`` when the model
            returns masks).
        label_to_cat_id: label -> COCO category id; None keeps labels (proposals).
        iou_types: metrics to compute, any of ``"bbox"``, ``"segm"``, ``"proposal"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; under torchrun each rank gets its GPU.
        batch_size: images per forward on each rank.
        progress: show a tqdm bar on rank 0.

    Returns:
        ``{iou_type: metrics}`` on rank 0, None on the other ranks.
    """
    info = init_distributed(device)
    try:
        shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))
        per_image: dict[int, list[dict[str, Any]]] = {}
        stream = iter_inference(model, shard, device=info.device, batch_size=batch_size,
                                progress=progress and info.is_main)
        for image_id, det in stream:
            per_image[image_id] = coco_results([det], [image_id], label_to_cat_id,
                                               with_masks="masks" in det)
        if info.world_size > 1:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, per_image)
            per_image = {k: v for part in gathered for k, v in part.items()}
        if not info.is_main:
            return None
    finally:
        if info.created_group:
            torch.distributed.destroy_process_group()
    results = [r for image_id in dataset.ids for r in per_image.get(image_id, [])]
    atomic_write(out, json.dumps(results))
    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type == "proposal":
            metrics[iou_type] = proposal_recall(dataset.coco, results, dataset.ids)
        else:
            metrics[iou_type] = coco_evaluate(dataset.coco, results, iou_type, dataset.ids)
    return metrics
