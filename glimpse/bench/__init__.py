"""Benchmarks: ``python -m glimpse bench NAME`` times glimpse against a baseline in the same run
and writes the ratios under ``results/bench/`` (machines are noisy; only same-run ratios count)."""

from __future__ import annotations

import importlib
import sys

__all__ = ["BENCHMARKS", "main"]

# name -> module exposing ``main(argv: list[str]) -> int``
BENCHMARKS: dict[str, str] = {
    "carafe": "glimpse.bench.carafe",
    "detectors": "glimpse.bench.detectors",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        stream = sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr
        print("usage: python -m glimpse bench {" + ",".join(BENCHMARKS) + "} [args]", file=stream)
        return 0 if stream is sys.stdout else 2
    return int(importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0)
