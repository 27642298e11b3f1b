"""Seeding and capture/restore of every random number generator a training run touches."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "get_rng_state", "set_rng_state", "seed_worker"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state() -> dict[str, Any]:
    """The states of the Python, NumPy, torch and CUDA generators (CUDA only if initialised).

    Only tensors and plain Python values, so a checkpoint holding it also loads with
    ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint32)
    np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached_gaussian)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: derive the Python and NumPy seeds of a worker from the
    torch seed the loader gave it, so augmentations drawn with either library differ per worker
    and repeat from run to run."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
