"""Local pretrained-weight files for backbones: read, checksum, and load with exact key checks.

Weights always come from an explicit local path (``pretrained="/local/file.pth"``); a URL is
an error, nothing is downloaded. The backbones (:class:`~glimpse.backbones.resnet.ResNet`,
:class:`~glimpse.backbones.mobilenet_v2.MobileNetV2`) filter the keys they do not use (the
classifier) and hand the rest to :func:`load_exact_state_dict`.
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import Tensor, nn

__all__ = ["file_sha256", "load_exact_state_dict", "read_state_dict", "verify_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless its sha256 is ``expected``."""
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ValueError(f"{os.fspath(path)}: sha256 {actual} does not match the expected "
                         f"{expected} (corrupt or different weights file)")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict stored in the local file ``path`` (unwrapped from ``"state_dict"`` /
    ``"model"`` when a checkpoint wraps it).

    Raises:
        ValueError: ``path`` is a URL, unreadable, or holds no state dict.
        FileNotFoundError: the file does not exist.
    """
    path = os.fspath(path)
    if "://" in path:
        raise ValueError(f"pretrained must be a local file path, not a URL: {path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained backbone weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or non-torch files
        raise ValueError(f"cannot read pretrained weights {path}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def load_exact_state_dict(module: nn.Module, state: dict[str, Tensor],
                          path: str | os.PathLike, what: str) -> None:
    """Load ``state`` (read from ``path``) into ``module`` only if every key and shape matches.

    Raises:
        ValueError: missing or unexpected keys, or a tensor of the wrong shape; the message
            names ``path`` and the first offending keys (``what`` names the model).
    """
    path = os.fspath(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match this {what}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path}: {len(wrong)} tensors have the wrong shape, e.g. {k}: "
            f"file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    module.load_state_dict(state)
