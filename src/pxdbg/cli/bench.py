"""``pxdbg bench``: the speed figures of :mod:`pxdbg.bench`, printed (and as JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and configurations")
    parser.add_argument(
        "--producer",
        action="store_true",
        help="producer speed per model, precision and batch size, with the fidelity cost against fp32",
    )
    parser.add_argument("--device", default="cpu", help="device for --producer (cpu or cuda)")
    parser.add_argument(
        "--roofline",
        action="store_true",
        help="with --producer (implied): per-layer roofline of each model's default reduced-precision and fp32 "
        "engines, against the matrix-product peak and a memory bandwidth probed in the run (works with --quick)",
    )
    parser.add_argument(
        "--files",
        action="store_true",
        help="only the digits-file figures (size, write and read time per event) and a parametric producer's start",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as JSON on stdout (the tables go to stderr)"
    )


def run(args: argparse.Namespace) -> int:
    from pxdbg import bench

    if not args.verbose:  # the local producers' start-up lines would interleave with the tables
        logging.getLogger("pxdbg").setLevel(logging.WARNING)
    if args.files:
        import builtins
        import functools

        result = {"digits_file": bench.bench_digits_file(args.quick), "producer_start": bench.bench_producer_start()}
        bench.print_files_and_start(
            result, functools.partial(builtins.print, file=sys.stderr if args.json else sys.stdout)
        )
    elif args.producer or args.roofline:
        result = bench.bench_producer(args)
    else:
        result = bench.run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0
