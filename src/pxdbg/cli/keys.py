"""``pxdbg keys``: CURVE key pairs for producers and consumers."""

from __future__ import annotations

import argparse

from pxdbg.shared import security


def add_new_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a plain file name, e.g. producer or the consumer's user name")
    parser.add_argument("--dir", default=".", help="directory to write the pair to (default: the current one)")


def run_new(args: argparse.Namespace) -> int:
    public, secret = security.new_key_pair(args.dir, args.name)
    print(f"wrote {public} (public: hand it to the other side) and {secret} (secret: keep it here, mode 0600)")
    return 0
