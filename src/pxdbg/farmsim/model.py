"""The simulated farm: producers, consumers and a network in virtual time, driving the project's own policy code.

Every decision is made by the module the real farm runs: which frames to ask of whom
(:func:`pxdbg.consumer.credits.plan`), which stragglers to hedge and whether the budget allows
(:func:`~pxdbg.consumer.credits.hedges`, :class:`~pxdbg.consumer.credits.HedgeBudget`), whether a producer is
suspect, lost, drained, slow or stalled (:mod:`pxdbg.consumer.health`), which producers a consumer uses
(:class:`pxdbg.consumer.subset.Subset`), and in which order a producer works and whom it admits
(:class:`pxdbg.producer.queues.ConsumerQueues`). What is modelled instead of run: the model's time per frame (a
distribution), the event loop's work per event, the network (a fixed one-way delay; a partition drops messages)
and heartbeats (a ping every interval at a per-consumer phase: the time of the last answer is computed, not sent
as messages, which is what lets 100,000 consumers run).
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from dataclasses import dataclass, field

from pxdbg.consumer import credits, health
from pxdbg.consumer.health import ALIVE, CONNECTING, DRAINING, QUARANTINED, HealthPolicy, PeerHealth
from pxdbg.consumer.subset import DEFAULT_HOLD_S, Subset
from pxdbg.producer.queues import ConsumerQueues, LimitError

#: The real client's constants (``pxdbg.consumer.client``), repeated here because importing the client would
#: import zmq for nothing: the hedge bucket's size and the latency assumed before any frame arrived.
HEDGE_BURST = 4.0
INITIAL_LATENCY_S = 1.0
#: Seconds between two looks of an idle consumer's loop (the client's poll tick); frames arriving wake it sooner.
POLL_S = 0.05
#: Seconds a rendezvous entry of a producer that stopped heartbeating stays (three 2 s heartbeats).
STALE_S = 6.0
#: Seconds a producer keeps a consumer that sends nothing (the server's ``client_timeout``).
CLIENT_TIMEOUT_S = 30.0
#: Seconds between two looks at every producer's health when nothing is due sooner (a loss or silence is looked
#: at when its verdict falls due, see ``Sim._cut``; what remains, the stall and the end of a quarantine, is slow).
JUDGE_S = 1.0
#: Seconds after the last consumer started before the steady state is measured (their windows fill first).
SETTLE_S = 5.0


@dataclass
class Settings:
    """One simulated farm. Times in seconds."""

    producers: int = 3
    consumers: int = 30
    frame_s: float = 1 / 21.5  # a normal producer's model time per frame
    frame_cv: float = 0.2  # spread of it (lognormal)
    batch_overhead_s: float = 0.0  # fixed model time per batch (a GPU's launch cost)
    max_batch: int = 8
    slow_fraction: float = 0.0  # producers far slower than the others (stragglers)
    slow_factor: float = 10.0
    cpu_fraction: float = 0.0  # producers on CPUs (a GPU/CPU mix), ``cpu_factor`` times slower
    cpu_factor: float = 5.0
    work_s: float = 0.0  # the event loop's work per event
    load: float | None = None  # if given, work_s is set so the consumers ask this fraction of the farm's capacity
    events: int | None = 40  # per consumer; None: they run until ``duration``
    duration: float = 60.0
    ramp_s: float = 0.0  # consumers start spread over this many seconds
    net_s: float = 0.0005  # one-way network delay
    prefetch: int = 16
    hedge_budget: float = 0.05
    hedge_burst: float = HEDGE_BURST
    max_producers: int = 8  # subset size
    hold_s: float = DEFAULT_HOLD_S  # how long a dropped producer stays out of a subset
    max_consumers: int = 256  # the producer's admission limit
    max_pending: int = 4096
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    # faults: (time, fraction) / (time, fraction, seconds)
    lose: tuple[float, float] | None = None
    partition: tuple[float, float, float] | None = None
    rolling_restart: tuple[float, float, float] | None = None  # (start, wave fraction, seconds down per producer)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.producers < 1 or self.consumers < 1:
            raise ValueError("a farm needs at least one producer and one consumer")
        if self.load is not None:
            if not 0 < self.load:
                raise ValueError(f"load must be a positive fraction of the capacity, got {self.load!r}")
            self.work_s = max(0.0, self.consumers / (self.load * self.capacity()))

    def speeds(self) -> list[float]:
        """Each producer's mean model time per frame (stragglers first, then CPUs, then the rest)."""
        slow = round(self.slow_fraction * self.producers)
        cpu = round(self.cpu_fraction * self.producers)
        out = []
        for i in range(self.producers):
            factor = self.slow_factor if i < slow else self.cpu_factor if i < slow + cpu else 1.0
            out.append(self.frame_s * factor)
        return out

    def capacity(self) -> float:
        """Frames per second of the whole farm with full batches."""
        b = self.max_batch
        return sum(b / (self.batch_overhead_s + b * s) for s in self.speeds())


class Producer:
    """A ``pxdbg produce``: the real :class:`ConsumerQueues`, a model that takes ``frame_s`` per frame."""

    def __init__(self, sim: Sim, index: int, frame_s: float) -> None:
        self.sim = sim
        self.endpoint = f"tcp://10.0.{index // 250}.{index % 250 + 1}:5555"
        self.frame_s = frame_s
        self.up = True
        self.reachable = True
        self.draining = False
        self.outage = 0  # bumped whenever it stops answering: pending heartbeat verdicts check it
        self.epoch = 0  # bumped on a crash: its batch in progress is lost
        self.busy = False
        self.busy_s = 0.0
        self.frames = 0
        self.clients: set[Consumer] = set()  # consumers that hold a connection to it
        self.max_connections = 0
        self.refused = 0
        self._new_queues()

    def _new_queues(self) -> None:
        s = self.sim.settings
        self.queues = ConsumerQueues(max_consumers=s.max_consumers, max_pending=s.max_pending)

    def hello(self, cid: bytes, now: float) -> bool:
        try:
            self.queues.add(cid, cid.decode(), None, 1, now)
        except LimitError:
            self.refused += 1
            return False
        self.max_connections = max(self.max_connections, len(self.queues))
        return True

    def request(self, cid: bytes, indices: list[int], now: float) -> None:
        if not (self.up and self.reachable):
            return
        consumer = self.queues.get(cid)
        if consumer is None:
            return
        consumer.active = True
        self.queues.submit(cid, 0, indices)
        self.kick(now)

    def kick(self, now: float) -> None:
        if self.busy or not self.up:
            return
        batch = self.queues.take(self.sim.settings.max_batch, timeout=0)
        if not batch:
            if self.draining:
                self.sim.drained(self, now)
            return
        s = self.sim.settings
        rng = self.sim.rng
        sigma = math.sqrt(math.log(1 + s.frame_cv**2))
        spent = s.batch_overhead_s + sum(self.frame_s * rng.lognormvariate(-sigma * sigma / 2, sigma) for _ in batch)
        self.busy = True
        self.busy_s += spent
        self.sim.at(now + spent, self.finish, (batch, self.epoch))

    def finish(self, now: float, arg) -> None:
        batch, epoch = arg
        if epoch != self.epoch:
            return
        self.busy = False
        for work in batch:
            if self.queues.to_outbox(work.cid, work.serial, [work.cid, b""]):
                self.queues.sent_one(self.queues.get(work.cid))
                self.frames += 1
                if self.reachable:
                    self.sim.at(now + self.sim.settings.net_s, self.sim.deliver, (self, work.cid, work.idx))
                else:
                    self.sim.frames_lost += 1
        self.kick(now)

    def forget(self, now: float, cid) -> None:
        self.queues.remove(cid)


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
        chosen = set(self.subset.choose(self.sim.registered(), now))
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
        producer.clients.add(self)
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
        producer.clients.discard(self)
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
        suspects = set() if trust_all else set(self.hedged.values())
        usable = sum(p.state != QUARANTINED for p in self.peers.values())
        share = -(-self.sim.settings.prefetch // max(1, usable))
        prefetch = self.sim.settings.prefetch
        out = []
        for ep in eps:
            p = self.peers[ep]
            limit = (
                1
                if ep in suspects or (p.slow_strikes and not trust_all)
                else min(prefetch, p.cap, share if p.seconds_per_frame is None else prefetch)
            )
            oldest = now - min(p.outstanding.values()) if p.outstanding else 0.0
            out.append(credits.PeerLoad(ep, len(p.outstanding), p.seconds_per_frame, limit, p.latency, oldest))
        return out

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
        urgent = [ep for ep in working if self.peers[ep].state == DRAINING or self.peers[ep].silent_since]
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
            self.budget.tokens if self.budget.ratio > 0 else 0.0,
            factor=s.policy.straggler_factor,
            min_age=s.policy.straggler_min_s,
            initial_latency=INITIAL_LATENCY_S,
            urgent=urgent,
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
                    self.budget.tokens -= 1
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


class Sim:
    """The event queue and the farm. :meth:`run` returns the measurements (see :mod:`pxdbg.farmsim.report`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self._queue: list = []
        self._seq = 0
        self.now = 0.0
        self.producers = [Producer(self, i, s) for i, s in enumerate(settings.speeds())]
        self.by_endpoint = {p.endpoint: p for p in self.producers}
        self._registered = [p.endpoint for p in self.producers]
        self.counters: dict[str, int] = {
            k: 0
            for k in (
                "hedged",
                "hedges_won",
                "hedges_wasted",
                "hedges_skipped_budget",
                "duplicates_dropped",
                "frames_reissued",
                "producer_failures",
                "producers_drained",
                "producers_quarantined",
                "producers_silent",
                "admissions_refused",
            )
        }
        self.frames_lost = 0
        self.finished = 0
        self.wait_total = 0.0  # every wait, the warm-up's too (the emulated farm's "stall")
        self.restart_window: tuple[float, float] | None = None
        self.heals: list[tuple[float, Producer, int]] = []  # (when, which, frames it had made by then)
        #: from when the figures count: the whole run for a fixed number of events, else once every consumer
        #: started and filled its window
        self.measure_from = 0.0 if settings.events is not None else settings.ramp_s + SETTLE_S
        self.at_start: dict = {"counters": dict(self.counters), "frames_lost": 0, "busy": [0.0] * len(self.producers)}
        self.waits = array("d")  # every wait once warm, seconds
        self.wait_times = array("d")  # when each of them ended
        self.consumed_at = array("d")  # when each frame was taken by an event loop
        self.faults: list[tuple[str, float]] = []
        self.recovered: float | None = None
        self.consumers = [
            Consumer(self, i, self.rng.uniform(0, settings.ramp_s) if settings.ramp_s else 0.0)
            for i in range(settings.consumers)
        ]

    # -- the event queue --------------------------------------------------------------------------------------
    def at(self, when: float, fn, arg=None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, arg))

    def _snapshot(self, now: float, _=None) -> None:
        self.at_start = {
            "counters": dict(self.counters),
            "frames_lost": self.frames_lost,
            "busy": [p.busy_s for p in self.producers],
            "frames": [p.frames for p in self.producers],
        }

    def registered(self) -> list[str]:
        return self._registered

    def _register(self, now: float) -> None:
        """The rendezvous directory changed: every consumer sees it at its next re-read (within a second)."""
        self._registered = [p.endpoint for p in self.producers if p.up and not p.draining and p.registered]
        for c in self.consumers:
            if c.finished is None:
                self.at(now + self.rng.uniform(0, 1.0), c.refresh)

    def request(self, now: float, arg) -> None:
        producer, cid, indices = arg
        producer.request(cid, indices, now)

    def deliver(self, now: float, arg) -> None:
        producer, cid, idx = arg
        index = int(cid.split(b":")[0])
        self.consumers[index].on_frame(now, producer.endpoint, cid, idx)

    def record_wait(self, consumer: Consumer, wait: float, now: float) -> None:
        self.consumed_at.append(now)
        self.wait_total += wait
        if consumer.consumed >= self.settings.prefetch:  # as ClientStats(warmup=prefetch)
            self.waits.append(wait)
            self.wait_times.append(now)

    # -- faults -----------------------------------------------------------------------------------------------
    def _pick(self, fraction: float) -> list[Producer]:
        n = max(1, round(fraction * len(self.producers)))
        healthy = [p for p in self.producers if p.frame_s == self.settings.frame_s] or self.producers
        return self.rng.sample(healthy, min(n, len(healthy)))

    def _cut(self, producer: Producer, now: float) -> None:
        """It stops answering: each consumer's heartbeat rule notices (a look when its verdicts fall due)."""
        policy = self.settings.policy
        for c in producer.clients:
            if producer.endpoint in c.peers:
                c.heard(producer.endpoint, now)
        producer.reachable = False
        producer.outage += 1
        for c in list(producer.clients):
            peer = c.peers.get(producer.endpoint)
            if peer is None:
                continue
            for after in (policy.heartbeat_interval + policy.pong_timeout, policy.heartbeat_timeout):
                self.at(peer.last_recv + after + 1e-6, c.judge)

    def crash(self, now: float, producer: Producer) -> None:
        self._cut(producer, now)
        producer.up = False
        producer.epoch += 1
        producer.busy = False
        self.at(now + STALE_S, self._stale, producer)

    def _stale(self, now: float, producer: Producer) -> None:
        producer.registered = False
        self._register(now)

    def partition(self, now: float, arg) -> None:
        producer, seconds = arg
        self._cut(producer, now)
        self.at(now + STALE_S, self._stale, producer)
        self.at(now + seconds, self.heal, producer)

    def heal(self, now: float, producer: Producer) -> None:
        self.heals.append((now, producer, producer.frames))
        producer.reachable = True
        producer.registered = True
        self._register(now)
        self._answer(producer, now)

    def _answer(self, producer: Producer, now: float) -> None:
        """Consumers that wait for it say hello again at their next heartbeat."""
        hb = self.settings.policy.heartbeat_interval
        for c in list(producer.clients):
            if producer.endpoint in c.peers:
                self.at(now + ((c.phase - now) % hb), c.hello, producer.endpoint)

    def drain(self, now: float, arg) -> None:
        """A clean shutdown (``scancel``, a rolling restart): the goodbye names the frames it will not make."""
        producer, down_s = arg
        producer.draining = True
        producer.restart_after = down_s
        dropped = producer.queues.close()
        self._register(now)
        for c in list(producer.clients):
            cid = c.cids.get(producer.endpoint)
            self.at(now + self.settings.net_s, self._goodbye, (c, producer, dropped.get(cid, {}).get(0, [])))
        producer.kick(now)

    def _goodbye(self, now: float, arg) -> None:
        c, producer, dropped = arg
        peer = c.peers.get(producer.endpoint)
        if peer is None or peer.state != ALIVE:
            return
        self.counters["frames_reissued"] += len(health.on_draining(peer, dropped, "it shuts down"))
        c._unhedge(producer.endpoint)
        # not held out of the subset: a drain is a restart, and its rendezvous entry (gone while it is down)
        # says when it is back, so its consumers return to it and load spreads as before
        c.refresh(now)

    def drained(self, producer: Producer, now: float) -> None:
        """Its last frame went out: it exits (consumers count it drained) and comes back after its restart time."""
        producer.up = False
        producer.draining = False
        for c in list(producer.clients):
            peer = c.peers.get(producer.endpoint)
            if peer is not None:
                self.at(now + self.settings.net_s, self._final, (c, producer.endpoint))
        if producer.restart_after is not None:
            self.at(now + producer.restart_after, self.restart, producer)

    def _final(self, now: float, arg) -> None:
        c, ep = arg
        if ep in c.peers:
            self.counters["producers_drained"] += 1
            c.disconnect(ep, now)
            c.refresh(now)

    def restart(self, now: float, producer: Producer) -> None:
        producer._new_queues()
        producer.up = producer.reachable = producer.registered = True
        producer.epoch += 1
        producer.clients = {c for c in producer.clients if producer.endpoint in c.peers}
        self._register(now)
        self._answer(producer, now)

    def _schedule_faults(self) -> None:
        s = self.settings
        if s.lose is not None:
            t, fraction = s.lose
            for p in self._pick(fraction):
                self.at(t, self.crash, p)
            self.faults.append(("lose", t))
        if s.partition is not None:
            t, fraction, seconds = s.partition
            for p in self._pick(fraction):
                self.at(t, self.partition, (p, seconds))
            self.faults.append(("partition", t))
        if s.rolling_restart is not None:
            t, wave, down = s.rolling_restart
            order = list(self.producers)
            self.rng.shuffle(order)
            per_wave = max(1, round(wave * len(order)))
            # the next wave starts once the previous one is back (its down time plus a second to drain)
            for w in range(0, len(order), per_wave):
                for p in order[w : w + per_wave]:
                    self.at(t + (w // per_wave) * (down + 1.0), self.drain, (p, down))
            waves = -(-len(order) // per_wave)
            self.faults.append(("rolling_restart", t))
            self.restart_window = (t, t + waves * (down + 1.0))

    # -- running ----------------------------------------------------------------------------------------------
    def run(self) -> Sim:
        for p in self.producers:
            p.registered = True
            p.restart_after = None
        for c in self.consumers:
            self.at(c.start, c.refresh)
        self._schedule_faults()
        if self.measure_from > 0:
            self.at(self.measure_from, self._snapshot)
        horizon = self.settings.duration
        queue = self._queue
        while queue:
            when, _, fn, arg = heapq.heappop(queue)
            if when > horizon:
                break
            self.now = when
            fn(when, arg)
            if self.finished == len(self.consumers):
                break
        self.end = min(self.now, horizon) if queue else self.now
        return self
