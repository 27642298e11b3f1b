"""Training (one loop for every model: DDP, AMP, checkpoints, exact resume) and evaluation."""

from glimpse.engine.evaluate import (
    coco_evaluate,
    coco_results,
    evaluate_detector,
    inference,
    proposal_recall,
)
from glimpse.engine.train import NonFiniteLossError, TrainConfig, TrainResult, fit, load_checkpoint

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "fit",
    "load_checkpoint",
    "inference",
    "coco_results",
    "coco_evaluate",
    "proposal_recall",
    "evaluate_detector",
]
