"""The inpainting model contract shared by Global&Local and Partial Conv.

``model(images, masks)`` with ``images`` float[B, 3, H, W] in [0, 1] (the ground truth; the
model hides the holes itself) and ``masks`` float[B, 1, H, W], **1 = hole** (mmediting's
convention):

* train mode -> a dict of named scalar losses (``loss_*``);
* eval mode -> ``{"output": [B, 3, H, W], "completed": [B, 3, H, W]}`` in [0, 1]: the raw
  network output and the output pasted into the holes of the input (what is evaluated).

Internally images are mapped to [-1, 1] (mmediting's ``mean=127.5, std=127.5``).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_inpainting_inputs", "composite", "from_unit", "to_unit"]


def check_inpainting_inputs(images: Tensor, masks: Tensor, multiple: int = 1) -> None:
    """One-line errors naming the argument for wrong shapes or sizes."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    if masks.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(f"masks must be [B, 1, H, W] = {(images.shape[0], 1, *images.shape[-2:])}"
                         f", got {tuple(masks.shape)}")
    h, w = images.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(f"images must have sides divisible by {multiple}, got {h}x{w}")


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1) / 2


def from_unit(x: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2 - 1


def composite(output: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """``output`` in the holes (mask 1), ``image`` elsewhere."""
    return output * mask + image * (1 - mask)
