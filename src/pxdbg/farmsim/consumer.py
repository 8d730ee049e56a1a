"""A simulated simulation job: an event loop that takes frame after frame, deciding with the consumer's own
credit, hedge, health and subset code."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pxdbg.consumer import credits, health
from pxdbg.consumer.credits import INITIAL_LATENCY_S
from pxdbg.consumer.health import ALIVE, CONNECTING, DRAINING, QUARANTINED, PeerHealth
from pxdbg.consumer.subset import Subset
from pxdbg.farmsim.settings import CLIENT_TIMEOUT_S, JUDGE_S, POLL_S

if TYPE_CHECKING:
    from pxdbg.farmsim.model import Sim


class Consumer:
    """One simulation job: an event loop that takes frame after frame, with a consumer's real policy."""

    def __init__(self, sim: Sim, index: int, start: float) -> None:
        s = sim.settings
        self.sim = sim
        self.index = index
        self.subset = Subset(s.max_producers, key=f"job-{index}", seed=s.seed, hold_s=s.hold_s)
        self.peers: dict[str, PeerHealth] = {}
        self.cids: dict[str, bytes] = {}
        self.serial = 0
        self.phase = sim.rng.uniform(0, s.policy.heartbeat_interval)  # when its pings go out
        self.next = 0
        self.end = s.events
        self.ready: set[int] = set()
        self.hedged: dict[int, str] = {}
        self.budget = credits.HedgeBudget(ratio=s.hedge_budget, burst=s.hedge_burst)
        self.waiting_since: float | None = start
        self.start = start
        self.finished: float | None = None
        self.check_at = math.inf
        self.judged = 0.0
        self.skipped: set[int] = set()  # overdue frames the budget left alone (counted once)
        self.consumed = 0

    # -- connections ------------------------------------------------------------------------------------------
    def refresh(self, now: float, _=None) -> None:
        """Re-resolve the endpoint string: the subset decides whom to use."""
        if self.finished is not None:
            return
        chosen = self.subset.choose(self.sim.registered(), now)  # a list: its order, not a set's, drives events
        for ep in [ep for ep in self.peers if ep not in chosen]:
            if self.peers[ep].state != DRAINING:  # a draining one may still deliver what it owes
                self.disconnect(ep, now)
        for ep in chosen:
            if ep not in self.peers:
                self.connect(ep, now)
        self.assign(now)

    def connect(self, ep: str, now: float) -> None:
        self.serial += 1
        self.peers[ep] = PeerHealth()
        self.cids[ep] = f"{self.index}:{self.serial}".encode()
        producer = self.sim.by_endpoint[ep]
        producer.clients[self] = None
        self.sim.at(now + self.sim.settings.net_s, self.hello, ep)

    def hello(self, now: float, ep: str) -> None:
        peer = self.peers.get(ep)
        if peer is None or peer.state != CONNECTING:
            return
        producer = self.sim.by_endpoint[ep]
        if not (producer.up and producer.reachable and not producer.draining):
            return  # asked again when it answers (Sim.reachable)
        if not producer.hello(self.cids[ep], now):  # full: use another producer instead
            self.subset.drop(ep, now)
            self.sim.counters["admissions_refused"] += 1
            self.sim.at(now + 1.0, self.refresh)
            return
        welcome = now + self.sim.settings.net_s
        health.on_message(peer, welcome)
        health.on_welcome(peer, welcome)
        self.sim.at(welcome, self._welcomed, ep)

    def _welcomed(self, now: float, ep: str) -> None:
        self.assign(now)

    def disconnect(self, ep: str, now: float) -> None:
        peer = self.peers.pop(ep)
        peer.forget_work()
        self._unhedge(ep)
        cid = self.cids.pop(ep)
        producer = self.sim.by_endpoint[ep]
        producer.clients.pop(self, None)
        # a producer that hears the bye forgets the consumer at once; one that is cut off, after its timeout
        later = self.sim.settings.net_s if producer.reachable else CLIENT_TIMEOUT_S
        self.sim.at(now + later, producer.forget, cid)

    def _unhedge(self, ep: str) -> None:
        for idx in [i for i, first in self.hedged.items() if first == ep]:
            del self.hedged[idx]

    def heard(self, ep: str, now: float) -> None:
        """A reachable producer answered the latest ping (sent at this consumer's phase)."""
        producer = self.sim.by_endpoint[ep]
        if producer.up and producer.reachable:
            hb = self.sim.settings.policy.heartbeat_interval
            last = now - ((now - self.phase) % hb) + 2 * self.sim.settings.net_s
            if last > now:  # the latest ping's answer is still on its way: the one before it counts
                last -= hb
            health.on_message(self.peers[ep], max(last, self.peers[ep].last_recv))

    def judge(self, now: float, _=None) -> None:
        """The loop's periodic look at each producer (:func:`health.assess`)."""
        if self.finished is not None:
            return
        self.judged = now
        policy = self.sim.settings.policy
        peers = list(self.peers.values())
        changed = False
        for ep, peer in list(self.peers.items()):
            self.heard(ep, now)
            verdict = health.assess(peer, now, policy, peers)
            if verdict.kind in (health.LOST, health.DRAINED):
                health.lose(peer, verdict.reason, drained=verdict.kind == health.DRAINED)
                self._unhedge(ep)
                self.sim.counters["producers_drained" if verdict.kind == health.DRAINED else "producer_failures"] += 1
                self.subset.drop(ep, now)
                changed = True
            elif verdict.quarantine_now:
                self.sim.counters["frames_reissued"] += len(health.quarantine(peer, now, policy, verdict.reason))
                self._unhedge(ep)
                self.sim.counters["producers_quarantined"] += 1
                self.subset.drop(ep, now)
                changed = True
            elif verdict.kind == health.SUSPECT:
                self.sim.counters["producers_silent"] += 1
            elif verdict.kind == health.QUARANTINE_OVER:
                health.restart(peer)
                self.sim.at(now, self.hello, ep)
        if changed:
            self.refresh(now)
        self.hedge(now)
        self.assign(now)

    # -- frames -----------------------------------------------------------------------------------------------
    def on_frame(self, now: float, ep: str, cid: bytes, idx: int) -> None:
        peer = self.peers.get(ep)
        if peer is None or self.cids.get(ep) != cid or peer.state == QUARANTINED:
            self.sim.frames_lost += 1  # for a connection already dropped
            return
        health.on_message(peer, now)
        requested_at = peer.outstanding.pop(idx, None)
        if requested_at is None:
            self.sim.frames_lost += 1
            return
        policy = self.sim.settings.policy
        peer.note_frame(now, requested_at)
        if idx < self.next or idx in self.ready:  # the other copy of a straggler came first
            self.sim.counters["duplicates_dropped"] += 1
            return
        first = self.hedged.pop(idx, None)
        if first is not None and first != ep:
            self.sim.counters["hedges_won"] += 1
            slow = self.peers.get(first)
            if slow is not None:
                verdict = health.on_overtaken(slow, now, policy, self.peers.values())
                if verdict.quarantine_now:
                    self.sim.counters["frames_reissued"] += len(health.quarantine(slow, now, policy, verdict.reason))
                    self._unhedge(first)
                    self.sim.counters["producers_quarantined"] += 1
                    self.subset.drop(first, now)
                    self.refresh(now)
        elif first is None:
            health.on_own_frame(peer, now - requested_at, policy, self.peers.values())
        else:
            self.sim.counters["hedges_wasted"] += 1
        self.budget.earn(1)
        self.ready.add(idx)
        if self.waiting_since is not None and idx == self.next:
            self.consume(now)
        else:
            self.assign(now)

    def consume(self, now: float) -> None:
        wait = now - self.waiting_since
        self.sim.record_wait(self, wait, now)
        self.ready.discard(self.next)
        self.next += 1
        self.consumed += 1
        self.waiting_since = None
        if self.end is not None and self.next >= self.end:
            self.finish(now)
            return
        self.sim.at(now + self.sim.settings.work_s, self.worked)
        self.assign(now)  # the window moved: the client's loop asks for the frame that entered it

    def worked(self, now: float, _=None) -> None:
        if self.finished is not None:
            return
        self.waiting_since = now
        if self.next in self.ready:
            self.consume(now)

    def finish(self, now: float) -> None:
        self.finished = now
        self.sim.finished += 1
        for ep in list(self.peers):
            self.disconnect(ep, now)

    # -- the real policy ---------------------------------------------------------------------------------------
    def loads(self, eps: list[str], now: float, trust_all: bool = False) -> list[credits.PeerLoad]:
        """What the planner knows (as the client's ``_loads``): a suspect producer takes one frame at a time, one
        of unknown speed at most its share of the window."""
        suspects = set(self.hedged.values())
        usable = sum(p.state != QUARANTINED for p in self.peers.values())
        return [
            credits.peer_load(
                ep,
                self.peers[ep],
                now,
                prefetch=self.sim.settings.prefetch,
                usable=usable,
                suspect=ep in suspects,
                trust_all=trust_all,
            )
            for ep in eps
        ]

    def assign(self, now: float) -> None:
        if self.finished is not None:
            return
        alive = [ep for ep, p in self.peers.items() if p.state == ALIVE and not p.silent_since]
        if alive:
            taken = set(self.ready)
            for p in self.peers.values():
                taken.update(p.outstanding)
            plan = credits.plan(self.next, self.sim.settings.prefetch, self.end, taken, self.loads(alive, now))
            for ep, indices in plan.items():
                self.send(ep, indices, now)
        self.schedule_check(now)

    def send(self, ep: str, indices: list[int], now: float) -> None:
        peer = self.peers[ep]
        for i in indices:
            peer.outstanding[i] = now
        producer = self.sim.by_endpoint[ep]
        if producer.reachable:
            self.sim.at(now + self.sim.settings.net_s, self.sim.request, (producer, self.cids[ep], indices))

    def hedge(self, now: float) -> None:
        """As the client's ``_hedge``: overdue frames to a second producer (:func:`credits.hedges`)."""
        s = self.sim.settings
        working = [ep for ep, p in self.peers.items() if p.state in (ALIVE, DRAINING)]
        alive = [ep for ep in working if self.peers[ep].state == ALIVE]
        if len(alive) < 2 and not (alive and len(working) > len(alive)):
            return
        stop = self.next + s.prefetch
        copies: dict[int, list] = {}
        for ep in working:
            for idx, sent in self.peers[ep].outstanding.items():
                if self.next <= idx < stop and idx not in self.ready:
                    copies.setdefault(idx, []).append((ep, sent))
        if not copies:
            return
        roles = credits.hedge_roles({ep: self.peers[ep] for ep in working})
        urgent = roles.reissue
        if self.budget.tokens < 1 and not urgent:
            # credits.hedges could only say "over budget" (what the client asks it every 10 ms in that case):
            # skipping the call changes no decision and is most of the simulator's time under load
            return
        latency = {ep: self.peers[ep].latency for ep in working}
        fit = [ep for ep in alive if not self.peers[ep].silent_since]
        candidates = self.loads(fit, now, trust_all=bool(urgent))
        decided = credits.hedges(
            now,
            copies,
            latency,
            candidates,
            self.budget,  # credits.hedges spends from it, as it does the client's
            factor=s.policy.straggler_factor,
            min_age=s.policy.straggler_min_s,
            initial_latency=INITIAL_LATENCY_S,
            urgent=roles.silent,
            draining=roles.leaving,
            unsettled=roles.unsettled,
        )
        fresh = set(decided.over_budget) - self.skipped
        if fresh:  # each overdue frame counted once, as the client does
            self.skipped = {i for i in self.skipped if i >= self.next} | fresh
            self.sim.counters["hedges_skipped_budget"] += len(fresh)
        for ep, indices in decided.asked.items():
            self.send(ep, indices, now)
            for i in indices:
                if decided.first[i] in urgent:
                    self.sim.counters["frames_reissued"] += 1
                else:
                    self.hedged[i] = decided.first[i]
                    self.sim.counters["hedged"] += 1

    def schedule_check(self, now: float) -> None:
        """The loop's next look: when the oldest frame owed could first be overdue, at least a poll tick away."""
        oldest = min((t for p in self.peers.values() for t in p.outstanding.values()), default=None)
        if oldest is None:
            return
        policy = self.sim.settings.policy
        known = [p.latency for p in self.peers.values() if p.latency]
        bound = max(policy.straggler_min_s, policy.straggler_factor * min(known, default=INITIAL_LATENCY_S))
        when = max(oldest + bound, now + POLL_S)
        if self.budget.tokens < 1 and not any(p.state == DRAINING or p.silent_since for p in self.peers.values()):
            when = max(when, self.judged + JUDGE_S)  # no hedge is possible before a frame earns a token
        if now < self.check_at <= when:
            return
        self.check_at = when
        self.sim.at(when, self._check, when)

    def _check(self, now: float, when: float) -> None:
        if when != self.check_at:
            return
        self.check_at = math.inf
        if now - self.judged >= JUDGE_S:  # the health rules need no faster look than the heartbeat's
            self.judge(now)
        else:
            self.hedge(now)
            self.assign(now)
