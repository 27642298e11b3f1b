"""Which compiled glimpse::* kernels are usable, per op, device and dtype.

The compiled kernels live in the separate ``glimpse_kernels`` distribution (``kernels/``), built
ahead of time by ``make setup``. Loading it is attempted once, when ``glimpse.ops`` is imported,
and a failure only means that the pure-PyTorch references are used. ``GLIMPSE_DISABLE_EXT=1``
forces the references; ``GLIMPSE_WARN_EXT=1`` warns when the kernels cannot be loaded.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["available", "disabled", "kernel_status"]

DISABLE_ENV = "GLIMPSE_DISABLE_EXT"
WARN_ENV = "GLIMPSE_WARN_EXT"

# Dtypes each compiled kernel implements, per device type; anything else uses the reference.
_FLOATS = (torch.float32, torch.float64)
_ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SUPPORTED_DTYPES: dict[str, dict[str, tuple[torch.dtype, ...]]] = {
    # CPU CARAFE runs bfloat16/float16 through its float32 kernels (float32 accumulation).
    "carafe": {"cpu": _ALL_FLOATS, "cuda": _ALL_FLOATS},
    "masked_conv2d": {"cpu": _FLOATS, "cuda": _ALL_FLOATS},
    "roi_align": {"cpu": _FLOATS},
}


def _load() -> tuple[object | None, str | None]:
    """Import glimpse_kernels and register its fake kernels, autograd and FLOP formulas."""
    try:
        import glimpse_kernels

        from glimpse.ops import _registrations  # noqa: F401  (needs torch.ops.glimpse.*)
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:  # missing or stale build
        reason = f"{type(exc).__name__}: {exc}"
        if os.environ.get(WARN_ENV, "0") == "1":
            warnings.warn(f"glimpse_kernels unavailable, using reference ops ({reason})")
        return None, reason
    return glimpse_kernels, None


_KERNELS, _LOAD_ERROR = _load()
# Devices each op was compiled for, fixed once the library is loaded.
_DEVICES: dict[str, tuple[str, ...]] = {
    op: tuple(d for d in ("cpu", "cuda") if _KERNELS is not None and _KERNELS.has_kernel(op, d))
    for op in SUPPORTED_DTYPES
}


def disabled() -> bool:
    """True when ``GLIMPSE_DISABLE_EXT`` is set to anything but "" or "0"."""
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0")


def available(op: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.ops.glimpse.<op>`` should run for tensors of this device type and dtype."""
    if disabled() or device_type not in _DEVICES[op]:
        return False
    return dtype in SUPPORTED_DTYPES[op][device_type]


def kernel_status() -> dict[str, object]:
    """What is compiled and usable, e.g. for a notebook's environment cell.

    Returns:
        ``{"loaded": bool, "version": str | None, "disabled_by_env": bool, "reason": str | None,
        "ops": {op: [device types with a compiled kernel]}}``. ``reason`` says why the library
        could not be loaded (None when it was).
    """
    return {
        "loaded": _KERNELS is not None,
        "version": getattr(_KERNELS, "__version__", None),
        "disabled_by_env": disabled(),
        "reason": _LOAD_ERROR,
        "ops": {op: list(devices) for op, devices in _DEVICES.items()},
    }
