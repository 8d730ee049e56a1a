"""What a simulated farm is made of (:class:`Settings`) and the constants the simulation shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from pxdbg.consumer.credits import HEDGE_BURST
from pxdbg.consumer.health import HealthPolicy
from pxdbg.consumer.subset import DEFAULT_HOLD_S

#: The real client's constants (``pxdbg.consumer.client``), repeated here because importing the client would
#: import zmq for nothing: the hedge bucket's size and the latency assumed before any frame arrived.
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
