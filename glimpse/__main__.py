"""``python -m glimpse <command>``: see :mod:`glimpse.cli`."""

import sys

from glimpse.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
