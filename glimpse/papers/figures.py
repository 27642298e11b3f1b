"""Figure helpers shared by every paper: images, boxes, masks, detections, training curves.

Paper-specific figures (anchors, the fish, ...) live in their paper's module and draw with these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["COLORS", "draw_box", "figure_detections", "figure_training_curves", "show_image"]

# distinct colours for instances (cycled)
COLORS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive", "tab:cyan")


def show_image(ax: Any, image: Tensor, title: str) -> None:
    """Draw float[3, H, W] ``image`` in [0, 1] on ``ax`` with a small title, no axes."""
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def draw_box(ax: Any, box: Sequence[float], color: Any, lw: float = 1.0, ls: str = "-",
             alpha: float = 1.0) -> None:
    """Outline of one xyxy ``box`` (pixels; extra entries such as a score are ignored)."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box[:4])
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                           linewidth=lw, linestyle=ls, alpha=alpha))


def figure_detections(image: Tensor, detections: Mapping[str, Mapping[str, Tensor]],
                      class_names: Sequence[str], *, score_thr: float = 0.3,
                      target: Mapping[str, Tensor] | None = None) -> Any:
    """Final boxes (and masks) of several trained detectors on one image.

    Args:
        image: float[3, H, W] in [0, 1].
        detections: ``{title: Detection}`` (``boxes`` xyxy pixels, ``labels`` 1..K,
            ``scores``, optional ``masks`` [N, 1 or H, W] / [N, H, W]).
        class_names: names of labels 1..K.
        score_thr: only detections scoring at least this are drawn.
        target: ground truth drawn in a first panel when given.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    panels = ([("ground truth", target)] if target is not None else []) + list(detections.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (title, det) in zip(axes[0], panels):
        is_gt = target is not None and det is target
        keep = (torch.ones(len(det["boxes"]), dtype=torch.bool) if is_gt
                else det["scores"] >= score_thr)
        canvas = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy().copy()
        if "masks" in det and len(det["masks"]):
            masks = det["masks"]
            masks = masks[:, 0] if masks.dim() == 4 else masks
            for i in torch.nonzero(keep).flatten().tolist():
                m = masks[i].cpu().numpy() > 0.5
                color = np.array(plt.get_cmap("tab10")(int(det["labels"][i]) % 10)[:3])
                canvas[m] = 0.5 * canvas[m] + 0.5 * color
        ax.imshow(canvas)
        ax.set_axis_off()
        ax.set_title(f"{title} ({int(keep.sum())})", fontsize=8)
        for i in torch.nonzero(keep).flatten().tolist():
            label = int(det["labels"][i])
            color = plt.get_cmap("tab10")(label % 10)
            draw_box(ax, det["boxes"][i], color, lw=1.0)
            text = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
            if not is_gt:
                text += f" {float(det['scores'][i]):.2f}"
            x0, y0 = (float(v) for v in det["boxes"][i][:2])
            ax.text(x0, y0, text, fontsize=5, color="white",
                    bbox={"facecolor": color, "pad": 0.5, "linewidth": 0})
    fig.tight_layout()
    return fig


def figure_training_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], *,
                           smooth: int = 20) -> Any:
    """Total training loss per iteration of each run (moving average over ``smooth`` iters)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    for name, history in histories.items():
        its = np.array([h["iter"] for h in history], dtype=float)
        loss = np.array([h["loss"] for h in history], dtype=float)
        k = max(1, min(smooth, len(loss)))
        avg = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1:], avg, label=name, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (sum of loss_*)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
