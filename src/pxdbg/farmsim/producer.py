"""A simulated ``pxdbg produce``: the producer's own :class:`ConsumerQueues`, a model of given speed."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pxdbg.producer.queues import ConsumerQueues, LimitError

if TYPE_CHECKING:
    from pxdbg.farmsim.consumer import Consumer
    from pxdbg.farmsim.model import Sim


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
        # consumers that hold a connection to it, in the order they connected (a dict: a set's order would follow
        # the objects' addresses, and the run would differ between two runs of the same seed)
        self.clients: dict[Consumer, None] = {}
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
