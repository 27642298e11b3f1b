"""``python -m glimpse bench masked_conv``: masked convolution against dense ``conv2d``.

Guided anchoring's test-time saving rests on a convolution evaluated only at the kept locations
being cheaper than the dense one (users measured mmcv's MaskedConv2d slower than dense,
mmdetection #2611). This times :func:`glimpse.ops.masked_conv2d` (the compiled kernel when it is
built, else the reference, which computes the dense convolution) against ``F.conv2d`` on the
same input in the same run: 256 channels, 3x3, at several densities of kept locations (drawn
uniformly at random, seeded), on GA-RPN's FPN levels of an 800x1216 image (P2..P6). The ideal
ratio masked / dense is the density.

The compiled kernel alone is timed too (``kernel_ms``): where its ratio to dense crosses 1 is
the break-even density (:func:`break_even`) from which :func:`~glimpse.ops.masked_conv2d` takes
the dense path (:data:`glimpse.ops.masked_conv.DENSE_ABOVE_DENSITY`).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

from glimpse.bench.timing import median_seconds, torch_threads

__all__ = ["DENSITIES", "GA_RPN_LEVELS", "QUICK_LEVELS", "break_even", "run"]

DENSITIES = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
# (name, height, width) of the P2..P6 maps of an 800x1216 input (strides 4..64)
GA_RPN_LEVELS = (("P2", 200, 304), ("P3", 100, 152), ("P4", 50, 76), ("P5", 25, 38),
                 ("P6", 13, 19))
QUICK_LEVELS = (("P5", 25, 38),)


@torch.no_grad()
def run(levels=GA_RPN_LEVELS, densities=DENSITIES, channels: int = 256, kernel: int = 3,
        repeats: int = 5, threads: int = 1) -> pd.DataFrame:
    """One row per (level, density): ``kept`` locations, ``dense_ms``, ``masked_ms`` (the public
    op), ``kernel_ms`` (the compiled kernel alone; NaN when it is not built), ``path`` the public
    op took ("kernel", "dense" or "reference"), ``ratio`` = masked / dense, ``kernel_ratio`` =
    kernel / dense, ``ideal`` = density and ``ratio_over_ideal``.

    Raises:
        ValueError: a density outside (0, 1] or fewer than one repeat / thread.
    """
    from glimpse.ops import _ext, masked_conv2d
    from glimpse.ops.masked_conv import DENSE_ABOVE_DENSITY

    if repeats < 1 or threads < 1:
        raise ValueError(f"repeats and threads must be >= 1, got {repeats} and {threads}")
    if any(not 0 < d <= 1 for d in densities):
        raise ValueError(f"densities must lie in (0, 1], got {densities}")
    with torch_threads(threads):
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(channels, channels, kernel, kernel, generator=gen) * 0.01
        bias = torch.randn(channels, generator=gen)
        pad = kernel // 2
        compiled = _ext.available("masked_conv2d", "cpu", torch.float32)
        rows = []
        for name, h, w in levels:
            x = torch.randn(1, channels, h, w, generator=gen)
            dense = median_seconds(lambda: F.conv2d(x, weight, bias, padding=pad), repeats)
            for density in densities:
                kept = max(1, round(density * h * w))
                mask = torch.zeros(h * w, dtype=torch.bool)
                mask[torch.randperm(h * w, generator=gen)[:kept]] = True
                mask = mask.view(1, h, w)
                masked = median_seconds(lambda: masked_conv2d(x, mask, weight, bias, pad),
                                        repeats)
                kernel_s = math.nan
                if compiled:
                    kernel_s = median_seconds(lambda: torch.ops.glimpse.masked_conv2d(
                        x, mask, weight, bias, [pad, pad]), repeats)
                path = ("reference" if not compiled
                        else "dense" if kept > DENSE_ABOVE_DENSITY * h * w else "kernel")
                rows.append({"level": name, "height": h, "width": w, "density": density,
                             "kept": kept, "dense_ms": dense * 1e3, "masked_ms": masked * 1e3,
                             "kernel_ms": kernel_s * 1e3, "path": path,
                             "ratio": masked / dense, "kernel_ratio": kernel_s / dense,
                             "ideal": kept / (h * w),
                             "ratio_over_ideal": masked / dense / (kept / (h * w))})
    return pd.DataFrame(rows)


def break_even(table: pd.DataFrame) -> pd.DataFrame:
    """Per level of a :func:`run` table, the density at which the compiled kernel becomes as
    slow as the dense convolution: linear interpolation between the two measured densities
    where ``kernel_ratio`` crosses 1 (NaN when it never does in the measured range).

    Returns:
        columns ``level`` and ``break_even``.
    """
    rows = []
    for level, part in table.sort_values("density", kind="stable").groupby("level", sort=False):
        found = math.nan
        pairs = list(zip(part["density"], part["kernel_ratio"]))
        for (d0, r0), (d1, r1) in zip(pairs, pairs[1:]):
            if r0 < 1.0 <= r1:
                found = d0 + (1.0 - r0) * (d1 - d0) / (r1 - r0)
                break
        rows.append({"level": level, "break_even": found})
    return pd.DataFrame(rows)
