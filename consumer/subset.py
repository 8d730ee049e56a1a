"""Which producers one consumer uses: a bounded, seeded subset of those its endpoint string resolves to.

A consumer that connected to every producer of a large farm would cost each producer a connection and a
heartbeat per consumer (1,000 producers x 10,000 jobs: ten million of each) and would hit libzmq's socket
limit itself. :class:`Subset` keeps at most ``max_producers`` of them.

Each consumer ranks every endpoint by a hash of (its seed, its key, the endpoint) (rendezvous or
highest-random-weight hashing, Thaler and Ravishankar 1998) and uses the best-ranked ones that are not held
out. So the choice is reproducible from the seed, spread evenly over the farm (every producer is in about
``consumers * max_producers / producers`` subsets), and stable: a producer that is lost, quarantined or drains
is replaced by the next in the consumer's own ranking (one member changes), and a producer that joins displaces
only the consumers that rank it first. Rotation (``rotate_s``) moves the window down the ranking one member at a
time, so load spreads as consumers come and go without any consumer changing its whole subset at once. Load
balance within the subset is the credit planner's job (:func:`pxdbg.consumer.credits.plan` gives each frame to
the member that would deliver it soonest: the "power of d choices" of Mitzenmacher over the subset).

Pure: no sockets, no clock (``now`` is passed in), so the farm simulator drives the same object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

#: Producers one consumer uses by default: the farm simulator's choice for a large farm (~100 consumers per
#: producer at 90 % load; README, "At scale"): two, and the credit planner picks between them ("power of two
#: choices"). A consumer that alone needs more than two producers' rate (a fast event loop on a small farm) is
#: given a larger bound.
DEFAULT_MAX_PRODUCERS = 2
#: Seconds a dropped producer (lost, quarantined, drained) stays out of the subset before it may rank in again.
DEFAULT_HOLD_S = 60.0
#: Each further drop of the same producer doubles its hold, at most this many times (60 s -> 64 min).
MAX_HOLD_DOUBLINGS = 6


def _rank(seed: int, key: str, endpoint: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{key}\0{endpoint}".encode(), digest_size=8).digest()


class Subset:
    """At most ``max_producers`` of the endpoints a consumer knows, chosen by rendezvous hashing.

    ``key`` names the consumer (its host and process, or its Slurm array task); ``seed`` makes the choice
    reproducible (the same seed and key give the same subset). ``hold_s``: seconds a producer passed to
    :meth:`drop` stays out. ``rotate_s``: every that many seconds the window moves one place down the ranking
    (None: never). Times are in seconds on any monotonic clock.
    """

    def __init__(
        self,
        max_producers: int = DEFAULT_MAX_PRODUCERS,
        *,
        key: str = "",
        seed: int = 0,
        hold_s: float = DEFAULT_HOLD_S,
        rotate_s: float | None = None,
    ) -> None:
        if isinstance(max_producers, bool) or not isinstance(max_producers, int) or max_producers < 1:
            raise ValueError(f"max_producers must be a positive integer, got {max_producers!r}")
        if not hold_s >= 0:
            raise ValueError(f"hold_s must be a non-negative number of seconds, got {hold_s!r}")
        if rotate_s is not None and not rotate_s > 0:
            raise ValueError(f"rotate_s must be a positive number of seconds or None, got {rotate_s!r}")
        self.max_producers = max_producers
        self.key = str(key)
        self.seed = int(seed)
        self.hold_s = float(hold_s)
        self.rotate_s = rotate_s
        self._held: dict[str, float] = {}  # endpoint -> until when it stays out
        self._drops: dict[str, int] = {}  # endpoint -> times it was dropped (its hold doubles each time)
        self._ranks: dict[str, bytes] = {}  # cache: endpoint -> its rank for this consumer
        self._order: list[str] = []  # every known endpoint, best-ranked first
        self._known: frozenset[str] = frozenset()
        self._start: float | None = None  # the first call's time: rotation counts from there
        self.current: list[str] = []
        self.changes = 0  # members replaced since the start (the first choice not counted)

    def _ranked(self, endpoints: Iterable[str]) -> list[str]:
        known = frozenset(endpoints)
        if known != self._known:
            for ep in known - self._ranks.keys():
                self._ranks[ep] = _rank(self.seed, self.key, ep)
            for ep in self._ranks.keys() - known:
                del self._ranks[ep]
            self._order = sorted(known, key=self._ranks.__getitem__)
            self._known = known
        return self._order

    def choose(self, endpoints: Sequence[str], now: float) -> list[str]:
        """The endpoints to use now: the best-ranked ``max_producers`` of ``endpoints`` that are not held out,
        starting ``rotation`` places down the ranking (held-out ones fill up only where too few are left). Call
        it with every fresh resolution."""
        if self._start is None:
            self._start = now
        self._held = {ep: until for ep, until in self._held.items() if until > now}
        ranked = self._ranked(endpoints)
        order = [ep for ep in ranked if ep not in self._held]
        if order:
            shift = self.rotation(now) % len(order)
            order = order[shift:] + order[:shift]
        # held-out producers rank after all others: where there are too few others (a small farm), a lost
        # producer stays in the subset and is taken back as soon as it answers
        chosen = (order + [ep for ep in ranked if ep in self._held])[: self.max_producers]
        if self.current:
            self.changes += len(set(chosen) - set(self.current))
        self.current = chosen
        return list(chosen)

    def rotation(self, now: float) -> int:
        """How many places the window has moved down the ranking by ``now``."""
        if self.rotate_s is None or self._start is None:
            return 0
        return int((now - self._start) // self.rotate_s)

    def drop(self, endpoint: str, now: float) -> None:
        """``endpoint`` was lost or quarantined, or never answered: leave it out for ``hold_s`` seconds, twice as
        long each further time (at most :data:`MAX_HOLD_DOUBLINGS` doublings); the next :meth:`choose` puts the
        next-ranked producer in its place, if there is one. The doubling keeps a walk through many dead entries
        moving: were every hold equal, the first ones dropped would rank in again before a walk longer than
        ``hold_s`` reached the live producers ranked after them."""
        n = self._drops.get(endpoint, 0)
        self._drops[endpoint] = n + 1
        self._held[endpoint] = now + self.hold_s * 2 ** min(n, MAX_HOLD_DOUBLINGS)

    def held(self, now: float) -> list[str]:
        """The endpoints held out at ``now``."""
        return sorted(ep for ep, until in self._held.items() if until > now)
