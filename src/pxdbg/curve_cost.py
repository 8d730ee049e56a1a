"""``python -m pxdbg.curve_cost``: the README's name for :mod:`pxdbg.bench.curve` (what CURVE costs per frame)."""

from __future__ import annotations

import sys

from pxdbg.bench.curve import main, measure

__all__ = ["main", "measure"]

if __name__ == "__main__":
    sys.exit(main())
