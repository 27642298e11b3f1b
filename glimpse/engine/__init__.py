"""Training (one loop for every model: DDP, AMP, checkpoints, exact resume), COCO evaluation
(:mod:`glimpse.engine.coco_eval`) and plain metrics (:mod:`glimpse.engine.metrics`)."""

from glimpse.engine.coco_eval import (
    coco_evaluate,
    coco_results,
    evaluate_detector,
    inference,
    proposal_recall,
)
from glimpse.engine.train import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    fit,
    load_checkpoint,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "CheckpointError",
    "fit",
    "load_checkpoint",
    "inference",
    "coco_results",
    "coco_evaluate",
    "proposal_recall",
    "evaluate_detector",
]
