"""Credit planning and straggler detection: pure functions of the consumer's bookkeeping, no sockets.

The consumer keeps at most ``prefetch`` frames requested but not consumed (its credit window: frames
``start .. start + prefetch - 1``, never past the last frame it will hand out). :func:`plan` gives each frame
of the window that is neither received nor requested to the producer that would deliver it soonest, judged by
how many frames each producer already has to deliver and how long it recently took per frame: a producer ten
times slower than the others gets a frame only where its delivery still comes in time. :func:`overdue` names
the frames outstanding much longer than their producer's recent latency (stragglers), which the consumer asks
of a second producer; frames are deterministic, so the first copy wins and the other is dropped.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class PeerLoad:
    """What the planner knows of one producer that may be asked for frames now."""

    key: Hashable
    #: frames requested from it that have not arrived (late copies of frames already received included)
    outstanding: int
    #: its recent time per delivered frame, seconds; None while unknown (the others' median is assumed)
    seconds_per_frame: float | None
    #: most frames it may have outstanding (1 for a producer under suspicion of being slow or mute)
    limit: int


def window(start: int, prefetch: int, end: int | None) -> range:
    """The frames the credit window covers: ``start .. start + prefetch - 1``, clipped before ``end``."""
    stop = start + prefetch if end is None else min(start + prefetch, end)
    return range(start, max(start, stop))


def plan(start: int, prefetch: int, end: int | None, taken: Iterable[int], peers: list[PeerLoad]) -> dict:
    """{peer key: [frame indices]}: who to ask for each frame of the window not in ``taken`` (received or
    requested). Frames go in order, each to the producer with the earliest expected delivery
    ``(outstanding + 1) * seconds_per_frame``, ties to the one with less outstanding, then to the earlier peer."""
    taken = set(taken)
    todo = [i for i in window(start, prefetch, end) if i not in taken]
    if not todo or not peers:
        return {}
    known = [p.seconds_per_frame for p in peers if p.seconds_per_frame]
    default = median(known) if known else 1.0
    load = {p.key: p.outstanding for p in peers}
    out: dict = {}
    for idx in todo:
        best, best_rank = None, None
        for order, p in enumerate(peers):
            if load[p.key] >= p.limit:
                continue
            rank = ((load[p.key] + 1) * (p.seconds_per_frame or default), load[p.key], order)
            if best_rank is None or rank < best_rank:
                best, best_rank = p, rank
        if best is None:  # every producer is at its limit
            break
        load[best.key] += 1
        out.setdefault(best.key, []).append(idx)
    return out


def overdue(
    now: float,
    copies: dict,
    latency: dict,
    *,
    factor: float,
    min_age: float,
    max_copies: int = 2,
    initial_latency: float = 1.0,
) -> list[int]:
    """Frames to ask of another producer, in order.

    ``copies``: {frame index: [(peer key, requested at), ...]} for the frames of the window not yet received;
    ``latency``: {peer key: recent seconds from request to arrival, or None}. A frame is overdue when it has
    fewer than ``max_copies`` requests and its first one is older than ``factor`` times its producer's latency
    (the other producers' median latency for a producer that delivered nothing yet, ``initial_latency`` when
    none did), and at least ``min_age``.
    """
    known = [v for v in latency.values() if v]
    fallback = median(known) if known else initial_latency
    out = []
    for idx in sorted(copies):
        requests = copies[idx]
        if not requests or len(requests) >= max_copies:
            continue
        key, sent = min(requests, key=lambda r: r[1])
        lat = latency.get(key) or fallback
        if now - sent > max(min_age, factor * lat):
            out.append(idx)
    return out
