"""What a simulated run measured: throughput against capacity, fairness, waits, utilisation, hedges, recovery."""

from __future__ import annotations

import math

import numpy as np

from pxdbg.farmsim.model import Sim

#: Width of the throughput bins, seconds (recovery is judged on them).
BIN_S = 1.0


def jain(values) -> float:
    """Jain's fairness index of ``values``: 1 when all are equal, 1/n when one gets everything."""
    x = np.asarray(values, dtype=float)
    if not len(x) or not x.any():
        return math.nan
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


def _pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def measure(sim: Sim, scale: float = 1.0) -> dict:
    """The figures of ``sim`` (``scale``: full farm / simulated slice, for the farm-wide rates)."""
    s = sim.settings
    end = sim.end
    consumed = np.frombuffer(sim.consumed_at, dtype=float) if len(sim.consumed_at) else np.zeros(0)
    first_fault = min((t for _, t in sim.faults), default=end)
    # steady state: from sim.measure_from (every consumer started and filled its window) to the first fault
    warm = sim.measure_from
    steady_end = first_fault if first_fault > warm + BIN_S else end
    n_steady = int(((consumed >= warm) & (consumed < steady_end)).sum())
    steady_rate = n_steady / max(steady_end - warm, 1e-9) if s.events is None else len(consumed) / max(end, 1e-9)
    # counters over the measured part only (the start's window fill and hedge bursts are not the steady state)
    base = sim.at_start
    counters = {k: v - base["counters"].get(k, 0) for k, v in sim.counters.items()}
    frames_lost = sim.frames_lost - base["frames_lost"]
    span = max(end - warm, 1e-9)
    capacity = s.capacity()
    offered = s.consumers / s.work_s if s.work_s > 0 else math.inf
    deliverable = min(capacity, offered)

    # each consumer's frames per second over its own run (from its start to its end, or the run's)
    rates = [c.consumed / max((c.finished if c.finished is not None else end) - c.start, 1e-9) for c in sim.consumers]
    waits = np.frombuffer(sim.waits, dtype=float) if len(sim.waits) else np.zeros(0)
    times = np.frombuffer(sim.wait_times, dtype=float) if len(sim.wait_times) else np.zeros(0)
    calm = waits[times < first_fault] if sim.faults else waits

    made_before = base.get("frames", [0] * len(sim.producers))
    generated = sum(p.frames - m for p, m in zip(sim.producers, made_before))
    used = int((consumed >= warm).sum())
    busy = [(p.busy_s - b) / span for p, b in zip(sim.producers, base["busy"])]
    connections = [p.max_connections for p in sim.producers]
    hb = s.policy.heartbeat_interval
    out = {
        "producers": s.producers,
        "consumers": s.consumers,
        "virtual_s": round(end, 3),
        "capacity_fps": capacity * scale,
        "offered_fps": offered * scale,
        "throughput_fps": steady_rate * scale,
        "throughput_of_deliverable": steady_rate / deliverable if deliverable else math.nan,
        "throughput_of_capacity": steady_rate / capacity,
        "consumer_rate_min_max": min(rates) / max(rates) if max(rates) > 0 else math.nan,
        "jain": jain(rates),
        "wait_total_per_consumer_s": sim.wait_total / len(sim.consumers),
        "wait_p50_s": _pct(calm, 50),
        "wait_p99_s": _pct(calm, 99),
        "utilisation_mean": float(np.mean(busy)),
        "utilisation_min": float(np.min(busy)),
        "utilisation_max": float(np.max(busy)),
        "measured_from_s": warm,
        "frames_consumed": len(consumed),
        "frames_generated": generated,
        # made for nothing: second copies, and frames for a connection the consumer had already dropped
        "waste": (counters["duplicates_dropped"] + frames_lost) / generated if generated else 0.0,
        "hedge_waste": counters["duplicates_dropped"] / max(1, used),
        "connections_per_producer_mean": float(np.mean(connections)),
        "connections_per_producer_max": int(max(connections)),
        "heartbeats_per_producer_s": float(np.mean(connections)) / hb,
        "counters": counters,
        "counters_whole_run": dict(sim.counters),
    }
    for kind, t in sim.faults:
        after = waits[times >= t]
        out[f"{kind}_at_s"] = t
        out[f"{kind}_wait_p99_s"] = _pct(after, 99)
        out[f"{kind}_recovery_s"] = recovery(consumed, t, end, n_steady / max(steady_end - warm, 1e-9))
    if sim.restart_window is not None:
        a, b = sim.restart_window
        during = waits[(times >= a) & (times < b)]
        out["rolling_restart_s"] = b - a
        out["rolling_restart_wait_p99_s"] = _pct(during, 99)
        # waits below a millisecond count as one (a fault-free p99 of 0 would make any ratio infinite)
        floor = 1e-3
        out["rolling_restart_p99_vs_fault_free"] = (
            max(_pct(during, 99), floor) / max(out["wait_p99_s"], floor) if len(calm) and len(during) else math.nan
        )
    return out


def recovery(consumed: np.ndarray, fault: float, end: float, baseline: float) -> float | None:
    """Seconds from ``fault`` until the consumers' rate over a bin is back to 95 % of ``baseline`` and stays there
    for the next bin too (None: it never was within the run)."""
    if baseline <= 0 or end - fault < 2 * BIN_S:
        return None
    edges = np.arange(fault, end, BIN_S)
    counts, _ = np.histogram(consumed, bins=np.append(edges, edges[-1] + BIN_S))
    ok = counts / BIN_S >= 0.95 * baseline
    for i in range(len(ok) - 1):
        if ok[i] and ok[i + 1]:
            return float(i * BIN_S)
    return None


ROWS = (
    ("measured from", lambda m: f"{m['measured_from_s']:.0f} s (virtual) to the end"),
    ("throughput", lambda m: f"{m['throughput_fps']:,.0f} frames/s"),
    ("  of what the farm can deliver", lambda m: f"{m['throughput_of_deliverable']:.1%} (goal >= 95 %)"),
    ("  of the farm's capacity", lambda m: f"{m['throughput_of_capacity']:.1%}"),
    ("per-consumer rate min/max", lambda m: f"{m['consumer_rate_min_max']:.2f}"),
    ("Jain's fairness index", lambda m: f"{m['jain']:.3f} (goal >= 0.95)"),
    ("event loop's total wait per consumer", lambda m: f"{m['wait_total_per_consumer_s']:.2f} s"),
    ("consumer wait p50 / p99", lambda m: f"{1e3 * m['wait_p50_s']:.1f} / {1e3 * m['wait_p99_s']:.1f} ms"),
    (
        "producer utilisation mean (min-max)",
        lambda m: f"{m['utilisation_mean']:.0%} ({m['utilisation_min']:.0%}-{m['utilisation_max']:.0%})",
    ),
    (
        "hedges / won / duplicates",
        lambda m: "{hedged} / {hedges_won} / {duplicates_dropped}".format(**m["counters"]),
    ),
    ("hedge waste (duplicates / frames)", lambda m: f"{m['hedge_waste']:.2%} (goal < 2 %)"),
    ("all waste (made, not used)", lambda m: f"{m['waste']:.2%}"),
    (
        "connections per producer mean / max",
        lambda m: f"{m['connections_per_producer_mean']:.0f} / {m['connections_per_producer_max']}",
    ),
    ("heartbeats per producer", lambda m: f"{m['heartbeats_per_producer_s']:,.0f} /s"),
)


def table(m: dict) -> str:
    """The figures as a two-column text table."""
    rows = [(name, fmt(m)) for name, fmt in ROWS]
    for kind in ("lose", "partition", "rolling_restart"):
        if f"{kind}_at_s" in m:
            rec = m[f"{kind}_recovery_s"]
            rows.append(
                (
                    f"{kind.replace('_', ' ')} at {m[f'{kind}_at_s']:.0f} s",
                    f"recovery {'never' if rec is None else f'{rec:.0f} s'}, "
                    f"p99 wait after it {1e3 * m[f'{kind}_wait_p99_s']:.1f} ms",
                )
            )
    if "rolling_restart_wait_p99_s" in m:
        rows.append(
            (
                "p99 wait during the rolling restart",
                f"{1e3 * m['rolling_restart_wait_p99_s']:.1f} ms = "
                f"{m['rolling_restart_p99_vs_fault_free']:.2f}x fault-free (goal <= 2x)",
            )
        )
    c = m["counters"]
    rows.append(
        (
            "producers lost / drained / quarantined",
            f"{c['producer_failures']} / {c['producers_drained']} / {c['producers_quarantined']} (consumer verdicts); "
            f"{c['admissions_refused']} hellos refused (producer full)",
        )
    )
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
