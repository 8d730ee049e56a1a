"""The simulated farm: its clock (an event queue in virtual time), its faults, and the producers and consumers
it runs, which drive the project's own policy code.

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
import random
from array import array

from pxdbg.consumer import health
from pxdbg.consumer.health import ALIVE
from pxdbg.farmsim.consumer import Consumer
from pxdbg.farmsim.producer import Producer
from pxdbg.farmsim.settings import SETTLE_S, STALE_S, Settings

__all__ = ["Consumer", "Producer", "Settings", "Sim"]


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
        producer.clients = {c: None for c in producer.clients if producer.endpoint in c.peers}
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
