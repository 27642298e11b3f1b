"""Training (one loop for every model: DDP, AMP, checkpoints, exact resume) and evaluation."""

from glimpse.engine.train import NonFiniteLossError, TrainConfig, TrainResult, fit, load_checkpoint

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "fit", "load_checkpoint"]
