"""Credit planning and hedged requests: pure functions of the consumer's bookkeeping, no sockets.

The consumer keeps at most ``prefetch`` frames requested but not consumed (its credit window: frames
``start .. start + prefetch - 1``, never past the last frame it will hand out). :func:`plan` gives each frame
of the window that is neither received nor requested to the producer that would deliver it soonest, judged by
how many frames each producer already has to deliver and how long it recently took per frame: a producer ten
times slower than the others gets a frame only where its delivery still comes in time.

:func:`hedges` decides which frames to ask of a second producer (hedged requests, as in Dean and Barroso,
"The Tail at Scale"): a frame is a straggler when it is outstanding well beyond its producer's recent latency
*and* beyond the typical latency of the other producers (:func:`overdue`), so a farm that is uniformly slow
(saturated) hedges nothing; the copy goes only to a producer with spare credit (:func:`has_spare`: not at its
limit, not behind with what it owes itself); and only within a budget (:class:`HedgeBudget`, a token bucket
filled by a fraction of the frames received). Frames are deterministic, so the first copy wins and the other
is dropped.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from statistics import median

from pxdbg.consumer.health import DRAINING, PeerHealth, settled, typical_latency

#: Seconds from request to arrival assumed for a producer while no producer has delivered a frame.
INITIAL_LATENCY_S = 1.0
#: Hedge tokens a consumer starts with (and holds at most): :class:`HedgeBudget`'s ``burst``.
HEDGE_BURST = 4.0


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
    #: its recent seconds from request to arrival; None while unknown
    latency: float | None = None
    #: age in seconds of the oldest frame it owes (0 when it owes none)
    oldest_age: float = 0.0


def peer_load(
    key: Hashable,
    health,
    now: float,
    *,
    prefetch: int,
    usable: int,
    suspect: bool,
    trust_all: bool = False,
) -> PeerLoad:
    """What the planner knows of one producer from its :class:`pxdbg.consumer.health.PeerHealth`-like state
    (``outstanding``, ``seconds_per_frame``, ``latency``, ``slow_strikes``, ``cap``). A producer under suspicion of
    being slow (``suspect``: a frame of it was hedged; or overtaken in a row) takes one frame at a time, unless
    ``trust_all`` (the frames of a silent or draining producer must go somewhere, and being overtaken by a producer
    that then went silent is no sign of slowness); one whose speed is not known yet (it delivered nothing) at most
    its share of the window among the ``usable`` producers (not quarantined), so the producer that welcomes first
    does not take the whole window."""
    share = -(-prefetch // max(1, usable))
    if not trust_all and (suspect or health.slow_strikes):
        limit = 1
    else:
        limit = min(prefetch, health.cap, share if health.seconds_per_frame is None else prefetch)
    oldest = now - min(health.outstanding.values()) if health.outstanding else 0.0
    return PeerLoad(key, len(health.outstanding), health.seconds_per_frame, limit, health.latency, oldest)


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


@dataclass(frozen=True)
class HedgeRoles:
    """What :func:`hedges` needs to know of the producers beyond their latency (see :func:`overdue`)."""

    silent: list  # missed a pong: their frames are asked elsewhere after min_age
    leaving: list  # draining (and not silent): their frames once late by the others' latency
    unsettled: list  # latency from a few frames: it makes no other producer a straggler

    @property
    def reissue(self) -> list:
        """The producers whose frames are re-issued (no hedge token) rather than hedged."""
        return self.silent + self.leaving


def hedge_roles(healths: Mapping[Hashable, PeerHealth]) -> HedgeRoles:
    """The roles of the producers ``healths`` ({key: its health}) in :func:`hedges`, as the client and the
    farm simulator both ask them."""
    return HedgeRoles(
        silent=[k for k, h in healths.items() if h.silent_since],
        leaving=[k for k, h in healths.items() if h.state == DRAINING and not h.silent_since],
        unsettled=[k for k, h in healths.items() if not settled(h)],
    )


def overdue(
    now: float,
    copies: dict,
    latency: dict,
    *,
    factor: float,
    min_age: float,
    max_copies: int = 2,
    initial_latency: float = 1.0,
    urgent: Iterable = (),
    draining: Iterable = (),
    unsettled: Iterable = (),
) -> list[int]:
    """Stragglers: frames to ask of another producer, in order.

    ``copies``: {frame index: [(peer key, requested at), ...]} for the frames of the window not yet received;
    ``latency``: {peer key: recent seconds from request to arrival, or None}. A frame with fewer than
    ``max_copies`` requests is overdue when its first request is older than ``min_age`` and than ``factor``
    times both its producer's latency and the typical latency of the other producers
    (:func:`pxdbg.consumer.health.typical_latency`). A producer that
    delivered nothing yet is judged by the others' latency; ``initial_latency`` stands in when nobody delivered.
    A producer whose own latency is more than ``factor`` times the others' is a straggler as a whole: its frames
    are judged by the others' latency alone. So a farm that is uniformly slow (every producer saturated) makes
    no stragglers, while a producer far slower than the others, or one that hangs, does. Frames held by an
    ``urgent`` producer (silent: it missed a pong, a partition or a stopped process) are overdue after ``min_age``.
    A ``draining`` producer's are judged by the others' latency alone: it sends the batches it started (what it
    had not started, its goodbye listed, and those are asked elsewhere at once), so asking them again after
    ``min_age`` made a duplicate of nearly every one. An ``unsettled`` producer's latency (it rests on a few
    frames: :data:`pxdbg.consumer.health.SETTLED_FRAMES`) makes no other producer a straggler as a whole: one new to
    this consumer answers its first requests before its queue fills, and that made the established members look
    slow (in the simulated rolling restart, where each drain moves consumers to new members, 2 % of the frames
    were made twice).
    """
    urgent, draining, unsettled = set(urgent), set(draining), set(unsettled)
    excluded = urgent | draining
    typical = {key: typical_latency(v for k, v in latency.items() if k != key and k not in excluded) for key in latency}
    evidence_of = typical  # the others' latency that can make a producer a straggler as a whole
    if unsettled & latency.keys():
        excluded |= unsettled
        evidence_of = {
            key: typical_latency(v for k, v in latency.items() if k != key and k not in excluded) for key in latency
        }
    out = []
    for idx in sorted(copies):
        requests = copies[idx]
        if not requests or len(requests) >= max_copies:
            continue
        key, sent = min(requests, key=lambda r: r[1])
        if key in urgent:
            limit = min_age
        else:
            others, evidence = typical.get(key), evidence_of.get(key)
            own = latency.get(key) or others or initial_latency
            if others and key in draining:  # leaving: judged by the others
                own = others
            elif evidence and own > factor * evidence:  # far slower than the others: a straggler as a whole
                own = evidence
            limit = max(min_age, factor * own, factor * (others or own))
        if now - sent > limit:
            out.append(idx)
    return out


def has_spare(peer: PeerLoad) -> bool:
    """Whether ``peer`` may take a hedged copy: below its limit, and not behind itself (it owes nothing, or the
    oldest frame it owes is younger than its own recent latency)."""
    if peer.outstanding >= peer.limit:
        return False
    if peer.outstanding == 0:
        return True
    return peer.latency is not None and peer.oldest_age <= peer.latency


@dataclass
class HedgeBudget:
    """A token bucket: ``ratio`` of a token per frame received, at most ``burst`` tokens (full at the start);
    one hedged request costs one token. Bounds the extra work hedging asks of the farm to about ``ratio``."""

    ratio: float = 0.05
    burst: float = 4.0
    tokens: float | None = None

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = self.burst if self.ratio > 0 else 0.0

    def earn(self, frames: int = 1) -> None:
        assert self.tokens is not None  # __post_init__ fills it
        self.tokens = min(self.burst, self.tokens + self.ratio * frames)

    def spend(self) -> bool:
        """Take one token for a hedged request; False (nothing taken) when less than one is left."""
        assert self.tokens is not None  # __post_init__ fills it
        if self.tokens < 1 - 1e-9:
            return False
        self.tokens -= 1
        return True


@dataclass
class HedgePlan:
    """What :func:`hedges` decided: {peer key: [frame indices]} to ask, {frame index: the producer it was first
    asked of}, and the overdue frames left alone because no producer had spare credit or the budget was spent."""

    asked: dict = field(default_factory=dict)
    first: dict = field(default_factory=dict)
    no_spare: list = field(default_factory=list)
    over_budget: list = field(default_factory=list)
    #: tokens taken from the budget for the hedges asked
    tokens_spent: int = 0


def hedges(
    now: float,
    copies: dict,
    latency: dict,
    candidates: list[PeerLoad],
    budget: HedgeBudget,
    *,
    factor: float,
    min_age: float,
    initial_latency: float = 1.0,
    urgent: Iterable = (),
    draining: Iterable = (),
    unsettled: Iterable = (),
) -> HedgePlan:
    """Which stragglers to ask of which other producer now (see :func:`overdue` for ``copies``, ``latency``,
    ``urgent``). ``candidates``: the producers that may be asked (alive). Each overdue frame goes, like
    :func:`plan`, to the candidate with the earliest expected delivery among those that do not hold it and
    have spare credit (:func:`has_spare`, counting what this pass gave them); each is paid for with a token
    taken from ``budget`` here (the one place that spends it), except a copy of an ``urgent`` or ``draining``
    producer's frame (a re-issue, not a hedge), which any candidate below its limit takes, spare credit or not."""
    draining = set(draining)
    late = overdue(
        now,
        copies,
        latency,
        factor=factor,
        min_age=min_age,
        initial_latency=initial_latency,
        urgent=urgent,
        draining=draining,
        unsettled=unsettled,
    )
    reissue = set(urgent) | draining  # their frames will not come, or are late by the others' measure
    out = HedgePlan()
    added: dict = {}
    for idx in late:
        holders = {key for key, _ in copies[idx]}
        first = min(copies[idx], key=lambda r: r[1])[0]
        spare = []
        for p in candidates:
            if p.key in holders:
                continue
            n = added.get(p.key, 0)
            q = PeerLoad(p.key, p.outstanding + n, p.seconds_per_frame, p.limit, p.latency, p.oldest_age)
            # an urgent frame will not come from its producer: any producer below its limit takes it, busy or not
            if has_spare(q) or (first in reissue and q.outstanding < q.limit):
                spare.append(q)
        if not spare:
            out.no_spare.append(idx)
            continue
        if first not in reissue:
            if not budget.spend():
                out.over_budget.append(idx)
                continue
            out.tokens_spent += 1
        (key,) = plan(idx, 1, None, (), spare)
        added[key] = added.get(key, 0) + 1
        out.asked.setdefault(key, []).append(idx)
        out.first[idx] = first
    return out
