"""Hole masks for inpainting, seeded: the square-box masks of mmediting's Global&Local config and
the free-form (irregular) brush masks of its Partial Conv config (reference B3).

mmediting draws test masks at random (its test pipeline is the train pipeline); glimpse draws
mask ``i`` of a set from ``numpy.random.default_rng([seed, i])``, so an evaluation set's masks
are a fixed, reproducible list. Masks are float32[1, H, W] with **1 = hole**.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["MaskKind", "box_mask", "free_form_mask", "make_mask", "mask_for_index"]

MaskKind = Literal["box", "free_form"]


def box_mask(size: tuple[int, int], rng: np.random.Generator, *,
             max_box: tuple[int, int] = (128, 128), max_delta: tuple[int, int] = (40, 40),
             margin: tuple[int, int] = (20, 20)) -> Tensor:
    """One rectangular hole (mmediting ``random_bbox`` + ``bbox2mask``): height
    ``max_box[0] - U{0..max_delta[0]}`` (width likewise), top-left uniform with ``margin``
    from the borders. Boxes and margins shrink with the image when they do not fit."""
    h, w = size
    out = np.zeros((h, w), np.float32)
    bh = min(max_box[0], h - 2 * margin[0]) - int(rng.integers(0, max_delta[0] + 1))
    bw = min(max_box[1], w - 2 * margin[1]) - int(rng.integers(0, max_delta[1] + 1))
    bh, bw = max(bh, 1), max(bw, 1)
    top = int(rng.integers(min(margin[0], h - bh), max(h - margin[0] - bh, 0) + 1))
    left = int(rng.integers(min(margin[1], w - bw), max(w - margin[1] - bw, 0) + 1))
    out[top:top + bh, left:left + bw] = 1
    return torch.from_numpy(out)[None]


def free_form_mask(size: tuple[int, int], rng: np.random.Generator, *,
                   num_vertices: tuple[int, int] = (4, 10), max_angle: float = 6.0,
                   length_range: tuple[int, int] = (20, 128),
                   brush_width: tuple[int, int] = (10, 45),
                   area_ratio_range: tuple[float, float] = (0.15, 0.65),
                   max_tries: int = 50) -> Tensor:
    """Free-form brush strokes (mmediting ``get_irregular_mask`` with the Partial Conv
    config's ranges): strokes of ``num_vertices`` segments with random turns up to
    ``max_angle`` radians, lengths and brush widths, redrawn until the hole covers
    ``area_ratio_range`` of the image (the last try is kept after ``max_tries``). Lengths and
    widths are for 256 px images and scale with the shorter side."""
    h, w = size
    scale = min(h, w) / 256
    for _ in range(max_tries):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        x, y = float(rng.integers(0, w)), float(rng.integers(0, h))
        width = max(1, int(rng.integers(brush_width[0], brush_width[1] + 1) * scale))
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(num_vertices[0], num_vertices[1] + 1))):
            angle += rng.uniform(-max_angle, max_angle) / 2
            length = rng.integers(length_range[0], length_range[1] + 1) * scale
            nx = min(max(x + length * math.cos(angle), 0), w - 1)
            ny = min(max(y + length * math.sin(angle), 0), h - 1)
            draw.line((x, y, nx, ny), fill=1, width=width)
            r = width / 2
            draw.ellipse((nx - r, ny - r, nx + r, ny + r), fill=1)
            x, y = nx, ny
        mask = np.asarray(canvas, np.float32)
        if area_ratio_range[0] <= mask.mean() <= area_ratio_range[1]:
            break
    return torch.from_numpy(mask.copy())[None]


def make_mask(kind: MaskKind, size: tuple[int, int], rng: np.random.Generator) -> Tensor:
    """A ``"box"`` (Global&Local) or ``"free_form"`` (Partial Conv) mask, box sizes scaled from
    the 256 px config to ``size``."""
    if kind == "box":
        s = min(size) / 256
        return box_mask(size, rng, max_box=(round(128 * s), round(128 * s)),
                        max_delta=(round(40 * s), round(40 * s)),
                        margin=(round(20 * s), round(20 * s)))
    if kind == "free_form":
        return free_form_mask(size, rng)
    raise ValueError(f"mask kind must be 'box' or 'free_form', got {kind!r}")


def mask_for_index(kind: MaskKind, size: tuple[int, int], seed: int, index: int) -> Tensor:
    """Mask ``index`` of the fixed set ``seed``: from ``default_rng([seed, index])``."""
    return make_mask(kind, size, np.random.default_rng([seed, index]))
