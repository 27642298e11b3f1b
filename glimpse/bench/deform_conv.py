"""``python -m glimpse bench deform_conv``: glimpse's CPU deformable convolution against
torchvision's.

Guided anchoring's feature adaption is a 3x3 deformable convolution on every FPN level. On CPU,
torchvision's backward dominated a GA-RPN training step; :func:`glimpse.ops.deform_conv2d`
computes the same function as ``grid_sample`` plus one matrix product. This times both on the
same inputs in the same run, forward alone and forward + backward (gradients of the input, the
offsets and the weight, as in training), on GA-RPN's shapes: the slim model's P2 and P3 at
256x256, batch 4, and R-50's P4 and P3 of an 800x1216 image. 4 offset groups, offsets drawn
from N(0, 1) pixels (seeded).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from glimpse.bench.timing import median_seconds, torch_threads

__all__ = ["GA_SHAPES", "QUICK_SHAPES", "run"]

# (name, batch, channels, height, width)
GA_SHAPES = (("slim P2, 256x256", 4, 64, 64, 64), ("slim P3, 256x256", 4, 64, 32, 32),
             ("R-50 P4, 800x1216", 1, 256, 50, 76), ("R-50 P3, 800x1216", 1, 256, 100, 152))
QUICK_SHAPES = (("tiny", 1, 8, 12, 10),)


def run(shapes: Sequence[tuple[str, int, int, int, int]] = GA_SHAPES, *, repeats: int = 3,
        threads: int = 1, groups: int = 4) -> pd.DataFrame:
    """One row per (shape, pass): ``torchvision_ms``, ``glimpse_ms`` (medians of ``repeats``)
    and ``speedup`` = torchvision / glimpse; ``max_abs_diff`` of the two outputs.

    Raises:
        ValueError: fewer than one repeat or thread.
    """
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    from glimpse.ops import deform_conv2d_sampled

    if repeats < 1 or threads < 1:
        raise ValueError(f"repeats and threads must be >= 1, got {repeats} and {threads}")
    rows = []
    with torch_threads(threads):
        gen = torch.Generator().manual_seed(0)
        for name, b, c, h, w in shapes:
            x = torch.randn(b, c, h, w, generator=gen)
            offset = torch.randn(b, 2 * groups * 9, h, w, generator=gen)
            weight = torch.randn(c, c, 3, 3, generator=gen) * 0.01
            impls = {"torchvision": torchvision_deform_conv2d, "glimpse": deform_conv2d_sampled}
            with torch.no_grad():
                outs = {k: f(x, offset, weight, padding=1) for k, f in impls.items()}
            diff = (outs["torchvision"] - outs["glimpse"]).abs().max().item()
            for pass_ in ("forward", "forward+backward"):
                ms = {}
                for key, fn in impls.items():
                    def step(fn=fn, backward=pass_ != "forward") -> None:
                        ins = [t.detach().requires_grad_(backward) for t in (x, offset, weight)]
                        out = fn(*ins, padding=1)
                        if backward:
                            out.sum().backward()
                    ms[key] = median_seconds(step, repeats) * 1e3
                rows.append({"shape": f"{name}: {b}x{c}x{h}x{w}", "pass": pass_,
                             "torchvision_ms": ms["torchvision"], "glimpse_ms": ms["glimpse"],
                             "speedup": ms["torchvision"] / ms["glimpse"],
                             "max_abs_diff": diff})
    return pd.DataFrame(rows)
