"""Which peers a producer stops serving, socket-free and given ``now``: the per-peer rate limit on ``status``
requests, the ban on senders of oversized messages, and the verdicts that forget a consumer (it said hello and
nothing else, went silent, or stopped reading its frames). :class:`~pxdbg.producer.server.ProducerServer` applies
them on its network thread."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from pxdbg.producer.queues import Consumer
from pxdbg.shared.errors import ConfigError

#: ``status`` requests answered per peer: per second, and at once (the rest are dropped and counted).
STATUS_PER_S = 5.0
STATUS_BURST = 10.0
#: Seconds a peer that sent an oversized message is ignored; most such peers remembered.
BAN_S = 60.0
MAX_BANNED = 4096


def check_seconds(**settings: float) -> None:
    """Raise :class:`ConfigError` naming the first of ``settings`` that is not a finite number of seconds >= 0."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ConfigError(f"{name} must be a finite number of seconds, at least 0, got {value!r}")


class RateLimit:
    """A token bucket per peer (``rate`` per second, ``burst`` at once), for at most ``max_peers`` peers (the
    least recently seen are forgotten: a forgotten peer starts with a full bucket)."""

    def __init__(self, rate: float, burst: float, max_peers: int = 4096) -> None:
        self.rate, self.burst, self.max_peers = rate, burst, max_peers
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)

    def allow(self, peer: bytes, now: float) -> bool:
        tokens, at = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1
        self._buckets[peer] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed


class BanList:
    """Peers ignored for ``ban_s`` seconds (senders of oversized messages), at most ``max_peers`` of them (the
    oldest bans are forgotten first)."""

    def __init__(self, ban_s: float = BAN_S, max_peers: int = MAX_BANNED) -> None:
        self.ban_s, self.max_peers = ban_s, max_peers
        self._until: OrderedDict[bytes, float] = OrderedDict()  # peer -> ignored until (monotonic)

    def ban(self, peer: bytes, now: float) -> None:
        self._until[peer] = now + self.ban_s
        self._until.move_to_end(peer)
        while len(self._until) > self.max_peers:
            self._until.popitem(last=False)

    def banned(self, peer: bytes, now: float) -> bool:
        """Whether ``peer`` is still ignored; a ban that ran out is forgotten."""
        until = self._until.get(peer)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[peer]
        return False

    def __len__(self) -> int:
        return len(self._until)


class Verdict(NamedTuple):
    """A consumer to forget: why (for the log), the counter it adds to, and whether it is logged sparsely (peers
    that only say hello come in floods; the log must not)."""

    cid: bytes
    why: str
    counter: str
    sparse: bool = False


def stale_consumers(
    consumers: Iterable[Consumer], now: float, hello_timeout: float, client_timeout: float, stall_timeout: float
) -> list[Verdict]:
    """The consumers to forget at ``now``: those that said hello and nothing else (no ping, no request) for
    ``hello_timeout`` seconds, sent nothing for ``client_timeout`` seconds, or whose socket accepted nothing for
    ``stall_timeout`` seconds while frames waited for them."""
    out = []
    for c in consumers:
        if not c.active and now - c.admitted > hello_timeout:
            out.append(
                Verdict(c.cid, f"it said hello and nothing else for {now - c.admitted:.0f} s", "consumers_idle", True)
            )
        elif now - c.last_seen > client_timeout:
            out.append(Verdict(c.cid, f"silent for {now - c.last_seen:.0f} s", "consumers_expired"))
        elif c.blocked_since is not None and now - c.blocked_since > stall_timeout:
            out.append(Verdict(c.cid, f"it read no frame for {now - c.blocked_since:.0f} s", "consumers_not_reading"))
    return out
