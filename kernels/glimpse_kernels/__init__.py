"""Compiled glimpse::* operators; importing this package registers them with torch.ops.glimpse."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from . import _C  # noqa: F401  (runs the TORCH_LIBRARY static initialisers)

__version__ = "0.1.0"
__all__ = ["__version__", "has_kernel"]


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.glimpse.<op>`` has a kernel for ``device_type`` ("cpu", "cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"glimpse::{op}", key)
