"""A producer farm simulated in virtual time, driving the consumer's and the producer's own policy code.

``pxdbg farm simulate --producers 1000 --consumers 100000 --load 0.9 --events 0 --json`` (or ``python -m
pxdbg.farmsim``; :func:`add_arguments` and :func:`run` are its whole interface).

Large farms are simulated as a **slice**: ``--slice S`` of the ``--producers P`` with ``C * S / P`` of the
``--consumers C``, every one of them running the real policy. A consumer uses only its subset of
``--max-producers`` producers and a producer serves only the consumers whose subsets hold it, so what one producer
and one consumer see depends on the ratios (consumers per producer, subset size, the fraction of stragglers and of
failures), which a slice keeps, not on the farm's size; rates are scaled by ``P / S`` for the farm-wide figures.
See the README, "At scale".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from pxdbg.consumer.health import HealthPolicy
from pxdbg.farmsim.model import Settings, Sim
from pxdbg.farmsim.report import measure, table
from pxdbg.shared.errors import ConfigError

__all__ = ["Settings", "Sim", "add_arguments", "measure", "run", "simulate"]


def simulate(settings: Settings, farm_producers: int | None = None) -> dict:
    """Run one simulated farm; its figures (``farm_producers``: the farm the slice stands for)."""
    sim = Sim(settings).run()
    scale = (farm_producers or settings.producers) / settings.producers
    return measure(sim, scale)


def _fault(text: str, parts: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) != parts or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"--{what} takes {parts} non-negative numbers separated by ':', got {text[:80]!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``pxdbg farm simulate``."""
    g = p.add_argument_group("farm")
    g.add_argument("--producers", type=int, default=3, help="producers in the farm (3)")
    g.add_argument("--consumers", type=int, default=30, help="consumers (simulation jobs) in the farm (30)")
    g.add_argument(
        "--slice",
        type=int,
        default=None,
        help="simulate this many producers with their share of the consumers (default: all, at most 40)",
    )
    g.add_argument("--frame-ms", type=float, default=1000 / 21.5, help="a producer's model time per frame (46.5)")
    g.add_argument("--frame-cv", type=float, default=0.2, help="its spread, as a coefficient of variation (0.2)")
    g.add_argument("--batch", type=int, default=8, help="a producer's most frames per batch (8)")
    g.add_argument("--batch-overhead-ms", type=float, default=0.0, help="model time per batch on top (0)")
    g.add_argument("--slow-fraction", type=float, default=0.0, help="fraction of producers that are stragglers")
    g.add_argument("--slow-factor", type=float, default=10.0, help="how many times slower a straggler is (10)")
    g.add_argument("--cpu-fraction", type=float, default=0.0, help="fraction of producers on CPUs (0)")
    g.add_argument("--cpu-factor", type=float, default=5.0, help="how many times slower a CPU producer is (5)")
    g.add_argument("--max-consumers", type=int, default=256, help="a producer's admission limit (256)")
    j = p.add_argument_group("consumers")
    j.add_argument("--work-ms", type=float, default=0.0, help="the event loop's work per event (0)")
    j.add_argument("--load", type=float, default=None, help="set --work-ms to ask this fraction of capacity")
    j.add_argument("--events", type=int, default=40, help="events per consumer (40; 0: run for --duration)")
    j.add_argument("--duration", type=float, default=60.0, help="virtual seconds at most (60)")
    j.add_argument("--ramp", type=float, default=0.0, help="consumers start spread over this many seconds (0)")
    j.add_argument("--net-ms", type=float, default=0.5, help="one-way network delay (0.5)")
    j.add_argument("--prefetch", type=int, default=16, help="frames requested ahead per consumer (16)")
    j.add_argument("--hedge-budget", type=float, default=0.05, help="hedges per frame received (0.05)")
    j.add_argument(
        "--hedge-burst", type=float, default=4.0, help="hedges a consumer may make at once (4: the client's)"
    )
    j.add_argument("--max-producers", type=int, default=8, help="producers per consumer: the subset size (8)")
    j.add_argument("--heartbeat", type=float, default=0.5, help="heartbeat interval, seconds (0.5)")
    j.add_argument("--heartbeat-timeout", type=float, default=5.0, help="silence that means lost, seconds (5)")
    f = p.add_argument_group("faults (times in virtual seconds)")
    f.add_argument("--lose", metavar="T:FRACTION", help="that fraction of the producers crash at T")
    f.add_argument("--partition", metavar="T:FRACTION:SECONDS", help="cut off that fraction for SECONDS at T")
    f.add_argument(
        "--rolling-restart",
        metavar="T:WAVE:DOWN",
        help="from T restart every producer, a WAVE fraction at a time, each down DOWN s",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def settings_from(args: argparse.Namespace) -> tuple[Settings, int]:
    """The simulated slice's settings and the farm's producer count, from parsed options (ConfigError if bad)."""
    for name in ("producers", "consumers", "batch", "prefetch", "max_producers", "max_consumers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    size = args.slice if args.slice is not None else min(args.producers, 40)
    if not 1 <= size <= args.producers:
        raise ConfigError(f"--slice must be in 1..{args.producers} (the producers), got {size}")
    consumers = max(1, round(args.consumers * size / args.producers))
    try:
        policy = HealthPolicy(heartbeat_interval=args.heartbeat, heartbeat_timeout=args.heartbeat_timeout)
        settings = Settings(
            producers=size,
            consumers=consumers,
            frame_s=args.frame_ms / 1e3,
            frame_cv=args.frame_cv,
            batch_overhead_s=args.batch_overhead_ms / 1e3,
            max_batch=args.batch,
            slow_fraction=args.slow_fraction,
            slow_factor=args.slow_factor,
            cpu_fraction=args.cpu_fraction,
            cpu_factor=args.cpu_factor,
            work_s=args.work_ms / 1e3,
            load=args.load,
            events=args.events or None,
            duration=args.duration,
            ramp_s=args.ramp,
            net_s=args.net_ms / 1e3,
            prefetch=args.prefetch,
            hedge_budget=args.hedge_budget,
            hedge_burst=args.hedge_burst,
            max_producers=args.max_producers,
            max_consumers=args.max_consumers,
            policy=policy,
            lose=_fault(args.lose, 2, "lose") if args.lose else None,
            partition=_fault(args.partition, 3, "partition") if args.partition else None,
            rolling_restart=_fault(args.rolling_restart, 3, "rolling-restart") if args.rolling_restart else None,
            seed=args.seed,
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    return settings, args.producers


def _finite(value):
    """``value`` with every non-finite float (inf, nan) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """``pxdbg farm simulate``: simulate, print the table (or ``--json``); 0."""
    settings, farm = settings_from(args)
    started = time.perf_counter()
    figures = simulate(settings, farm)
    figures["farm_producers"] = farm
    figures["farm_consumers"] = args.consumers
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        # strict JSON: an unbounded figure (no offered load: consumers that never wait) is null, not Infinity
        json.dump(_finite(figures), sys.stdout, indent=1, default=float, allow_nan=False)
        print()
        return 0
    what = f"{farm} producers x {args.consumers} consumers"
    if settings.producers < farm:
        what += f" (simulated as a slice: {settings.producers} producers x {settings.consumers} consumers)"
    print(f"{what}, {figures['virtual_s']:.0f} virtual s in {figures['wall_s']:.0f} s")
    print(table(figures))
    return 0
