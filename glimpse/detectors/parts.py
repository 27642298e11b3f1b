"""Builders take ready-made parts (a neck, a dense head, a RoI head) instead of building their
own; this module holds the one rule they share about parts and settings."""

from __future__ import annotations

from typing import Any

__all__ = ["check_part"]


def check_part(name: str, part: object | None, **settings: Any) -> None:
    """Refuse a ready-made part together with settings only used to build that part.

    A setting counts as given when it is not None (builders default a part's settings to None
    and fill in their values when they build the part themselves).

    Raises:
        ValueError: ``part`` and any of ``settings`` are both given.
    """
    given = sorted(key for key, value in settings.items() if value is not None)
    if part is not None and given:
        raise ValueError(f"{name}= was passed, so {', '.join(given)} would be ignored; "
                         f"configure the {name} you pass instead")
