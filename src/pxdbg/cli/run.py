"""``pxdbg run``: the main job, an event loop pulling one frame per event from local or farm producers."""

from __future__ import annotations

import argparse
import json
import sys
import time

from pxdbg import outputs
from pxdbg.cli.common import QUIET_HELP, Progress, fraction, log, output, positive, seconds, stream
from pxdbg.consumer.options import MAX_PRODUCERS, WHOLE_FARM
from pxdbg.shared import security
from pxdbg.shared.spec import ProducerSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ProducerSpec.add_arguments(parser, farm=True, prefix_help="local producers' ")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--workers", type=positive, help="start this many local producers")
    src.add_argument("--connect", help="comma-separated producer endpoints (a farm)")
    parser.add_argument("--events", type=positive, required=True, help="events in the run (a resumed --out's included)")
    parser.add_argument("--seed", help="stream seed (default: random, printed)")
    parser.add_argument("--first-frame", type=int, help="index of the first frame (default 0)")
    parser.add_argument("--prefetch", type=positive, default=16, help="frames requested ahead (default %(default)s)")
    parser.add_argument("--out", help="write the digits to this file: .npz, or .root (needs uproot)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted --out (same stream)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--work-ms", type=float, default=0.0, help="CPU milliseconds spent per event, as a simulation")
    parser.add_argument(
        "--connect-timeout",
        type=seconds,
        default=60.0,
        help="seconds without any producer before failing (default %(default)s)",
    )
    parser.add_argument(
        "--frame-timeout",
        type=seconds,
        default=600.0,
        help="seconds to wait for one frame before failing (default %(default)s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=seconds,
        default=60.0,
        help="seconds a producer may owe frames while delivering none (it answers heartbeats: a hung "
        "model) before it is quarantined and its frames asked elsewhere (default %(default)s)",
    )
    parser.add_argument(
        "--hedge-budget",
        type=fraction,
        help="fraction of frames that may also be asked of a second producer when overdue (default 0.05 for "
        "--connect, 0 for --workers: local workers share this machine's CPUs)",
    )
    parser.add_argument(
        "--audit",
        type=fraction,
        help="fraction of frames also asked of a second producer and compared (default 0.01 for --connect, 0 "
        "for --workers); a producer whose copy differs is quarantined for the run",
    )
    parser.add_argument(
        "--max-producers",
        type=positive,
        default=None,
        help="most producers used at once: a subset of what --connect resolves to, chosen by the stream seed and "
        "$PXDBG_CONSUMER_KEY (else the Slurm array task, else host:pid); one that fails is replaced (default: "
        f"a farm of up to {WHOLE_FARM} producers whole, a larger one {MAX_PRODUCERS} at a time)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    security.add_client_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pxdbg.consumer import BackgroundClient, PipelineError

    seed, random_seed, first_frame = stream(args)
    spec = ProducerSpec.from_args(args)
    meta = {**spec.identity().as_dict(), "seed": seed, "first_frame": first_frame}
    source = dict(workers=args.workers) if args.workers else dict(endpoints=args.connect)
    t_start = time.perf_counter()
    try:
        with outputs.interruptible(), output(args, meta) as out:
            start = out.done
            with BackgroundClient(
                **source,
                spec=spec,
                seed=seed,
                first_frame=first_frame + start,
                prefetch=args.prefetch,
                connect_timeout=args.connect_timeout,
                frame_timeout=args.frame_timeout,
                stall_timeout=args.stall_timeout,
                hedge_budget=args.hedge_budget,
                audit=args.audit,
                max_producers=args.max_producers,
                events=args.events - start,
                transport=security.options_from_args(args),
            ) as client:
                log.info(
                    "stream seed %d%s, model %s, %s%s",
                    seed,
                    " (random: pass --seed to reproduce)" if random_seed else "",
                    client.identity,
                    f"{args.workers} local producer(s)" if args.workers else f"producers {args.connect}",
                    f"; resuming at event {start}" if start else "",
                )
                progress = Progress(args.events, enabled=not args.quiet)
                digits = 0
                first_frame_s = None
                while out.done < args.events:
                    frame = client.next()
                    if first_frame_s is None:
                        first_frame_s = time.perf_counter() - t_start
                    digits += frame.n_digits
                    out.append(frame)
                    if args.work_ms:
                        _spend_cpu(args.work_ms)
                    progress.update(out.done, lambda: f"wait p50 {1e3 * client.stats.wait_percentile(50):.3f} ms")
                summary = _run_summary(
                    args, client, seed, args.events - start, digits, first_frame_s, time.perf_counter() - t_start
                )
    except PipelineError as exc:
        print(f"pxdbg run: {exc}", file=sys.stderr)
        return 1
    if out.stopped:
        return out.stopped
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        from pxdbg.shared.frame import BYTES_PER_DIGIT
        from pxdbg.shared.geometry import FRAME_PIXELS

        s = summary
        print(
            f"events          {s['events']} in {s['wall_s']:.2f} s: {s['frames_per_s']:.1f} frames/s "
            f"(first frame after {s['first_frame_s']:.2f} s)"
        )
        print(f"model           {s['model']}, stream seed {seed}")
        print(
            f"consumer wait   p50 {s['wait_ms_p50']:.3f} ms, p99 {s['wait_ms_p99']:.3f} ms per event once warm; "
            f"{s['wait_ms_total'] / 1e3:.2f} s in all"
        )
        print(
            f"wire            {s['wire_bytes_per_frame'] / 1e3:.1f} kB per frame "
            f"({s['wire_bytes_per_digit']:.2f} bytes per digit, {s['digits_per_frame']:.0f} digits per frame; "
            f"dense would be {FRAME_PIXELS / 1e6:.2f} MB, {BYTES_PER_DIGIT} bytes per digit in memory)"
        )
        print(
            f"pipeline        at most {s['max_in_flight']} frames in flight (prefetch {args.prefetch}); "
            f"{', '.join(f'{k} {v}' for k, v in sorted(s['counters'].items())) or 'no events'}"
        )
        if args.out:
            print(f"wrote           {args.out}")
    return 0


def _spend_cpu(ms: float) -> None:
    end = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < end:
        x += 1


def _run_summary(args, client, seed: int, events: int, digits: int, first_frame_s, wall: float) -> dict:
    from pxdbg.shared.geometry import FRAME_PIXELS

    stats = client.stats
    return {
        "events": events,
        "model": str(client.identity),
        "seed": seed,
        "wall_s": wall,
        "first_frame_s": first_frame_s,
        "frames_per_s": events / wall,
        "wait_ms_p50": 1e3 * stats.wait_percentile(50),
        "wait_ms_p99": 1e3 * stats.wait_percentile(99),
        "wait_ms_total": 1e3 * stats.wait_total_s,
        "digits_per_frame": digits / max(events, 1),
        "wire_bytes_per_frame": client.wire_bytes / max(client.counters["frames_received"], 1),
        "wire_bytes_per_digit": client.wire_bytes / max(client.wire_digits, 1),
        "dense_bytes_per_frame": FRAME_PIXELS,
        "max_in_flight": client.max_in_flight,
        "counters": dict(client.counters),
    }
