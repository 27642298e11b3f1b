"""The official FishNet ImageNet checkpoints (``kevin-ssy/FishNet``) in glimpse's FishNet.

The released ``fishnet99/150/201`` files are what the official ``main.py`` saves: a dict whose
``"state_dict"`` is the ``state_dict()`` of the model wrapped in ``DataParallel`` (keys start
with ``module.``). The official module tree is one ``ModuleList`` per stage
(``fish.fish.<stage>.<part>``); glimpse names the parts (``tail``, ``bridge``, ``body``,
``head``, ``classifier``). :func:`official_fishnet_name` maps every glimpse tensor name to its
official one; the layers, their order and every tensor are the same in both
(``tests/models/test_fishnet_official.py`` checks the logits against the official code).

Official layout (stage ``i`` of ``fish.fish``)::

    conv1/2/3.{0 conv, 1 bn}                  -> stem.{0,1 | 3,4 | 6,7}
    fish.fish.i.0 (i < 3) residual blocks     -> tail.i.0
    fish.fish.3.{0 score, 1 score conv,
                 2 blocks, 3.0 SE}            -> bridge.{score.0-4, score.5, blocks, se}
    fish.fish.i.{0 blocks, 1 transfer} (i>3)  -> body.(i-4) / head.(i-7).{blocks, transfer}
    fish.fish.9.{3 score, 4.1 fc}             -> classifier.{0-4, 6}
    blocks: bn1/2/3, conv1/2/3, shortcut      -> norm1/2/3, conv1/2/3, shortcut
"""

from __future__ import annotations

import os
import re

from torch import Tensor, nn

from glimpse.backbones.pretrained import read_state_dict

__all__ = ["official_fishnet_name", "official_fishnet_state_dict", "load_official_fishnet"]

_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv2.0", "4": "conv2.1", "6": "conv3.0",
         "7": "conv3.1"}
# glimpse part -> official prefix, checked in order (first match wins).
_PARTS = (
    (r"tail\.(\d)\.0\.", lambda m: f"fish.fish.{m[1]}.0."),
    (r"bridge\.score\.5\.", lambda m: "fish.fish.3.1."),
    (r"bridge\.score\.", lambda m: "fish.fish.3.0."),
    (r"bridge\.blocks\.", lambda m: "fish.fish.3.2."),
    (r"bridge\.se\.", lambda m: "fish.fish.3.3.0."),
    (r"body\.(\d)\.blocks\.", lambda m: f"fish.fish.{4 + int(m[1])}.0."),
    (r"body\.(\d)\.transfer\.", lambda m: f"fish.fish.{4 + int(m[1])}.1."),
    (r"head\.(\d)\.blocks\.", lambda m: f"fish.fish.{7 + int(m[1])}.0."),
    (r"head\.(\d)\.transfer\.", lambda m: f"fish.fish.{7 + int(m[1])}.1."),
    (r"classifier\.6\.", lambda m: "fish.fish.9.4.1."),
    (r"classifier\.", lambda m: "fish.fish.9.3."),
)


def official_fishnet_name(name: str) -> str:
    """The official (``kevin-ssy/FishNet``) name of the glimpse FishNet tensor ``name``
    (a :class:`~glimpse.backbones.fishnet.FishNet` ``state_dict`` key; the official tree
    always has 10 stages, so this holds for every :class:`FishNetConfig`).

    Raises:
        KeyError: ``name`` is not a FishNet tensor name.
    """
    stem = re.fullmatch(r"stem\.(\d)\.(\w+)", name)
    if stem and stem[1] in _STEM:
        return f"{_STEM[stem[1]]}.{stem[2]}"
    for pattern, prefix in _PARTS:
        m = re.match(pattern, name)
        if m:
            rest = re.sub(r"(^|\.)norm([123])\.", r"\1bn\2.", name[m.end():])
            return prefix(m) + rest
    raise KeyError(f"{name!r} is not a glimpse FishNet tensor name")


def official_fishnet_state_dict(model: nn.Module, state: dict[str, Tensor],
                                path: str | os.PathLike) -> dict[str, Tensor]:
    """``state`` (an official FishNet state dict, ``module.`` prefixes allowed) under
    ``model``'s own names, every key accounted for.

    ``model`` is a :class:`~glimpse.backbones.fishnet.FishNet`; without a classifier
    (``num_classes=None``, the detection trunk) the official classifier tensors
    (``fish.fish.9.3`` / ``fish.fish.9.4``) are dropped, as ResNet drops ``fc``. BatchNorm
    ``num_batches_tracked`` counters are optional (PyTorch 0.4.0 files have none) and are
    dropped for norm layers without them (FrozenBatchNorm2d).

    Raises:
        ValueError: a missing, unexpected or mis-shaped tensor, naming the key and ``path``.
    """
    path = os.fspath(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    names = {official_fishnet_name(k): k for k in own}
    if getattr(model, "classifier", None) is None:
        state = {k: v for k, v in state.items()
                 if not k.startswith(("fish.fish.9.3.", "fish.fish.9.4."))}
    counters = "num_batches_tracked"
    unexpected = sorted(k for k in state if k not in names and not k.endswith(counters))
    missing = sorted(k for k in names if k not in state and not k.endswith(counters))
    if missing or unexpected:
        raise ValueError(f"{path} is not an official FishNet checkpoint of this model "
                         f"({type(model).__name__}, {len(own)} tensors): {len(missing)} missing "
                         f"keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    out = {}
    for official, tensor in state.items():
        if official not in names:  # a counter the model's norm layers do not keep
            continue
        name = names[official]
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(f"{path}: {official} has shape {tuple(tensor.shape)}, but the "
                             f"model's {name} has {tuple(own[name].shape)} (another FishNet "
                             f"depth or number of classes?)")
        out[name] = tensor
    return out


def load_official_fishnet(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the official FishNet checkpoint file ``path`` (``{"state_dict": ...}`` as released,
    or a bare state dict) into the glimpse FishNet ``model``, every key checked.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, or keys / shapes that do not match ``model``.
    """
    state = official_fishnet_state_dict(model, read_state_dict(path), path)
    model.load_state_dict(state, strict=False)  # only absent counters may be left out
