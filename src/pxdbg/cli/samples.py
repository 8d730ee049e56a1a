"""``pxdbg validate`` and ``pxdbg calibrate``: compare a background sample with a reference, learn a parametric
model from one."""

from __future__ import annotations

import argparse

from pxdbg import outputs
from pxdbg.cli.common import Progress, positive
from pxdbg.shared.errors import ConfigError


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sample", help="a digits file (.npz), a ROOT file (ours or basf2's) or a model name to run")
    parser.add_argument(
        "--reference", help="a digits file, ROOT file or model name (default: the shipped reference figures)"
    )
    parser.add_argument("--out", default="validation", help="report directory (default %(default)s)")
    parser.add_argument("--events", type=positive, help="events to use (default: all of a file, 1000 of a model)")
    parser.add_argument("--checkpoint", help="checkpoint of a SAMPLE model")
    parser.add_argument("--reference-checkpoint", help="checkpoint of a REFERENCE model")
    parser.add_argument("--seed", help="stream seed of models run on the fly (default 1; the reference uses seed + 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a check fails")
    parser.add_argument("-q", "--quiet", action="store_true")


def run_validate(args: argparse.Namespace) -> int:
    from pxdbg.validate import validate

    bars: dict[str, Progress] = {}

    def progress(label: str, done: int, total: int) -> None:
        if args.quiet:
            return
        bar = bars.setdefault(label, Progress(total, what=f"events of {label}"))
        bar.update(done)

    seed, _ = outputs.parse_seed(args.seed if args.seed is not None else "1")
    checks, report = validate(
        args.sample,
        args.reference,
        args.out,
        events=args.events,
        checkpoint=args.checkpoint,
        reference_checkpoint=args.reference_checkpoint,
        seed=seed,
        device=args.device,
        progress=progress,
    )
    for c in checks:
        print(c.line())
    failed = sum(c.verdict == "FAIL" for c in checks)
    print(
        f"{'FAIL' if failed else 'PASS'}: {failed} of {sum(c.verdict != 'n/a' for c in checks)} checks failed; "
        f"report {report}, plots and metrics.json beside it"
    )
    return 1 if failed and args.strict else 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sample", help="a background sample: digits file (.npz) or ROOT file (.root) of PXD digits")
    parser.add_argument("-o", "--out", required=True, help="the payload (.pt) to write")
    parser.add_argument("--events", type=positive, help="use only the first EVENTS events (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration's own random choices (default 0)")
    parser.add_argument("-q", "--quiet", action="store_true")


def run_calibrate(args: argparse.Namespace) -> int:
    from pxdbg.calibrate import calibrate, speed, summary_lines

    bar: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, what="events read", enabled=not args.quiet))
        bar[0].update(done)

    if not args.out.endswith(".pt"):
        raise ConfigError(f"-o/--out names the payload to write, a .pt file; got {args.out!r}")
    result = calibrate(args.sample, events=args.events, seed=args.seed, progress=progress)
    result.summary["ms_per_frame"] = 1e3 * speed(result.model)
    sha = result.save(args.out)
    for line in summary_lines(result.summary):
        print(line)
    print(f"wrote           {args.out} (sha256 {sha}: the model identity)")
    print(
        f"use it          --model parametric --checkpoint {args.out}, or register it as the default payload: "
        f"pxdbg payload add {args.out} --model parametric"
    )
    return 0
