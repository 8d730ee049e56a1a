"""``pxdbg generate`` and ``pxdbg export``: events generated in this process, into a digits file or a basf2 file."""

from __future__ import annotations

import argparse
import time

from pxdbg import outputs
from pxdbg.cli.common import QUIET_HELP, Progress, has_random_weights, log, output, positive, stream
from pxdbg.shared.cpus import usable_cpus
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.seeding import event_index, event_stream_seed
from pxdbg.shared.spec import ProducerSpec


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    ProducerSpec.add_arguments(parser, compute=False)
    parser.add_argument("--seed", help="stream seed (default: random, printed)")
    parser.add_argument("--first-frame", type=int, help="index of the first frame (default 0)")
    parser.add_argument("--events", type=positive, required=True, help="events in the output (a resumed one included)")
    parser.add_argument(
        "--event",
        type=int,
        help="the first event number N: the backgrounds the basf2 module gives events (EXP, RUN, N), (EXP, RUN, N+1),"
        " ... with this --seed (its default keying='event')",
    )
    parser.add_argument("--exp", type=int, help="experiment number of --event (default 0)")
    parser.add_argument("--run", type=int, help="run number of --event (default 0)")
    parser.add_argument("--out", required=True, help="output digits file: .npz, or .root (needs uproot)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted --out (same stream)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--device", default="cpu", help="torch device of the model: cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument(
        "--batch",
        type=positive,
        default=4,
        help="frames per model call in this process (a producer's counterpart is produce --max-batch; default 4)",
    )
    parser.add_argument("--threads", type=positive, default=usable_cpus(), help="torch intra-op threads")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def run_generate(args: argparse.Namespace) -> int:
    from pxdbg.models import load_spec

    spec = ProducerSpec.from_args(args)
    if spec.info.is_gan or args.device != "cpu":  # the parametric model on the CPU is numpy: no torch to start
        import torch

        torch.set_num_threads(args.threads)
    seed, random_seed, first_frame = stream(args)
    stream_seed, event_keyed = seed, None
    if args.event is not None:  # the frames a basf2 job's module gives events (exp, run, event...) (keying="event")
        if args.first_frame is not None:
            raise ConfigError("--event chooses the frames by event number; leave out --first-frame")
        exp, run = args.exp or 0, args.run or 0
        try:
            first_frame = event_index(exp, run, args.event)
            event_index(exp, run, args.event + args.events - 1)
        except ValueError as exc:
            raise ConfigError(f"--exp/--run/--event: {exc}") from None
        stream_seed = event_stream_seed(seed)
        event_keyed = {"seed": seed, "experiment": exp, "run": run, "event": args.event}
    elif args.exp is not None or args.run is not None:
        raise ConfigError("--exp and --run go with --event (the first event number)")
    model = load_spec(spec)
    meta = {**model.identity.as_dict(), "seed": stream_seed, "first_frame": first_frame}
    if event_keyed is not None:
        meta["event_keyed"] = event_keyed
    if has_random_weights(model):
        meta["random_weights"] = True
    with outputs.interruptible(), output(args, meta) as out:
        log.info(
            "generating %d events with %s on %s, stream seed %d%s",
            args.events - out.done,
            model.identity,
            model.device,
            seed,
            " (random: pass --seed to reproduce)" if random_seed else "",
        )
        progress = Progress(args.events, enabled=not args.quiet)
        t0 = time.perf_counter()
        start = out.done
        while out.done < args.events:
            n = min(args.batch, args.events - out.done)
            first = first_frame + out.done
            for frame in model.frames(stream_seed, range(first, first + n)):
                out.append(frame)
            progress.update(out.done)
    if out.stopped:
        return out.stopped
    dt = time.perf_counter() - t0
    made = args.events - start
    print(
        f"wrote {args.events} events to {args.out} in {dt:.1f} s ({made / dt:.2f} events/s"
        f"{f', {start} of them resumed' if start else ''}); model {model.identity}, stream seed {seed}"
    )
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--basf2", required=True, metavar="OUT.root", help="the basf2 file to write")
    parser.add_argument("--from", dest="source", metavar="FILE", help="export this file's events instead of generating")
    ProducerSpec.add_arguments(parser, compute=False)
    parser.add_argument("--events", type=positive, help="events to generate")
    parser.add_argument("--seed", help="stream seed (default: random, printed)")
    parser.add_argument("--first-frame", type=int, help="index of the first frame (default 0)")
    parser.add_argument(
        "--experiment", type=int, default=0, help="experiment of the simulation that overlays it (default 0)"
    )
    parser.add_argument("--run", type=int, default=0, help="run number (default 0)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    parser.add_argument("--batch", type=positive, default=4, help="frames per model call")
    parser.add_argument("--threads", type=positive, default=usable_cpus(), help="torch intra-op threads")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("-q", "--quiet", action="store_true")


def run_export(args: argparse.Namespace) -> int:
    """Events generated here (or read from a file) as a basf2 file that BGOverlayInput accepts."""
    from pathlib import Path

    from pxdbg.basf2files import Basf2DigitsWriter

    if Path(args.basf2).exists() and not args.force:
        raise ConfigError(f"{args.basf2} exists; pass --force to overwrite it")
    if args.source:
        from pxdbg.fileformats import convert

        n = convert(args.source, args.basf2, force=args.force, basf2=True, experiment=args.experiment, run=args.run)
        print(
            f"wrote {n} events of {args.source} to {args.basf2} (basf2, experiment {args.experiment}, run {args.run})"
        )
        return 0
    if args.events is None:
        raise ConfigError("give --events N to generate, or --from FILE to export a file's events")
    import torch

    from pxdbg.models import load_spec

    torch.set_num_threads(args.threads)
    args.first_frame = args.first_frame if args.first_frame is not None else 0
    seed, random_seed = outputs.parse_seed(args.seed)
    model = load_spec(ProducerSpec.from_args(args))
    meta = {**model.identity.as_dict(), "seed": seed, "first_frame": args.first_frame}
    progress = Progress(args.events, enabled=not args.quiet)
    t0 = time.perf_counter()
    with Basf2DigitsWriter(args.basf2, meta, experiment=args.experiment, run=args.run) as out:
        for start in range(0, args.events, args.batch):
            first = args.first_frame + start
            for frame in model.frames(seed, range(first, first + min(args.batch, args.events - start))):
                out.append(frame)
            progress.update(out.n_events)
    print(
        f"wrote {args.events} events to {args.basf2} (basf2, experiment {args.experiment}, run {args.run}) in "
        f"{time.perf_counter() - t0:.1f} s; model {model.identity}, stream seed {seed}"
        f"{' (random: pass --seed to reproduce)' if random_seed else ''}"
    )
    return 0
