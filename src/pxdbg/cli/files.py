"""``pxdbg join``, ``pxdbg info``, ``pxdbg convert``: digits files and ROOT files of PXD digits."""

from __future__ import annotations

import argparse

from pxdbg import outputs


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the joined .npz")
    parser.add_argument("parts", nargs="+", help="the parts (.npz), in any order")
    parser.add_argument(
        "--remove-parts",
        action="store_true",
        help="delete each part once its events are in the output's spool (needs far less disk)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")


def run_join(args: argparse.Namespace) -> int:
    from pxdbg.shared.digitsfile import join

    outputs.refuse_overwrite(args.out, args.force)
    joined = join(args.out, args.parts, remove_parts=args.remove_parts)
    print(
        f"wrote {joined.n_events} events of stream {joined.meta.get('seed')} (frames "
        f"{joined.meta.get('first_frame', 0)}..) to {args.out} from {len(args.parts)} part(s)"
        f"{'' if joined.meta.get('complete', True) else '; a part was partial, so is the output'}"
    )
    return 0


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="digits files (.npz) or ROOT files (ours or basf2's)")


def run_info(args: argparse.Namespace) -> int:
    from pxdbg.fileformats import describe

    for path in args.files:
        rows = describe(path)
        print(path)
        for name, value in rows:
            print(f"  {name:<15} {value}")
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a digits file (.npz) or a ROOT file (ours or basf2's)")
    parser.add_argument("output", help="the file to write: .npz or .root (our layout; --basf2 for basf2's)")
    parser.add_argument("--basf2", action="store_true", help="write the output as a basf2 file (needs PyROOT)")
    parser.add_argument("--experiment", type=int, default=0, help="basf2 output: experiment number (default 0)")
    parser.add_argument("--run", type=int, default=0, help="basf2 output: run number (default 0)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")


def run_convert(args: argparse.Namespace) -> int:
    from pxdbg.fileformats import convert

    n = convert(args.input, args.output, force=args.force, basf2=args.basf2, experiment=args.experiment, run=args.run)
    what = f" (basf2, experiment {args.experiment}, run {args.run})" if args.basf2 else ""
    print(f"wrote {n} events of {args.input} to {args.output}{what}")
    return 0
