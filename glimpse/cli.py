"""Every ``python -m glimpse <command>``: argument parsing and printing only.

The work is done by library functions below this module (``glimpse.engine.fit``,
``glimpse.engine.coco_eval``, ``glimpse.papers.reproduce``, ``glimpse.bench.*.run``,
``glimpse.data.check.check_coco``, ``glimpse.report.clean_notebook_file``), which are imported
when a command runs, so ``--help`` and a typo cost nothing.

Examples::

    python -m glimpse train faster_rcnn_slim_fpn --data synthetic-smoke --max-iters 200 \\
        --batch-size 4 --work-dir runs/smoke
    torchrun --nproc-per-node 8 -m glimpse train mask_rcnn_r50_fpn --data coco \\
        --data-root data/coco --max-iters 90000 --batch-size 2 --device cuda --work-dir runs/1x
    python -m glimpse evaluate --ann instances_val2017.json --results segm.json --iou-type segm
    python -m glimpse test mask_rcnn_r50_fpn --checkpoint mask_rcnn_r50_fpn_1x_coco.pth \
        --image-dir data/coco/val2017 --ann instances_val2017.json --out results.json
    python -m glimpse test rpn_slim_fpn --checkpoint runs/rpn/last.pt --image-scale 128,128 \
        --image-dir I --ann A --out rpn.json --proposals-out rpn_val.pt
    python -m glimpse train fast_rcnn_slim_fpn --data synthetic-smoke --proposals rpn_train.pt \
        --val-proposals rpn_val.pt --max-iters 20 --work-dir runs/fast
    python -m glimpse reproduce --paper codebase --profile smoke
    python -m glimpse bench carafe --quick
    python -m glimpse data check --image-dir data/coco/val2017 --ann instances_val2017.json
    python -m glimpse clean-notebooks notebooks/*.ipynb

Bad input (a missing or corrupt file, an unknown name, a broken checkpoint, a diverging loss)
ends with one line ``glimpse <command>: error: ...`` on stderr and a non-zero exit status (2 for
bad arguments), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

__all__ = ["CommandError", "build_parser", "main"]

# the profiles every paper defines (DESIGN.md: smoke, cpu, full)
_PROFILES = ("smoke", "cpu", "full")
_BENCH_DETECTOR_MODELS = ("faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn", "retinanet_r50_fpn")
# glimpse.bench.detectors.SLIM_TRAIN_MODELS (not imported: the CLI imports torch lazily)
_BENCH_SLIM_MODELS = ("faster_rcnn_slim_fpn", "mask_rcnn_slim_fpn", "retinanet_slim_fpn",
                      "cascade_rcnn_slim_fpn")


class CommandError(Exception):
    """Bad input found by a command itself; ``main`` prints it on one line.

    Args:
        message: what is wrong, naming the argument or file.
        status: the exit status (1: bad data or files, 2: bad arguments).
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# RPN-type zoo families (scored by proposal recall, write proposal files) and the Fast R-CNN
# families (read them)
_RPN_DETECTORS = ("rpn", "ga_rpn")
_FAST_RCNN_DETECTORS = ("fast_rcnn", "ga_fast_rcnn")


def _detector_of(model: str) -> str:
    from glimpse import zoo

    return zoo.MODELS[model].detector if model in zoo.MODELS else ""


def _check_proposal_options(model: str, reads: Path | None, option: str) -> None:
    """Fast R-CNN models need a proposal file; the others take none."""
    fast = _detector_of(model) in _FAST_RCNN_DETECTORS
    if fast and reads is None:
        raise CommandError(f"{model} is a Fast R-CNN: it needs {option} PATH (a proposal file "
                           f"written by `glimpse test <rpn model> --proposals-out`)", status=2)
    if not fast and reads is not None:
        raise CommandError(f"{option} is for Fast R-CNN models (fast_rcnn_*, ga_fast_rcnn_*), "
                           f"not {model}", status=2)


# ------------------------------------------------------------------------------------ train


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a zoo model on a dataset, then evaluate it",
        description="Train a zoo model with the mmdetection 1x recipe (SGD, warm-up, steps at "
        "8/12 and 11/12 of --max-iters), then evaluate it on the val split. Writes "
        "WORK_DIR/log.jsonl, config.json, checkpoints/iter_<N>.pt, last.pt and metrics.json, "
        "and prints the metrics as JSON. Segmentors (SGD, poly lr; --recipe) and inpainters "
        "(Global&Local's generator/discriminator phases, Partial Conv's two stages) train with "
        "glimpse.engine.train_dense and are scored by mIoU / pixel accuracy or L1 / PSNR / "
        "SSIM.")
    p.add_argument("model", help="a name from glimpse.zoo.names(), e.g. faster_rcnn_slim_fpn, "
                   "or a segmentor / inpainter (zoo.segmentor_names(), zoo.inpainter_names())")
    p.add_argument("--data", required=True, help="dataset name for glimpse.data.build_dataset")
    p.add_argument("--data-root", default=None, help="where the dataset lives")
    p.add_argument("--work-dir", required=True, type=Path, help="log, checkpoints, metrics")
    # unset options keep glimpse.engine.TrainConfig's defaults (importing it here costs torch)
    p.add_argument("--max-iters", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="train for this many minutes instead (--max-iters, if given, is then a "
                        "cap): the "
                        "iteration count is estimated from the step time and the lr steps "
                        "placed on it; the count reached is in the log and the checkpoint")
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--accumulate", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--lr", type=float, default=None,
                   help="absolute lr (default: the model's base lr x total batch / 16; base lr "
                        "0.02, RetinaNet 0.01: glimpse.zoo.base_lr)")
    p.add_argument("--warmup-iters", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available")
    p.add_argument("--resume", action="store_true",
                   help="continue from WORK_DIR/last.pt (from the newest intact "
                        "checkpoints/iter_<N>.pt when last.pt is broken)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on the val split")
    p.add_argument("--eval-batch-size", type=int, default=1)
    p.add_argument("--proposals", type=Path, default=None, metavar="PATH",
                   help="Fast R-CNN: proposal file of the train split (the best 300 per image "
                        "are used; glimpse.data.proposals)")
    p.add_argument("--val-proposals", type=Path, default=None, metavar="PATH",
                   help="Fast R-CNN: proposal file of the val split (all are used)")
    p.add_argument("--image-scale", default=None, metavar="LONG,SHORT",
                   help="edge bounds of the model's resize (default: the dataset's, e.g. "
                        "640,640 for coco128)")
    p.add_argument("--recipe", choices=("csail", "mmseg_512x512_80k"), default=None,
                   help="segmentors only: the schedule of glimpse.engine.train_dense."
                        "SEGMENTATION_RECIPES (options given here override it) and its "
                        "augmentation (glimpse.data.transforms.segmentation_train_pipeline)")
    p.set_defaults(run=_train)


# --max-minutes without --max-iters: the budget alone sets the length
_UNCAPPED_ITERS = 10**9

# TrainConfig fields set by train's options of the same name
_TRAIN_OPTIONS = ("max_iters", "batch_size", "accumulate", "checkpoint_every", "lr",
                  "warmup_iters", "seed", "num_workers", "max_minutes")


def _train(args: argparse.Namespace) -> int:
    import torch

    from glimpse import zoo
    from glimpse.data import build_dataset
    from glimpse.engine import TrainConfig, evaluate_detector, fit
    from glimpse.io import atomic_write

    if args.model in zoo.SEGMENTORS or args.model in zoo.INPAINTERS:
        return _train_dense(args)
    if args.recipe is not None:
        raise CommandError("--recipe applies to segmentors only")
    if args.model not in zoo.names():
        known = [*zoo.names(), *zoo.segmentor_names(), *zoo.inpainter_names()]
        raise CommandError(f"unknown model {args.model!r}; known models: {', '.join(known)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for but no CUDA device is available")
    _check_proposal_options(args.model, args.proposals, "--proposals")
    if not args.no_eval:
        _check_proposal_options(args.model, args.val_proposals, "--val-proposals")
    image_scale = None if args.image_scale is None else _image_scale(args.image_scale)
    options = {k: getattr(args, k) for k in _TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.max_minutes is not None and args.max_iters is None:
        options["max_iters"] = _UNCAPPED_ITERS
    cfg = TrainConfig(**{**options, "base_lr": zoo.base_lr(args.model)})
    train_set = build_dataset(args.data, split="train", data_root=args.data_root, train=True,
                              proposals=args.proposals)
    val_set = None
    if not args.no_eval:
        val_set = build_dataset(args.data, split="val", data_root=args.data_root, train=False,
                                proposals=args.val_proposals)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    image_scale = image_scale or tuple(train_set.default_image_scale)
    model = zoo.build(args.model, num_classes=len(train_set.class_names), image_scale=image_scale)
    result = fit(model, train_set, cfg, args.work_dir, device=args.device, resume=args.resume)
    if result.last_checkpoint is None:  # ranks > 0 under torchrun: rank 0 evaluates
        return 0
    print(f"checkpoint: {result.last_checkpoint}", file=sys.stderr)
    if val_set is None:
        return 0
    # proposal networks are scored by average recall, detectors by AP
    iou_types = ("proposal",) if _detector_of(args.model) in _RPN_DETECTORS else None
    metrics = evaluate_detector(model, val_set, device=next(model.parameters()).device,
                                iou_types=iou_types, batch_size=args.eval_batch_size)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    atomic_write(Path(args.work_dir) / "metrics.json", text + "\n")
    print(text)
    return 0


# segmentors and inpainters train with glimpse.engine.train_dense's loops
_DENSE_OPTIONS = ("max_iters", "batch_size", "checkpoint_every", "lr", "seed")


def _train_dense(args: argparse.Namespace) -> int:
    import copy
    import dataclasses

    import torch

    from glimpse import zoo
    from glimpse.data import build_dataset
    from glimpse.data.build import INPAINTING_DATASET_NAMES, SEGMENTATION_DATASET_NAMES
    from glimpse.data.transforms import segmentation_train_pipeline
    from glimpse.engine import dense_eval, train_dense
    from glimpse.io import atomic_write

    unused = [f"--{k.replace('_', '-')}" for k in ("accumulate", "warmup_iters", "num_workers",
                                                      "proposals", "val_proposals", "image_scale")
              if getattr(args, k) is not None]
    if unused:
        raise CommandError(f"{', '.join(unused)}: not used by {args.model!r} (the dense "
                           "loops are single-process SGD-poly / Adam)", status=2)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for but no CUDA device is available")
    options = {k: getattr(args, k) for k in _DENSE_OPTIONS if getattr(args, k) is not None}
    segmentor = args.model in zoo.SEGMENTORS
    if not segmentor and args.recipe is not None:
        raise CommandError("--recipe applies to segmentors only", status=2)
    splits = {split: build_dataset(args.data, split=split, data_root=args.data_root,
                                   train=split == "train")
              for split in (("train",) if args.no_eval else ("train", "val"))}
    if segmentor != hasattr(splits["train"], "num_classes"):
        names = SEGMENTATION_DATASET_NAMES if segmentor else INPAINTING_DATASET_NAMES
        raise CommandError(f"--data {args.data!r} does not fit model {args.model!r}; use one of "
                           f"{', '.join(names)}", status=2)
    torch.manual_seed(options.get("seed", 0))
    if segmentor:
        if args.recipe is not None:  # the recipe's augmentation replaces the dataset's
            splits["train"] = copy.copy(splits["train"])
            splits["train"].transforms = segmentation_train_pipeline(args.recipe)
        base = train_dense.SEGMENTATION_RECIPES.get(args.recipe, train_dense.SegTrainConfig())
        cfg = dataclasses.replace(base, **options)
        model = zoo.build(args.model, num_classes=splits["train"].num_classes)
    else:
        mask_kind = zoo.inpainter_mask_kind(args.model)
        for split, ds in splits.items():  # G&L trains on box holes, Partial Conv on free-form
            splits[split] = copy.copy(ds)
            splits[split].mask_kind = mask_kind
        size = splits["train"].image_size
        config = train_dense.GLTrainConfig if mask_kind == "box" else train_dense.PConvTrainConfig
        cfg = config(**options)
        kwargs = {"image_size": size, "local_size": size // 2} if mask_kind == "box" else {}
        model = zoo.build(args.model, **kwargs)
    result = train_dense.fit_dense(model, splits["train"], cfg, args.work_dir,
                                   device=args.device, resume=args.resume)
    print(f"checkpoint: {result.last_checkpoint}", file=sys.stderr)
    if args.no_eval:
        return 0
    evaluate = dense_eval.evaluate_segmentation if segmentor else dense_eval.evaluate_inpainting
    metrics = evaluate(model, splits["val"], batch_size=args.eval_batch_size)
    text = json.dumps(metrics, indent=2, sort_keys=True)
    atomic_write(Path(args.work_dir) / "metrics.json", text + "\n")
    print(text)
    return 0


# ------------------------------------------------------------------------------------ evaluate


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO bbox/segm AP or proposal AR of a results JSON",
        description="COCO bbox / segm AP or proposal AR of a COCO results file, printed as "
                    "JSON on stdout.")
    p.add_argument("--ann", required=True, help="COCO annotation JSON (ground truth)")
    p.add_argument("--results", required=True,
                   help="COCO results JSON (with --iou-type proposal also a glimpse proposal "
                        "file, .pt)")
    p.add_argument("--iou-type", choices=("bbox", "segm", "proposal"), default="bbox")
    p.add_argument("--img-ids", default=None,
                   help="comma-separated image ids to restrict the evaluation to")
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from glimpse.data.coco import find_structure_problems, load_coco_json
    from glimpse.engine.coco_eval import (
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
            raise CommandError(f"--img-ids must be comma-separated integers, got "
                               f"{args.img_ids!r}", status=2) from None
    data = load_coco_json(args.ann)
    for kind, messages in find_structure_problems(data).items():
        if messages:
            raise CommandError(f"{os.fspath(args.ann)}: {kind.replace('_', ' ')}: {messages[0]}")
    no_area = [a.get("id") for a in data["annotations"] if "area" not in a]
    if no_area:  # COCOeval sorts ground truth into size ranges by it
        raise CommandError(f"{os.fspath(args.ann)}: annotation {no_area[0]} has no 'area'")
    if args.iou_type == "proposal" and Path(args.results).suffix.lower() != ".json":
        results = _proposal_file_results(args.results)
    else:
        results = load_results(args.results, args.iou_type)
    coco_gt = coco_from_dict(data)
    try:
        if args.iou_type == "proposal":
            metrics = proposal_recall(coco_gt, results, img_ids)
        else:
            metrics = coco_evaluate(coco_gt, results, args.iou_type, img_ids)
    except ValueError as e:
        raise CommandError(f"{os.fspath(args.results)}: {e}") from None
    print(json.dumps(metrics, sort_keys=True))
    return 0


def _proposal_file_results(path: str | os.PathLike) -> list[dict]:
    """A glimpse proposal file as COCO results rows (category 1), for proposal recall."""
    from glimpse.data.proposals import read_proposals

    rows = []
    for image_id, props in read_proposals(path).proposals.items():
        for x1, y1, x2, y2, score in props.tolist():
            rows.append({"image_id": image_id, "category_id": 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return rows


# ------------------------------------------------------------------------------------ test


def _add_test(sub) -> None:
    p = sub.add_parser(
        "test", help="run a checkpoint (glimpse or mmdetection) over a COCO-format dataset",
        description="Detect with a zoo model loaded from a glimpse or mmdetection checkpoint "
                    "over a COCO-format image folder (mmdetection's test pipeline: keep-ratio "
                    "resize to 1333x800, normalise, pad to 32), write the COCO results JSON "
                    "and print its COCOeval metrics as JSON. Runs under torchrun, one share of "
                    "the images per process.")
    p.add_argument("model", help="a name from glimpse.zoo.names(), e.g. mask_rcnn_r50_fpn")
    p.add_argument("--checkpoint", required=True, type=Path, help="glimpse or mmdet .pth file")
    p.add_argument("--image-dir", required=True, type=Path, help="folder of the images")
    p.add_argument("--ann", required=True, type=Path, help="COCO instances JSON")
    p.add_argument("--out", required=True, type=Path, help="COCO results JSON to write")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward per process")
    p.add_argument("--score-thr", type=float, default=None, metavar="T",
                   help="keep detections scoring above T (default: the model's, 0.05)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle objects beyond tensors (only for files you trust)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--image-scale", default=None, metavar="LONG,SHORT",
                   help="resize bound (default: the model's, 1333,800; slim models trained on "
                        "synthetic data: 128,128 or 256,256)")
    p.add_argument("--proposals", type=Path, default=None, metavar="PATH",
                   help="Fast R-CNN: proposal file of these images (all are used)")
    p.add_argument("--proposals-out", type=Path, default=None, metavar="PATH",
                   help="RPN models: also write every proposal per image to PATH (.pt, "
                        "glimpse.data.proposals format, the model and checkpoint recorded) for "
                        "Fast R-CNN to read")
    p.set_defaults(run=_test)


def _test(args: argparse.Namespace) -> int:
    from glimpse import checkpoints, zoo
    from glimpse.data import CocoDetection, DatasetError, with_proposals
    from glimpse.engine.coco_eval import evaluate_to_file

    if args.model not in zoo.MODELS:
        raise CommandError(f"unknown detector {args.model!r}; known: {', '.join(zoo.MODELS)}",
                           status=2)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}", status=2)
    if args.score_thr is not None and not 0.0 <= args.score_thr < 1.0:
        raise CommandError(f"--score-thr must lie in [0, 1), got {args.score_thr}", status=2)
    is_rpn = _detector_of(args.model) in _RPN_DETECTORS
    if args.proposals_out is not None and not is_rpn:
        raise CommandError(f"--proposals-out is for RPN models (rpn_*, ga_rpn_*), not "
                           f"{args.model}", status=2)
    _check_proposal_options(args.model, args.proposals, "--proposals")
    scale = {} if args.image_scale is None else {"image_scale": _image_scale(args.image_scale)}
    dataset = CocoDetection(args.image_dir, args.ann, with_masks=False)
    if args.proposals is not None:
        dataset = with_proposals(dataset, args.proposals, limit=None)
    ckpt = checkpoints.read_checkpoint(args.checkpoint, trusted=args.trust_checkpoint)
    try:
        label_to_cat_id = dataset.label_map_for(checkpoints.class_names_of(ckpt))
    except DatasetError as e:
        raise CommandError(f"{ckpt.path}: {e}") from None
    model = zoo.build(args.model, len(label_to_cat_id), checkpoint=ckpt, **scale)
    if args.score_thr is not None:
        _set_score_threshold(model, args.score_thr)
    iou_types = ("proposal",) if is_rpn else ("bbox", "segm") if "mask" in args.model \
        else ("bbox",)
    metrics = evaluate_to_file(model, dataset, args.out, device=args.device,
                               label_to_cat_id=None if is_rpn else label_to_cat_id,
                               iou_types=iou_types, batch_size=args.batch_size,
                               progress=not args.no_progress)
    if metrics is not None:  # rank 0
        print(f"results: {args.out}", file=sys.stderr)
        if args.proposals_out is not None:
            _write_proposal_file(args, model, dataset)
            print(f"proposals: {args.proposals_out}", file=sys.stderr)
        print(json.dumps(metrics, sort_keys=True))
    return 0


def _image_scale(text: str) -> tuple[int, int]:
    try:
        long, short = (int(v) for v in text.split(","))
    except ValueError:
        raise CommandError(f"--image-scale must be LONG,SHORT (two integers), got {text!r}",
                           status=2) from None
    if long < 1 or short < 1:
        raise CommandError(f"--image-scale must be positive, got {text!r}", status=2)
    return long, short


def _write_proposal_file(args: argparse.Namespace, model, dataset) -> None:
    """The RPN's proposals of every image (read back from the results JSON just written, which
    holds all of them) as a glimpse proposal file recording what produced them."""
    import dataclasses

    from glimpse.data.proposals import proposals_from_results, write_proposals
    from glimpse.engine.coco_eval import load_results

    proposals = proposals_from_results(load_results(args.out, "proposal"), dataset.ids)
    head_cfg = getattr(model.rpn_head, "test_proposals", None)
    meta = {"model": args.model, "checkpoint": os.fspath(args.checkpoint),
            "image_dir": os.fspath(args.image_dir), "ann": os.fspath(args.ann),
            "image_scale": list(model.preprocessor.image_scale),
            "test_proposals": dataclasses.asdict(head_cfg)
            if dataclasses.is_dataclass(head_cfg) else None,
            "written_by": "python -m glimpse test"}
    write_proposals(args.proposals_out, proposals, meta)


def _set_score_threshold(model, score_thr: float) -> None:
    """Replace the score threshold of the model's test config (R-CNN or RetinaNet head)."""
    from dataclasses import replace

    for head in (getattr(model, "roi_head", None), getattr(model, "head", None)):
        if head is not None and hasattr(head, "test_cfg"):
            head.test_cfg = replace(head.test_cfg, score_thr=score_thr)


# ------------------------------------------------------------------------------------ reproduce


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="run the paper notebooks with papermill, regenerate results/",
        description="Run the paper notebooks (papermill) and regenerate results/. Shows each "
                    "notebook's progress (cells done, elapsed time) on stderr; a failing "
                    "notebook does not stop the others, and every failure is named at the end "
                    "with its cell's error on one line.")
    p.add_argument("--paper", action="append", metavar="NAME",
                   help="paper to run (repeatable); default: every notebooks/NN_<paper>.ipynb")
    p.add_argument("--profile", default="smoke", choices=_PROFILES,
                   help="smoke: CPU minutes on synthetic data; cpu: tens of minutes, "
                        "synthetic + COCO128; full: the papers' data and schedules (GPUs)")
    p.add_argument("--data-root", default="", metavar="DIR",
                   help="folder holding coco/, imagenet/, ade20k/, places/ (data/README.md)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="per-cell execution timeout in seconds (default: none)")
    p.add_argument("--results-root", type=Path, default=None, metavar="DIR",
                   help="where results go (default: <repo>/results)")
    p.add_argument("--notebooks", type=Path, default=None, metavar="DIR",
                   help="folder of NN_<paper>.ipynb notebooks (default: <repo>/notebooks)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    p.set_defaults(run=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    from glimpse.papers import reproduce
    from glimpse.report import default_root, write_index

    available = reproduce.discover(args.notebooks)
    papers = args.paper or list(available)
    unknown = [p for p in papers if p not in available]
    if unknown:
        raise CommandError(f"unknown paper(s) {unknown}; available: {list(available)}", 2)
    if not papers:
        raise CommandError("no notebooks found (expected notebooks/NN_<paper>.ipynb)", 2)

    results_root = args.results_root if args.results_root is not None else default_root()
    parameters = {"profile": args.profile, "device": args.device, "data_root": args.data_root,
                  "seed": args.seed}
    if args.results_root is not None:
        parameters["results_root"] = str(results_root.resolve())
    runs = []
    for i, paper in enumerate(papers, 1):
        print(f"== [{i}/{len(papers)}] {available[paper].name} (profile {args.profile})",
              flush=True)
        run = reproduce.run_notebook(paper, available[paper], profile=args.profile,
                                     results_root=results_root, parameters=parameters,
                                     timeout=args.timeout, progress=not args.no_progress)
        runs.append(run)
        for path in reproduce.artefacts(results_root, paper, args.profile):
            print(f"   {path}")
        status = "ok" if run.ok else "FAILED"
        print(f"   [{status}] {paper}: {run.seconds:.1f} s; executed notebook: {run.output}",
              flush=True)
    write_index(results_root)
    print(f"index: {results_root / 'README.md'}")
    failed = [r for r in runs if not r.ok]
    if failed:
        print(f"\n{len(failed)} of {len(runs)} notebook(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.notebook.name}: {r.error}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------ bench


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks: ratios against a baseline in the same run",
        description="Time glimpse against a baseline in the same run and write the ratios "
                    "under results/bench/ (machines are noisy; only same-run ratios count).")
    benches = p.add_subparsers(dest="bench",
                                metavar="{carafe,detectors,masked_conv,ga,deform_conv}")
    p.set_defaults(run=lambda args: _print_help(p))

    c = benches.add_parser(
        "carafe", help="compiled CARAFE op against the pure-PyTorch reference",
        description="The compiled CARAFE op against the pure-PyTorch reference at the "
                    "shapes CARAFE models use on a 1333x800 image, with the machine's plain "
                    "floor (copy into an existing buffer, sgemm) and the fresh-allocation "
                    "floor in the same run (see glimpse.bench.carafe).")
    c.add_argument("--quick", action="store_true",
                   help="one small shape (a smoke test of the bench); writes nothing")
    c.add_argument("--fpn-only", action="store_true",
                   help="only the two largest FPN shapes (default: every model shape, "
                        "P5->P4, P4->P3, P3->P2 and the mask head's 28x28 RoI maps)")
    c.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    c.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    c.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    c.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed time; cpu: this process's CPU time (steadier on a "
                        "shared machine, but it sums the threads: use with --threads 1)")
    c.add_argument("--no-write", action="store_true",
                   help="print the table only; do not write results/bench/carafe.*")
    c.set_defaults(run=_bench_carafe)

    d = benches.add_parser(
        "detectors", help="glimpse detectors against torchvision's",
        description="glimpse's R50-FPN detectors against torchvision's, same weights, same "
                    "run, and training steps of the slim models against torchvision models of "
                    "the same sizes (see glimpse.bench.detectors).")
    d.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
    d.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    d.add_argument("--quick", action="store_true", help="384x576 input instead of 800x1216")
    d.add_argument("--models", nargs="+", default=list(_BENCH_DETECTOR_MODELS),
                   choices=_BENCH_DETECTOR_MODELS)
    d.add_argument("--no-train", action="store_true", help="skip the training-step row")
    d.add_argument("--train-batch", type=int, default=1, help="images per R-50 training step")
    d.add_argument("--slim", nargs="*", default=list(_BENCH_SLIM_MODELS),
                   choices=_BENCH_SLIM_MODELS,
                   help="slim models with a training-step row (128 px, batch 4); none: --slim")
    d.add_argument("--no-write", action="store_true", help="print only")
    d.set_defaults(run=_bench_detectors)

    m = benches.add_parser(
        "masked_conv", help="masked convolution (guided anchoring) against dense conv2d",
        description="glimpse.ops.masked_conv2d against F.conv2d, 256 channels, 3x3, at kept-"
                    "location densities 1..100%% on GA-RPN's P2..P6 maps of an 800x1216 "
                    "image (see glimpse.bench.masked_conv).")
    m.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    m.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    m.add_argument("--quick", action="store_true", help="P5 only (a smoke test); writes nothing")
    m.add_argument("--densities", default=None, metavar="D,D,...",
                   help="comma-separated kept fractions in (0, 1] (default 0.01,0.05,0.1,0.25,"
                        "0.5,1); finer steps around 0.5 measure the break-even")
    m.add_argument("--no-write", action="store_true", help="print only")
    m.set_defaults(run=_bench_masked_conv)

    g = benches.add_parser(
        "ga", help="GA-RPN against RPN inference time (guided anchoring)",
        description="RPN and GA-RPN inference on one image, same run, interleaved: slim at "
                    "256x256 and R-50 at 800x1216, random weights, GA-RPN keeping 29.4%% of "
                    "the locations (the paper's loc_filter_thr 0.01) and all of them (see "
                    "glimpse.bench.ga).")
    g.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
    g.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    g.add_argument("--backbones", nargs="+", default=["slim", "r50"], choices=["slim", "r50"])
    g.add_argument("--quick", action="store_true",
                   help="R-50 at 384x576 (a smoke test); writes nothing")
    g.add_argument("--no-write", action="store_true", help="print only")
    g.set_defaults(run=_bench_ga)

    dc = benches.add_parser(
        "deform_conv", help="glimpse's CPU deformable convolution against torchvision's",
        description="glimpse.ops.deform_conv2d (grid_sample + one matrix product on CPU) "
                    "against torchvision.ops.deform_conv2d, forward and forward+backward, on "
                    "GA-RPN's FPN shapes (see glimpse.bench.deform_conv).")
    dc.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    dc.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    dc.add_argument("--quick", action="store_true", help="one tiny shape; writes nothing")
    dc.add_argument("--no-write", action="store_true", help="print only")
    dc.set_defaults(run=_bench_deform_conv)


def _bench_carafe(args: argparse.Namespace) -> int:
    import time

    import pandas as pd
    import torch

    from glimpse.bench import carafe as bench
    from glimpse.ops import kernel_status
    from glimpse.report import write_bench

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda but no CUDA device is available", 2)
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        raise CommandError(f"--threads must be comma-separated integers, got "
                           f"{args.threads!r}", 2) from None
    # the bench module times with this clock (module state: the carafe stream owns its API)
    bench._CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    shapes = (bench.QUICK_SHAPES if args.quick else bench.FPN_SHAPES if args.fpn_only
              else bench.MODEL_SHAPES)
    table, machine = bench.run(shapes, threads, args.repeats, args.device, not args.no_memory)
    if "compiled" not in set(table["impl"]):
        print(f"bench carafe: glimpse_kernels not loaded ({kernel_status()['reason']}); "
              "timing the reference only", file=sys.stderr)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(3).to_string(index=False))
    print(json.dumps(machine, sort_keys=True))
    if not args.no_write and not args.quick:
        machine["clock"] = args.clock
        print(f"wrote {write_bench('carafe', table, machine=machine)}")
    return 0


def _bench_detectors(args: argparse.Namespace) -> int:
    import torch

    from glimpse.bench import detectors as bench
    from glimpse.report import write_bench

    if args.repeats < 1 or args.threads < 1:
        raise CommandError("--repeats and --threads must be >= 1", 2)
    df = bench.run(args.repeats, args.threads, args.quick, args.models, not args.no_train,
                   args.train_batch, slim=args.slim)
    print(df.to_string(index=False))
    if not args.no_write:
        machine = {"threads": args.threads, "repeats": args.repeats,
                   "torch": torch.__version__, "device": "cpu"}
        print(f"wrote {write_bench('detectors', df, machine=machine)}")
    return 0


def _bench_masked_conv(args: argparse.Namespace) -> int:
    import torch

    from glimpse.bench import masked_conv as bench
    from glimpse.ops import kernel_status
    from glimpse.ops.masked_conv import DENSE_ABOVE_DENSITY
    from glimpse.report import write_bench

    if args.repeats < 1 or args.threads < 1:
        raise CommandError("--repeats and --threads must be >= 1", 2)
    densities = bench.DENSITIES
    if args.densities is not None:
        try:
            densities = tuple(float(d) for d in args.densities.split(",") if d.strip())
        except ValueError:
            raise CommandError(f"--densities must be comma-separated numbers, got "
                               f"{args.densities!r}", 2) from None
        if not densities or any(not 0 < d <= 1 for d in densities):
            raise CommandError(f"--densities must lie in (0, 1], got {args.densities!r}", 2)
    levels = bench.QUICK_LEVELS if args.quick else bench.GA_RPN_LEVELS
    df = bench.run(levels, densities, repeats=args.repeats, threads=args.threads)
    compiled = "cpu" in kernel_status()["ops"].get("masked_conv2d", [])
    print(df.round(3).to_string(index=False))
    crossings = bench.break_even(df)
    print("kernel/dense break-even density per level (NaN: not crossed in the measured range):")
    print(crossings.round(3).to_string(index=False))
    print(f"masked_conv2d takes the dense path above a kept fraction of {DENSE_ABOVE_DENSITY} "
          "(glimpse.ops.masked_conv.DENSE_ABOVE_DENSITY)")
    if not args.no_write and not args.quick:
        machine = {"threads": args.threads, "repeats": args.repeats, "compiled": compiled,
                   "torch": torch.__version__, "device": "cpu",
                   "dense_above_density": DENSE_ABOVE_DENSITY,
                   "break_even": {r.level: (None if r.break_even != r.break_even
                                            else round(r.break_even, 3))
                                  for r in crossings.itertuples()}}
        print(f"wrote {write_bench('masked_conv', df, machine=machine)}")
    return 0


def _bench_ga(args: argparse.Namespace) -> int:
    import torch

    from glimpse.bench import ga as bench
    from glimpse.report import write_bench

    if args.repeats < 1 or args.threads < 1:
        raise CommandError("--repeats and --threads must be >= 1", 2)
    df = bench.run(args.backbones, repeats=args.repeats, threads=args.threads, quick=args.quick)
    print(df.round(3).to_string(index=False))
    if not args.no_write and not args.quick:
        machine = {"threads": args.threads, "repeats": args.repeats,
                   "torch": torch.__version__, "device": "cpu"}
        print(f"wrote {write_bench('ga', df, machine=machine)}")
    return 0


def _bench_deform_conv(args: argparse.Namespace) -> int:
    import torch

    from glimpse.bench import deform_conv as bench
    from glimpse.report import write_bench

    if args.repeats < 1 or args.threads < 1:
        raise CommandError("--repeats and --threads must be >= 1", 2)
    shapes = bench.QUICK_SHAPES if args.quick else bench.GA_SHAPES
    df = bench.run(shapes, repeats=args.repeats, threads=args.threads)
    digits = {"*": 3, "max_abs_diff": 9}
    print(df.round(3).assign(max_abs_diff=df["max_abs_diff"]).to_string(index=False))
    if not args.no_write and not args.quick:
        machine = {"threads": args.threads, "repeats": args.repeats,
                   "torch": torch.__version__, "device": "cpu"}
        print(f"wrote {write_bench('deform_conv', df, machine=machine, float_digits=digits)}")
    return 0


# ------------------------------------------------------------------------------------ data


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools: `data check --image-dir D --ann A`",
                       description="Dataset tools.")
    tools = p.add_subparsers(dest="tool", metavar="{check}", required=True)
    c = tools.add_parser(
        "check", help="validate a COCO detection set or a semantic segmentation folder pair",
        description="Report every problem of a COCO set (--ann) or of images and label maps "
                    "(--labels): each kind with its count and a few examples. Exit status "
                    "0: clean; 1: problems; 2: the annotation file or a folder cannot be read.")
    c.add_argument("--image-dir", required=True, type=Path, help="folder of the images")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--ann", type=Path, help="COCO instances JSON")
    what.add_argument("--labels", type=Path,
                      help="folder of semantic label maps <stem>.png (segmentation sets)")
    c.add_argument("--num-classes", type=int, default=150,
                   help="with --labels: number of classes (150: ADE20K)")
    c.add_argument("--reduce-zero-label", action="store_true",
                   help="with --labels: value 0 is 'ignore' and 1..K the classes (ADE20K)")
    c.add_argument("--fast", action="store_true",
                   help="read only image headers (does not find truncated images)")
    c.add_argument("--max-examples", type=int, default=5,
                   help="examples printed per kind of problem")
    c.add_argument("--sem-seg-dir", type=Path, default=None,
                   help="also check the semantic label maps <file stem>.png in this folder "
                        "(COCO-stuff stuffthingmaps/<split>2017)")
    c.add_argument("--sem-seg-classes", type=int, default=None,
                   help="number of semantic classes (183 for COCO-stuff): report labels "
                        "beyond it other than 255")
    c.set_defaults(run=_data_check)


def _data_check(args: argparse.Namespace) -> int:
    from glimpse.data import DatasetError
    from glimpse.data.check import check_coco, check_segmentation

    try:
        if args.labels is not None:
            report = check_segmentation(args.image_dir, args.labels,
                                        num_classes=args.num_classes,
                                        reduce_zero_label=args.reduce_zero_label,
                                        decode=not args.fast)
        else:
            report = check_coco(args.image_dir, args.ann, decode=not args.fast,
                                sem_seg_dir=args.sem_seg_dir,
                                sem_seg_classes=args.sem_seg_classes)
    except DatasetError as e:
        raise CommandError(str(e), status=2) from None
    print(report.format(args.max_examples))
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------ notebooks


def _add_clean_notebooks(sub) -> None:
    p = sub.add_parser(
        "clean-notebooks", help="strip volatile notebook metadata",
        description="Strip papermill metadata, execution counts and widget state in place "
                    "(outputs kept).")
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--keep-injected", action="store_true",
                   help="keep papermill's injected-parameters cells")
    p.set_defaults(run=_clean_notebooks)


def _clean_notebooks(args: argparse.Namespace) -> int:
    from glimpse.report import clean_notebook_file

    status = 0
    for path in args.notebooks:
        try:
            clean_notebook_file(path, keep_injected=args.keep_injected)
        except (FileNotFoundError, ValueError) as exc:  # one bad file does not stop the rest
            print(f"glimpse clean-notebooks: error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"cleaned {path}")
    return status


# ------------------------------------------------------------------------------------ main


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m glimpse`` parser; each subcommand sets ``run(args) -> exit status``."""
    parser = _Parser(prog="python -m glimpse",
                     description="glimpse: the paper companion's command line.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add in (_add_train, _add_evaluate, _add_test, _add_reproduce, _add_bench, _add_data,
                _add_clean_notebooks):
        add(sub)
    parser.set_defaults(run=lambda args: _print_help(parser))
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug: printed on one line. Imported only when one
    happened, so that a command that never reaches the data or the engine never loads them."""
    from glimpse.data import DatasetError
    from glimpse.engine import CheckpointError, NonFiniteLossError

    return DatasetError, CheckpointError, NonFiniteLossError, OSError, ValueError


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (also for ``--help`` and argument errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2), already printed
        return int(exc.code or 0)
    run: Callable[[argparse.Namespace], int] = args.run
    command = " ".join(x for x in (args.command, getattr(args, "bench", None),
                                   getattr(args, "tool", None)) if x)
    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        # one line, as the errors: a user of the command line has no use for our source lines
        print(f"glimpse {command}: warning: {_one_line(message)}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = show_warning
            return int(run(args) or 0)
    except CommandError as exc:
        print(f"glimpse {command}: error: {exc}", file=sys.stderr)
        return exc.status
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"glimpse {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
