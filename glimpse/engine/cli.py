"""``python -m glimpse train`` and ``python -m glimpse evaluate``.

Examples::

    python -m glimpse train faster_rcnn_slim_fpn --data synthetic-smoke --max-iters 200 \\
        --batch-size 4 --work-dir runs/smoke
    torchrun --nproc-per-node 8 -m glimpse train mask_rcnn_r50_fpn --data coco \\
        --data-root data/coco --max-iters 90000 --batch-size 2 --device cuda --work-dir runs/1x
    python -m glimpse evaluate --ann instances_val2017.json --results segm.json --iou-type segm

Expected problems (bad files, unknown names, a diverging loss) end with a one-line message on
stderr and exit status 1 (2 for bad arguments), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["train_main", "evaluate_main"]


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def _train_parser() -> argparse.ArgumentParser:
    from glimpse.engine.train import TrainConfig

    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m glimpse train",
        description="Train a zoo model with the mmdetection 1x recipe (SGD, warm-up, steps at "
        "8/12 and 11/12 of --max-iters), then evaluate it on the val split.",
    )
    p.add_argument("model", help="a name from glimpse.zoo.names(), e.g. faster_rcnn_slim_fpn")
    p.add_argument("--data", required=True, help="dataset name for glimpse.data.build_dataset")
    p.add_argument("--data-root", default=None, help="where the dataset lives")
    p.add_argument("--work-dir", required=True, type=Path, help="log, checkpoints, metrics")
    p.add_argument("--max-iters", type=int, default=defaults.max_iters)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="per process")
    p.add_argument("--accumulate", type=int, default=defaults.accumulate)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--lr", type=float, default=None,
                   help="absolute lr (default: 0.02 x total batch / 16)")
    p.add_argument("--warmup-iters", type=int, default=defaults.warmup_iters)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-workers", type=int, default=defaults.num_workers)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/last.pt")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on the val split")
    p.add_argument("--eval-batch-size", type=int, default=1)
    return p


def train_main(argv: list[str]) -> int:
    """Train, checkpoint, evaluate on the val split, print the metrics as JSON.

    Writes ``WORK_DIR/log.jsonl``, ``config.json``, ``checkpoints/iter_<N>.pt``, ``last.pt``
    and ``metrics.json``. Returns the exit status.
    """
    prog = "glimpse train"
    args = _train_parser().parse_args(argv)

    import torch

    from glimpse import zoo
    from glimpse.data import DatasetError, build_dataset
    from glimpse.engine.evaluate import evaluate_detector
    from glimpse.engine.train import NonFiniteLossError, TrainConfig, fit
    from glimpse.report import atomic_write

    if args.model not in zoo.names():
        return _fail(prog, f"unknown model {args.model!r}; known models: {', '.join(zoo.names())}")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        return _fail(prog, "--device cuda was asked for but no CUDA device is available")
    try:
        cfg = TrainConfig(
            max_iters=args.max_iters,
            batch_size=args.batch_size,
            accumulate=args.accumulate,
            checkpoint_every=args.checkpoint_every,
            lr=args.lr,
            warmup_iters=args.warmup_iters,
            seed=args.seed,
            num_workers=args.num_workers,
        )
    except ValueError as e:
        return _fail(prog, str(e))
    try:
        train_set = build_dataset(args.data, split="train", data_root=args.data_root, train=True)
        val_set = None
        if not args.no_eval:
            val_set = build_dataset(args.data, split="val", data_root=args.data_root, train=False)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        return _fail(prog, str(e))

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = zoo.build(
        args.model,
        num_classes=len(train_set.class_names),
        image_scale=train_set.default_image_scale,
    )
    try:
        result = fit(model, train_set, cfg, args.work_dir, device=device, resume=args.resume)
    except (NonFiniteLossError, DatasetError, FileNotFoundError) as e:
        return _fail(prog, str(e))
    if result.last_checkpoint is None:  # ranks > 0 under torchrun: rank 0 evaluates
        return 0
    print(f"checkpoint: {result.last_checkpoint}", file=sys.stderr)
    if val_set is None:
        return 0
    # proposal networks are scored by average recall, detectors by AP
    iou_types = ("proposal",) if zoo.MODELS[args.model].detector == "rpn" else None
    eval_device = next(model.parameters()).device
    metrics = evaluate_detector(
        model, val_set, device=eval_device, iou_types=iou_types, batch_size=args.eval_batch_size
    )
    text = json.dumps(metrics, indent=2, sort_keys=True)
    atomic_write(Path(args.work_dir) / "metrics.json", text + "\n")
    print(text)
    return 0


def evaluate_main(argv: list[str]) -> int:
    """Print the COCO metrics of a results JSON as JSON on stdout; returns the exit status."""
    prog = "glimpse evaluate"
    p = argparse.ArgumentParser(
        prog="python -m glimpse evaluate",
        description="COCO bbox / segm AP or proposal AR of a COCO results file.",
    )
    p.add_argument("--ann", required=True, help="COCO annotation JSON (ground truth)")
    p.add_argument("--results", required=True, help="COCO results JSON")
    p.add_argument("--iou-type", choices=("bbox", "segm", "proposal"), default="bbox")
    p.add_argument("--img-ids", default=None,
                   help="comma-separated image ids to restrict the evaluation to")
    args = p.parse_args(argv)

    from glimpse.data.coco import DatasetError, find_structure_problems, load_coco_json
    from glimpse.engine.evaluate import (
        coco_evaluate,
        coco_from_dict,
        load_results,
        proposal_recall,
    )

    img_ids = None
    if args.img_ids:
        try:
            img_ids = [int(x) for x in args.img_ids.split(",") if x.strip()]
        except ValueError:
            return _fail(prog, f"--img-ids must be comma-separated integers, got {args.img_ids!r}")
    try:
        data = load_coco_json(args.ann)
    except DatasetError as e:
        return _fail(prog, str(e))
    for kind, messages in find_structure_problems(data).items():
        if messages:
            return _fail(prog, f"{os.fspath(args.ann)}: {kind.replace('_', ' ')}: {messages[0]}")
    no_area = [a.get("id") for a in data["annotations"] if "area" not in a]
    if no_area:  # COCOeval sorts ground truth into size ranges by it
        return _fail(prog, f"{os.fspath(args.ann)}: annotation {no_area[0]} has no 'area'")
    try:
        results = load_results(args.results, args.iou_type)
    except ValueError as e:
        return _fail(prog, str(e))
    coco_gt = coco_from_dict(data)
    try:
        if args.iou_type == "proposal":
            metrics = proposal_recall(coco_gt, results, img_ids)
        else:
            metrics = coco_evaluate(coco_gt, results, args.iou_type, img_ids)
    except ValueError as e:
        return _fail(prog, f"{os.fspath(args.results)}: {e}")
    print(json.dumps(metrics, sort_keys=True))
    return 0
