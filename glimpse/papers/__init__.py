"""One module per paper (profiles, experiments, table and figure functions) and ``reproduce``.

Shared by every paper: :mod:`glimpse.papers.runner` (train and evaluate variants over seeds,
resume by manifest, paired "does the claim hold" verdicts) and :mod:`glimpse.papers.figures`
(images, boxes, masks, detections, training curves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from glimpse.engine.distributed import resolve_device

__all__ = ["resolve_profile"]

ConfigT = TypeVar("ConfigT")


def resolve_profile(profiles: Mapping[str, ConfigT], profile: str, paper: str,
                    **overrides: Any) -> ConfigT:
    """``profiles[profile]`` with notebook parameters and ``overrides`` applied.

    Every paper's ``resolve`` goes through here, so papermill parameters are treated alike:
    ``device`` ``"auto"`` or ``""`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``;
    ``data_root=None`` becomes ``""``; JSON lists (papermill has no tuples) become tuples.

    Raises:
        ValueError: unknown profile, or a device string torch does not accept.
        TypeError: an override that is not a field of the profile's dataclass.
    """
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r} for {paper}; choose from {sorted(profiles)}")
    base = profiles[profile]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown {type(base).__name__} field(s) {unknown}; "
                        f"valid: {sorted(fields)}")
    if "device" in overrides:
        device = overrides["device"] or "auto"
        try:
            overrides["device"] = str(resolve_device(device))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
    if "data_root" in overrides and overrides["data_root"] is None:
        overrides["data_root"] = ""
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(base, **overrides)
