"""``python -m pxdbg.farmsim``: the farm simulator until ``pxdbg farm simulate`` registers it."""

from __future__ import annotations

import argparse
import sys

from pxdbg.farmsim import add_arguments, run
from pxdbg.shared.errors import PxdbgError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pxdbg.farmsim", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PxdbgError as exc:
        print(f"pxdbg farm simulate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
