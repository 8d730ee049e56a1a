"""``pxdbg farm``: look at a producer farm, by asking its producers (status) or by summing its jobs' summaries
(jobs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from pxdbg.cli.common import seconds
from pxdbg.shared import discovery, security


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoints", help="tcp://host:port, dir:/rendezvous, dns://name:port, ... (comma-separated)")
    parser.add_argument(
        "--timeout", type=seconds, default=3.0, help="seconds to wait for the answers (default %(default)s)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between two looks, for frames/s (default %(default)s; 0: average since start)",
    )
    parser.add_argument("--watch", action="store_true", help="look again every --interval seconds until interrupted")
    parser.add_argument("--json", action="store_true", help="one JSON object per look (JSON lines with --watch)")
    security.add_client_arguments(parser)


def run_status(args: argparse.Namespace) -> int:
    from pxdbg.consumer.status import ask_status, status_rows

    source = discovery.parse(args.endpoints)
    options = security.options_from_args(args)
    earlier = None
    while True:
        endpoints = source.resolve()
        latest = ask_status(endpoints, args.timeout, options) if endpoints else None
        if latest is not None and not args.watch and args.interval > 0 and latest:
            time.sleep(args.interval)  # a second look at those that answered, for frames/s over the interval
            earlier = latest
            latest = earlier.updated(ask_status(list(earlier), args.timeout, options))
        if latest is None:
            print(f"no producers found through {source}", file=sys.stderr, flush=True)
        else:
            rows = status_rows(endpoints, latest, earlier, args.timeout)
            if args.json:
                print(json.dumps({"source": str(source), "time": time.time(), "producers": rows}), flush=True)
            else:
                if args.watch:
                    print(time.strftime("%Y-%m-%d %H:%M:%S"))
                _print_status_table(rows, source, args.timeout)
        if not args.watch:
            return 0 if latest else 1
        earlier = latest
        time.sleep(max(args.interval, 0.1))


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="+", help="directories searched for summaries (e.g. the Slurm recipe's $PXDBG_OUT)"
    )
    parser.add_argument("--pattern", default="*.json", help="file name pattern of the summaries (default %(default)s)")
    parser.add_argument("--prom", metavar="FILE", help="also write the totals in the Prometheus text format to FILE")
    parser.add_argument("--json", action="store_true", help="print the totals as JSON")


def run_jobs(args: argparse.Namespace) -> int:
    from pxdbg.consumer import summaries

    paths = [p for d in args.dirs for p in summaries.summary_files(d, args.pattern)]
    totals = summaries.collect(paths)
    if args.prom:
        summaries.write_atomically(args.prom, summaries.prometheus_text(totals))
    if args.json:
        print(json.dumps({**dataclasses.asdict(totals), "wait_buckets_s": summaries.WAIT_BUCKETS_S}))
    else:
        median, p90 = totals.wait_p99_quantile(0.5), totals.wait_p99_quantile(0.9)
        print(
            f"jobs            {totals.jobs} summaries read in {totals.read_s:.2f} s"
            f"{f' ({sum(totals.skipped.values())} files skipped)' if totals.skipped else ''}: "
            f"{totals.events} events, {totals.wait_s:.1f} s waiting for frames in {totals.wall_s:.1f} s of event loops"
        )
        if totals.jobs:
            print(f"wait p99        half of the jobs under {1e3 * median:g} ms, 90 % under {1e3 * p90:g} ms")
        busy = {k: v for k, v in sorted(totals.counters.items()) if v}
        print(f"counters        {', '.join(f'{k} {v}' for k, v in busy.items()) or 'all zero'}")
        for why, n in totals.skipped.most_common():
            print(f"skipped         {n} file(s): {why}")
        if args.prom:
            print(f"wrote           {args.prom}")
    return 0 if totals.jobs else 1


def _print_status_table(rows: list[dict], source, timeout: float) -> None:
    """The table, a summary line, then why each refused or rejected producer is so (silence needs no why)."""
    table = [("address", "identity", "device", "consumers", "frames/s", "pending", "uptime")]
    for row in rows:
        snap = row["snapshot"]
        if snap is None:
            table.append((row["endpoint"], "no answer" if row["state"] == "silent" else row["state"], *[""] * 5))
            continue
        up = int(min(snap["uptime_s"], 1e9))
        table.append(
            (
                row["endpoint"],
                snap["identity"],
                snap["device"],
                str(snap["consumers"]),
                f"{row['frames_per_s']:.1f}",
                str(snap["pending"]),
                f"{up // 3600}:{up // 60 % 60:02d}:{up % 60:02d}",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    count = {state: sum(r["state"] == state for r in rows) for state in ("answered", "refused", "bad reply", "silent")}
    others = [f"{n} {state}" for state, n in count.items() if n and state != "answered"]
    if count["silent"]:
        others[-1] += f" for {timeout:g} s"
    print(
        f"{count['answered']} of {len(rows)} producer(s) answered through {source}"
        f"{'; ' + ', '.join(others) if others else ''}"
    )
    for row in rows:
        if row["state"] in ("refused", "bad reply"):
            print(f"{row['endpoint']}: {row['state']}: {row['why']}")
    sys.stdout.flush()
