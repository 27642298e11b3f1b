"""``python -m glimpse <command>``: one entry point, each command owned by its module.

Commands are imported lazily so that ``--help`` and a typo cost nothing.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

# command -> (module, function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("glimpse.engine.cli", "train_main", "train a zoo model on a dataset"),
    "evaluate": ("glimpse.engine.cli", "evaluate_main", "COCO bbox/segm/proposal metrics of a results JSON"),
    "reproduce": ("glimpse.papers.reproduce", "main", "run the paper notebooks with papermill"),
    "bench": ("glimpse.bench", "main", "benchmarks: ratios against a baseline in the same run"),
    "data": ("glimpse.data.check", "main", "dataset tools: `data check --image-dir D --ann A`"),
    "clean-notebooks": ("glimpse.report", "clean_notebooks_main", "strip volatile notebook metadata"),
}


def _usage() -> str:
    lines = ["usage: python -m glimpse <command> [args]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"glimpse: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
