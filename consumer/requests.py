"""Which producer the consumer's I/O thread asks for which frame: the credit window and hedged requests.

Each pass fills the window (:func:`pxdbg.consumer.credits.plan`: at most ``prefetch`` frames requested but not
consumed, each to the producer that would deliver it soonest) and asks a second producer for the stragglers
(:func:`pxdbg.consumer.credits.hedges`, within the hedge budget; a draining or silent producer's frames at
once). :class:`RequestPlanner` is a part of :class:`pxdbg.consumer.io_loop.ConsumerIO`, split off to keep each
file to one job; the decisions themselves are the pure functions of :mod:`pxdbg.consumer.credits`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from pxdbg.consumer import credits
from pxdbg.consumer.health import HealthPolicy
from pxdbg.consumer.peers import ALIVE, DRAINING, QUARANTINED, Peer, request_message

if TYPE_CHECKING:
    from pxdbg.consumer.client import ReorderBuffer

log = logging.getLogger("pxdbg.consumer")
#: Seconds between two looks for overdue frames.
HEDGE_CHECK_S = 0.01
#: The latency assumed before any producer delivered a frame (no hedge is made on a guess before 4x that).
INITIAL_LATENCY_S = credits.INITIAL_LATENCY_S


class RequestPlanner:
    """The request side of :class:`~pxdbg.consumer.io_loop.ConsumerIO` (see the module's docstring)."""

    # the loop's state the planner uses (set by ConsumerIO.__init__)
    peers: dict[str, Peer]
    seed: int
    prefetch: int
    end: int | None
    policy: HealthPolicy
    counters: Counter
    _buffer: ReorderBuffer
    _budget: credits.HedgeBudget
    _hedged: dict[int, str]
    _ties: dict[int, float]
    _skipped: dict[str, set[int]]
    _next_hedge: float

    if TYPE_CHECKING:  # the loop's send this planner calls (defined by ConsumerIO)

        def _try_send(self, peer: Peer, msg: bytes, now: float) -> bool: ...

    def _loads(self, peers: list[Peer], now: float = 0.0, trust_all: bool = False) -> list[credits.PeerLoad]:
        """What the planner knows of ``peers``. A producer under suspicion of being slow takes one frame at a
        time (unless ``trust_all``: the frames of a silent or draining producer must go somewhere, and being
        overtaken by a producer that then went silent is no sign of slowness); one whose speed is not known yet
        (it delivered nothing) at most its share of the window among the producers not quarantined, so the
        producer that welcomes first does not take the whole window."""
        suspects = set(self._hedged.values())
        usable = sum(p.state != QUARANTINED for p in self.peers.values())
        return [
            credits.peer_load(
                p.endpoint,
                p.health,
                now,
                prefetch=self.prefetch,
                usable=usable,
                suspect=p.endpoint in suspects,
                trust_all=trust_all,
            )
            for p in peers
        ]

    def _hedge(self, now: float) -> None:
        """Ask a second producer for the stragglers of the window (:func:`credits.hedges`: overdue at their first
        producer beyond the others' typical latency, to a producer with spare credit, within the budget)."""
        if now < self._next_hedge:  # a look every few milliseconds is enough (the window may be 4096 frames)
            return
        self._next_hedge = now + HEDGE_CHECK_S
        working = [p for p in self.peers.values() if p.state in (ALIVE, DRAINING)]
        alive = [p for p in working if p.state == ALIVE]
        if len(alive) < 2 and not (alive and len(working) > len(alive)):
            return
        with self._buffer.cv:
            start = self._buffer.next
            ready = set(self._buffer.ready)
        stop = start + self.prefetch
        for skipped in self._skipped.values():
            skipped.difference_update([i for i in skipped if i < start])
        copies: dict[int, list] = {}
        for p in working:
            for idx, sent in p.health.outstanding.items():
                if start <= idx < stop and idx not in ready:
                    copies.setdefault(idx, []).append((p.endpoint, sent))
        if not copies:
            return
        # a silent producer's frames are asked elsewhere at once (it missed a pong: a partition or a stopped
        # process, not slowness); a draining one's once late by the others' latency (it sends what it started)
        roles = credits.hedge_roles({p.endpoint: p.health for p in working})
        if self._budget.ratio == 0 and not roles.reissue:
            return
        latency = {p.endpoint: p.health.latency for p in working}
        decided = credits.hedges(
            now,
            copies,
            latency,
            self._loads([p for p in alive if not p.health.silent_since], now, trust_all=bool(roles.reissue)),
            self._budget,
            factor=self.policy.straggler_factor,
            min_age=self.policy.straggler_min_s,
            initial_latency=INITIAL_LATENCY_S,
            urgent=roles.silent,
            draining=roles.leaving,
            unsettled=roles.unsettled,
        )
        for name, late in (("hedges_skipped_budget", decided.over_budget), ("hedges_skipped_busy", decided.no_spare)):
            fresh = set(late) - self._skipped[name]
            if fresh:
                self._skipped[name].update(fresh)
                self.counters[name] += len(fresh)
        for ep, indices in decided.asked.items():
            peer = self.peers[ep]
            if not self._try_send(peer, request_message(self.seed, indices), now):
                continue
            peer.health.note_requested(indices, now)
            for i in indices:
                if decided.first[i] in roles.reissue:  # a re-issue the draining producer asked for, not a hedge
                    self.counters["frames_reissued"] += 1
                else:
                    self._hedged[i] = decided.first[i]
                    self.counters["hedged"] += 1
            log.info("frame(s) %s overdue; asked %s too", indices, ep)

    def _assign_credits(self, now: float) -> None:
        alive = [p for p in self.peers.values() if p.state == ALIVE and not p.health.silent_since]
        if not alive:
            return
        with self._buffer.cv:
            start = self._buffer.next
            taken = set(self._buffer.ready)
        for p in self.peers.values():
            taken.update(p.health.outstanding)
        taken.update(self._ties)  # copies that disagree, held while a third producer may still answer
        plan = credits.plan(start, self.prefetch, self.end, taken, self._loads(alive))
        for p in alive:
            indices = plan.get(p.endpoint)
            if indices and self._try_send(p, request_message(self.seed, indices), now):
                p.health.note_requested(indices, now)

    def _account(self) -> None:
        with self._buffer.cv:
            start = self._buffer.next
            pending = {i for p in self.peers.values() for i in p.health.outstanding if i >= start}
            self._buffer.in_flight = len(self._buffer.ready) + len(pending - self._buffer.ready.keys())
            self._buffer.max_in_flight = max(self._buffer.max_in_flight, self._buffer.in_flight)
