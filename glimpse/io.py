"""Atomic file writes, shared by the reporter (``results/``) and the engine (checkpoints, logs),
and JSON reads that fail with one clear line.

A module of its own so that the engine writes files without importing the reporter (and with it
pandas).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "read_json"]

# mkstemp creates 0600 files; written files should get the usual permissions (0666 minus umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A crash or an exception mid-write leaves the previous file untouched and no temporary file
    behind. Text is encoded as UTF-8 with ``"\\n"`` line endings exactly as given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Any:
    """Parse the JSON file ``path``, raising ``error`` with one line that names it.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"results file"``).
        error: exception type raised (a dataset error for annotation files).

    Raises:
        error: the file is missing, unreadable, not UTF-8 or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, "
                    f"column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read the {what} ({e})") from None
