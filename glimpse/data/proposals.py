"""Proposal files: what an RPN found on every image of a data set, for Fast R-CNN to train and
test on (Guided Anchoring's GA-Fast R-CNN; mmdetection's ``LoadProposals``).

glimpse's format is one ``torch.save`` file (read with ``weights_only=True``)::

    {"format": "glimpse-proposals/1",
     "meta": {"model": "ga_rpn_slim_fpn", "checkpoint": ..., "config": {...}, ...},
     "proposals": {image_id: float32[P, 5]}}   # x1, y1, x2, y2, score in original pixels

every image of the set a key (an image where the RPN kept nothing holds [0, 5]), each image's
proposals best first, all of them (the RPN's ``max_per_image``). ``meta`` records what wrote the
file. mmdetection writes a pickle of per-image arrays in dataset order; glimpse keys by image id
so that a file cannot be read against the wrong image order. Two more layouts are read: a plain
``{image_id: [P, 4 or 5]}`` dict and a COCO results JSON (``[{"image_id", "bbox": [x, y, w, h],
"score"}]``, what ``python -m glimpse test`` writes for an RPN).

Fast R-CNN trains on the :data:`TRAIN_PROPOSALS` best proposals of each image and tests on all
of them (mmdetection's GA-Fast R-CNN: ``LoadProposals(num_max_proposals=300)`` in training,
``None`` at test).
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glimpse.data.coco import CocoDetection, DatasetError
from glimpse.io import atomic_write

__all__ = ["FORMAT", "TRAIN_PROPOSALS", "ProposalFile", "attach_proposals",
           "proposals_from_results", "read_proposals", "with_proposals", "write_proposals"]

FORMAT = "glimpse-proposals/1"
# Proposals per image Fast R-CNN trains on (mmdet GA-Fast R-CNN; its plain Fast R-CNN config
# loads 2000: glimpse trains both on 300, the paper's comparison of proposal quality).
TRAIN_PROPOSALS = 300


@dataclass(frozen=True)
class ProposalFile:
    """A proposal file read into memory.

    Attributes:
        path: the file.
        proposals: image id -> float32[P, 5] (xyxy, score; score 0 where the file had none),
            best first.
        meta: what wrote the file (model, checkpoint, config, data); empty when unrecorded.
    """

    path: Path
    proposals: dict[int, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def boxes(self, image_id: int, limit: int | None = None) -> Tensor:
        """float32[min(P, limit), 4] xyxy proposals of ``image_id``, best first.

        Raises:
            DatasetError: the file has no entry for ``image_id``.
        """
        if image_id not in self.proposals:
            raise DatasetError(f"{self.path}: no proposals for image id {image_id} (the file "
                               f"holds {len(self.proposals)} images; written by "
                               f"{self.meta.get('model', 'an unrecorded model')} for "
                               f"{self.meta.get('ann', 'unrecorded data')})")
        return self.proposals[image_id][:limit, :4].clone()


def _per_image(path: Path, key: Any, value: Any) -> tuple[int, Tensor]:
    """One entry of a proposals dict as (image id, float32[P, 5] best first)."""
    try:
        image_id = int(key)
        boxes = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise DatasetError(f"{path}: entry {key!r} is not image id -> [P, 4 or 5] proposals"
                           ) from None
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 5)
    if boxes.dim() != 2 or boxes.shape[1] not in (4, 5):
        raise DatasetError(f"{path}: proposals of image {image_id} have shape "
                           f"{tuple(boxes.shape)}, expected [P, 4] or [P, 5]")
    if not torch.isfinite(boxes).all():
        raise DatasetError(f"{path}: proposals of image {image_id} are not all finite")
    if boxes.shape[1] == 4:  # no scores: keep the file's order
        return image_id, torch.cat((boxes, boxes.new_zeros(len(boxes), 1)), 1)
    return image_id, boxes[boxes[:, 4].argsort(descending=True, stable=True)].contiguous()


def proposals_from_results(results: Iterable[Mapping[str, Any]],
                           image_ids: Iterable[int] = ()) -> dict[int, Tensor]:
    """COCO results rows -> image id -> float32[P, 5] (xyxy, score) best first; each of
    ``image_ids`` without a row gets [0, 5].

    Raises:
        ValueError: a row without ``image_id`` or a 4-number ``bbox`` (names its index).
    """
    rows: dict[int, list[list[float]]] = {int(i): [] for i in image_ids}
    for i, r in enumerate(results):
        try:
            x, y, w, h = (float(v) for v in r["bbox"])
            rows.setdefault(int(r["image_id"]), []).append(
                [x, y, x + w, y + h, float(r.get("score", 0.0))])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"result #{i} needs image_id and a 4-number bbox") from None
    out = {}
    for image_id, boxes in rows.items():
        t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5)
        out[image_id] = t[t[:, 4].argsort(descending=True, stable=True)]
    return out


def read_proposals(path: str | os.PathLike) -> ProposalFile:
    """Read a proposal file (any layout of the module docstring).

    Raises:
        DatasetError: missing, unreadable or malformed (the message names the file and, for a
            bad entry, the image id).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: proposals file not found")
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_bytes())
            if not isinstance(rows, list):
                raise ValueError("not a list of COCO results")
            return ProposalFile(path, proposals_from_results(rows))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read proposals JSON ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise DatasetError(f"{path}: cannot read proposals file ({e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict of proposals, got {type(obj).__name__}")
    meta: dict[str, Any] = {}
    if "format" in obj:
        if obj["format"] != FORMAT or not isinstance(obj.get("proposals"), dict):
            raise DatasetError(f"{path}: unknown proposals format {obj['format']!r} (this "
                               f"glimpse reads {FORMAT!r})")
        meta = dict(obj.get("meta") or {})
        obj = obj["proposals"]
    return ProposalFile(path, dict(_per_image(path, k, v) for k, v in obj.items()), meta)


def write_proposals(path: str | os.PathLike, proposals: Mapping[int, Tensor],
                    meta: Mapping[str, Any]) -> Path:
    """Write ``proposals`` (image id -> [P, 5] xyxy + score) in glimpse's format, atomically.

    Args:
        meta: what produced them (JSON-like values: model name, checkpoint, config, data).
    """
    payload = {"format": FORMAT, "meta": dict(meta),
               "proposals": {int(k): v.detach().cpu().float().reshape(-1, 5).contiguous()
                             for k, v in proposals.items()}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, buf.getvalue())


def attach_proposals(dataset: CocoDetection, path: str | os.PathLike | ProposalFile, *,
                     limit: int | None) -> None:
    """Make the targets of ``dataset`` carry ``proposals`` (float32[P, 4] xyxy in original
    pixels, the ``limit`` best; ``None``: all), flipped with the image. In place.

    Raises:
        DatasetError: an image of ``dataset`` has no entry in the file (names the image id; in
            a COCO results JSON an image without rows has none).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    source = path if isinstance(path, ProposalFile) else read_proposals(path)
    missing = [i for i in dataset.ids if i not in source.proposals]
    if missing:
        raise DatasetError(f"{source.path}: no proposals for image id {missing[0]} "
                           f"({len(missing)} of the {len(dataset.ids)} images of "
                           f"{dataset.ann_file} have none; the file was written by "
                           f"{source.meta.get('model', 'an unrecorded model')} for "
                           f"{source.meta.get('ann', 'unrecorded data')})")
    dataset.proposals, dataset.max_proposals = source, limit


def with_proposals(dataset: CocoDetection, path: str | os.PathLike | ProposalFile, *,
                   limit: int | None) -> CocoDetection:
    """A shallow copy of ``dataset`` with :func:`attach_proposals` applied (the dataset given
    is left alone)."""
    out = copy.copy(dataset)
    attach_proposals(out, path, limit=limit)
    return out
