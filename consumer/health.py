"""How the consumer judges its producers: pure functions of a producer's state and ``now``, no sockets, no clock.

A :class:`PeerHealth` is what the consumer knows of one producer: its state, when it last sent anything, what
it owes and since when, how fast it delivers, how it misbehaved. The consumer's I/O thread (and the farm
simulator, which drives the same functions with a simulated clock) feeds it events and acts on the
:class:`Verdict` each function returns: quarantine it, count it lost, ask the others for its frames.

The rules (thresholds in :class:`HealthPolicy`):

- **lost**: nothing at all for ``heartbeat_timeout``; one that said it was draining and then went silent is
  counted as **drained** (it shut down as it said; its final goodbye was lost with its connection).
- **suspect**: it missed a pong (nothing for a heartbeat interval plus ``pong_timeout``): a partition or a stopped
  process, so the frames it owes are asked of the others at once, before the loss verdict.
- **stalled**: it answers heartbeats but has owed frames without delivering one for ``stall_timeout``.
- **slow**: ``max_strikes`` of its frames in a row came first from another producer after it was overdue, and
  its latency (or the age of what it owes) is more than ``straggler_factor`` times the others'
  :func:`typical_latency`. The verdict needs the producer to answer *after* it was first found slow: one that
  does not answer is cut off, not slow, and is left to the heartbeat timeout (lost, and taken back as soon as
  it answers, instead of quarantined).
- **quarantined**: slow, stalled, ``max_strikes`` bad messages, or a single message the consumer cannot forgive
  (a foreign frame, a wrong model, an error): left alone for ``quarantine_s``, doubled each time again (up to
  ``2 ** max_doublings``), or for the rest of the run; then **quarantine_over**: a fresh start (:func:`restart`).
  A lost producer is not quarantined: it is taken back as soon as it says welcome again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median

from pxdbg.shared.errors import ConfigError
from pxdbg.shared.validators import positive_seconds

CONNECTING, ALIVE, DRAINING, QUARANTINED = "connecting", "alive", "draining", "quarantined"
#: Weight of the newest sample in a producer's latency and time-per-frame averages.
EWMA = 0.3
#: Frames a producer must have delivered to this consumer before its latency can make another a straggler.
SETTLED_FRAMES = 5
#: Most cap a producer is given before it says otherwise (frames it takes from one consumer at once).
NO_CAP = 1 << 30

# verdict kinds
HEALTHY = "healthy"
SUSPECT = "suspect"
SLOW = "slow"
STALLED = "stalled"
LOST = "lost"
DRAINED = "drained"
QUARANTINE_OVER = "quarantine_over"
#: the verdicts that mean: quarantine it now (see :func:`quarantine`)
QUARANTINE_NOW = frozenset({SLOW, STALLED, QUARANTINED})


def settled(peer: PeerHealth) -> bool:
    """Whether ``peer``'s latency rests on :data:`SETTLED_FRAMES` frames or more (see
    :func:`pxdbg.consumer.credits.overdue`: an unsettled one makes no other producer a straggler as a whole)."""
    return peer.frames >= SETTLED_FRAMES


def typical_latency(values: Iterable[float | None]) -> float | None:
    """The typical latency of a group of producers: the median of the known (positive) values, None if none.

    The median, not the mean or the upper middle: with two other producers it is their mean, so one slow
    neighbour does not make a third producer look fast, and one fast neighbour does not make it look slow."""
    known = [v for v in values if v is not None and v > 0]
    return median(known) if known else None


@dataclass(frozen=True)
class HealthPolicy:
    """The thresholds of the rules above, in seconds unless said otherwise. Validated on construction."""

    heartbeat_interval: float = 0.5
    #: nothing at all for this long: lost (must exceed twice the interval)
    heartbeat_timeout: float = 5.0
    #: owes frames and delivers none for this long: quarantined
    stall_timeout: float = 60.0
    #: first quarantine; doubled each time again
    quarantine_s: float = 60.0
    #: bad messages (or frames overtaken in a row) before a quarantine (or a slow verdict)
    max_strikes: int = 3
    #: how many times a producer's latency, against the others', makes it a straggler (above 1)
    straggler_factor: float = 4.0
    #: a frame younger than this is never a straggler
    straggler_min_s: float = 0.05
    #: how many times a quarantine doubles at most
    max_doublings: int = 10
    #: seconds a pong may take before its producer is suspect (None: half the interval, at least 0.25 s)
    pong_timeout: float | None = None
    #: seconds between two warnings about a stall (None: half the stall timeout, at most 10 s)
    warn_interval: float | None = None

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "heartbeat_timeout", "stall_timeout", "quarantine_s", "straggler_min_s"):
            object.__setattr__(self, name, positive_seconds(name, getattr(self, name)))
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed twice the heartbeat_interval")
        factor = self.straggler_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 < factor < math.inf:
            raise ConfigError(f"straggler_factor must be a number above 1, got {factor!r}")
        object.__setattr__(self, "straggler_factor", float(factor))
        for name, least, what in (("max_strikes", 1, "positive"), ("max_doublings", 0, "non-negative")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be a {what} integer, got {value!r}")
        pong = max(0.25, self.heartbeat_interval / 2) if self.pong_timeout is None else self.pong_timeout
        object.__setattr__(self, "pong_timeout", positive_seconds("pong_timeout", pong))
        warn = min(10.0, self.stall_timeout / 2) if self.warn_interval is None else self.warn_interval
        object.__setattr__(self, "warn_interval", positive_seconds("warn_interval", warn))

    def quarantine_for(self, quarantines: int, for_run: bool = False) -> float:
        """Seconds of the ``quarantines``-th quarantine (1: the first): doubled each time, inf for the run."""
        if for_run:
            return math.inf
        return self.quarantine_s * 2 ** min(max(quarantines, 1) - 1, self.max_doublings)


@dataclass(eq=False)
class PeerHealth:
    """What the consumer knows of one producer's behaviour (times are the caller's clock, seconds)."""

    state: str = CONNECTING
    last_recv: float = 0.0  # any message (heartbeat liveness)
    last_sent: float = 0.0
    last_ping: float = 0.0
    #: when it was found to have missed a pong (0: it answers); its frames are then asked of the others at once
    silent_since: float = 0.0
    last_frame: float = 0.0  # a frame arrived (work liveness)
    #: frame index -> when it was requested from this producer
    outstanding: dict[int, float] = field(default_factory=dict)
    latency: float | None = None  # seconds from request to arrival, recent average
    seconds_per_frame: float | None = None  # seconds per delivered frame while busy, recent average
    strikes: int = 0  # bad messages since its welcome
    slow_strikes: int = 0  # frames in a row that another producer delivered first after it was overdue
    judged_slow_at: float = 0.0  # when its strikes were last found enough to call it slow (0: not yet)
    quarantines: int = 0
    quarantined_until: float = 0.0
    why: str = ""  # what it did, for the run's failure message
    rehellos: int = 0  # times in a row it forgot this consumer (rehello) without delivering a frame
    cap: int = NO_CAP  # most frames it takes from this consumer at once (learnt from its limit errors)
    frames: int = 0
    warned: float = 0.0  # when a stall was last reported

    def note_requested(self, indices: Iterable[int], now: float) -> None:
        """Frames ``indices`` were asked of it at ``now``."""
        for i in indices:
            self.outstanding[i] = now

    def note_frame(self, now: float, requested_at: float) -> None:
        """A frame it owed arrived: update its latency and time per frame."""
        latency = now - requested_at
        per_frame = now - max(self.last_frame, requested_at)
        self.latency = latency if self.latency is None else (1 - EWMA) * self.latency + EWMA * latency
        if self.seconds_per_frame is None:
            self.seconds_per_frame = per_frame
        else:
            self.seconds_per_frame = (1 - EWMA) * self.seconds_per_frame + EWMA * per_frame
        self.last_frame = now
        self.frames += 1
        self.rehellos = 0

    def busy_for(self, now: float) -> float:
        """Seconds it has owed frames without delivering one (0 when it owes nothing)."""
        if not self.outstanding:
            return 0.0
        return now - max(self.last_frame, min(self.outstanding.values()))

    def forget_work(self) -> list[int]:
        """Drop what it owes (the credit planner re-issues it elsewhere); return those frame indices."""
        lost = sorted(self.outstanding)
        self.outstanding.clear()
        return lost


@dataclass(frozen=True)
class Verdict:
    """What a rule found: ``kind`` (healthy, suspect, slow, stalled, quarantined, lost, drained,
    quarantine_over) and why, in words for the run's report. ``quarantined`` with ``until``: it is in
    quarantine until then; without: quarantine it now."""

    kind: str
    reason: str = ""
    until: float | None = None

    @property
    def quarantine_now(self) -> bool:
        """Whether the producer must be quarantined (:func:`quarantine`) for it."""
        return self.kind in QUARANTINE_NOW and self.until is None


OK = Verdict(HEALTHY)


def _others(peer: PeerHealth, others: Iterable[PeerHealth]) -> tuple[list[float | None], bool]:
    """The latencies of the other producers taking frames now, and whether there is any."""
    alive = [o for o in others if o is not peer and o.state == ALIVE]
    return [o.latency for o in alive], bool(alive)


def latency_text(peer: PeerHealth) -> str:
    if peer.latency is None:
        return "it delivered no frame yet"
    return f"its recent latency {1e3 * peer.latency:.0f} ms"


def in_time(peer: PeerHealth, latency: float, policy: HealthPolicy, others: Iterable[PeerHealth]) -> bool:
    """Whether a frame of ``peer`` that took ``latency`` seconds came in time, judged by the other producers'
    typical latency (a slow producer that delivers a batch at once has not caught up for that)."""
    typical = typical_latency(_others(peer, others)[0])
    if typical is None:
        return True
    return latency <= max(policy.straggler_min_s, policy.straggler_factor * typical)


def judge_slow(peer: PeerHealth, now: float, policy: HealthPolicy, others: Iterable[PeerHealth]) -> Verdict:
    """After ``max_strikes`` overtaken frames in a row: far slower than the others, or merely unlucky (a
    descheduled moment)? Slow when its latency, or the age of what it owes, is well above their typical latency
    (or they have none yet), and it answered after it was first found so (records that moment in
    ``judged_slow_at``). Judged again on every pass until a frame in time clears its strikes."""
    latencies, any_usable = _others(peer, others)
    if peer.slow_strikes < policy.max_strikes or not any_usable:  # "far slower than the others" needs others
        peer.judged_slow_at = 0.0
        return OK
    typical = typical_latency(latencies)
    if typical is not None:
        own = max(peer.latency if peer.latency is not None else 0.0, peer.busy_for(now))
        if own <= policy.straggler_factor * typical:
            return OK
    if not peer.judged_slow_at:
        peer.judged_slow_at = now
        return OK
    if peer.last_recv <= peer.judged_slow_at:  # no answer since: cut off, not slow
        return OK
    return Verdict(
        SLOW,
        f"far slower than the others: {peer.slow_strikes} frames in a row came first from another producer "
        f"({latency_text(peer)})",
    )


def assess(peer: PeerHealth, now: float, policy: HealthPolicy, others: Iterable[PeerHealth]) -> Verdict:
    """The periodic look at one producer (every pass of the consumer's loop). ``others``: the other producers.

    Returns ``quarantine_over`` (call :func:`restart`), ``quarantined`` (still in quarantine: leave it alone),
    ``lost`` / ``drained`` (silent past the heartbeat timeout: call :func:`lose`), ``slow`` / ``stalled``
    (call :func:`quarantine`), ``suspect`` (it just missed a pong: ``silent_since`` is set, ask the others for
    its frames) or ``healthy``. Records the slow judge's first verdict and the silence it finds in ``peer``."""
    if peer.state == QUARANTINED:
        if now >= peer.quarantined_until:
            return Verdict(QUARANTINE_OVER)
        return Verdict(QUARANTINED, peer.why, peer.quarantined_until)
    if peer.state not in (ALIVE, DRAINING):
        return OK
    silent_for = now - peer.last_recv
    if silent_for > policy.heartbeat_timeout:
        return Verdict(DRAINED if peer.state == DRAINING else LOST, f"silent for {silent_for:.1f} s")
    if peer.state != ALIVE:
        return OK
    slow = judge_slow(peer, now, policy, others)
    if slow.kind != HEALTHY:
        return slow
    busy = peer.busy_for(now)
    if busy > policy.stall_timeout:
        return Verdict(STALLED, f"answered heartbeats but delivered none of the frames asked of it for {busy:.1f} s")
    assert policy.pong_timeout is not None  # __post_init__ replaces None with the default
    if not peer.silent_since and silent_for > policy.heartbeat_interval + policy.pong_timeout:
        peer.silent_since = now
        return Verdict(SUSPECT, f"missed its heartbeat (silent for {silent_for:.1f} s)")
    return OK


def stall_warning(peer: PeerHealth, now: float, policy: HealthPolicy) -> float | None:
    """Seconds it has owed frames without delivering one, when that is worth a warning now (at most one every
    ``warn_interval``), else None. Records the warning's time."""
    if peer.state != ALIVE:
        return None
    busy = peer.busy_for(now)
    assert policy.warn_interval is not None  # __post_init__ replaces None with the default
    if busy > policy.warn_interval and now - peer.warned > policy.warn_interval:
        peer.warned = now
        return busy
    return None


def on_message(peer: PeerHealth, now: float) -> float:
    """Any message arrived from it; returns for how long it had been suspect (0: it was not)."""
    peer.last_recv = now
    was = peer.silent_since
    peer.silent_since = 0.0
    return now - was if was else 0.0


def on_bad_message(peer: PeerHealth, policy: HealthPolicy, what: str = "sent bad messages") -> Verdict:
    """It sent a bad message (``what`` it did): ``quarantined`` after ``max_strikes`` of them."""
    peer.strikes += 1
    if peer.strikes >= policy.max_strikes:
        return Verdict(QUARANTINED, f"{what}; {peer.strikes} bad messages")
    return OK


def on_rehello(peer: PeerHealth, policy: HealthPolicy) -> Verdict:
    """It forgot this consumer (restarted): ``lost`` (what it owed will not come), or ``quarantined`` when it
    did so ``max_strikes`` times in a row without delivering a frame (a restart is rare; every time is broken)."""
    peer.rehellos += 1
    if peer.rehellos >= policy.max_strikes:
        return Verdict(QUARANTINED, f"forgot this consumer {peer.rehellos} times in a row (rehello) without a frame")
    return Verdict(LOST, "it restarted")


def on_overtaken(peer: PeerHealth, now: float, policy: HealthPolicy, others: Iterable[PeerHealth]) -> Verdict:
    """Another producer delivered first a frame that ``peer`` was asked of and was overdue with: a strike
    towards ``slow`` (:func:`judge_slow`), unless it is silent altogether (lost, not slow: the heartbeat
    timeout decides) or not taking frames."""
    if peer.state != ALIVE:
        return OK
    if now - peer.last_recv > 2 * policy.heartbeat_interval:
        return OK
    peer.slow_strikes += 1
    return judge_slow(peer, now, policy, others)


def on_own_frame(peer: PeerHealth, latency: float, policy: HealthPolicy, others: Iterable[PeerHealth]) -> None:
    """A frame asked of it alone arrived after ``latency`` seconds: in time, it clears its slow strikes."""
    if peer.slow_strikes and in_time(peer, latency, policy, others):
        peer.slow_strikes = 0
        peer.judged_slow_at = 0.0


def on_welcome(peer: PeerHealth, now: float) -> bool:
    """It welcomed this consumer; True when that makes it alive (it was connecting)."""
    if peer.state != CONNECTING:
        return False
    peer.last_frame = now  # the stall clock starts now, not at the last frame before a reconnect
    peer.why = ""
    peer.state = ALIVE
    return True


def on_limit(peer: PeerHealth, refused: Iterable[int]) -> list[int]:
    """It refused frames over its limit: they go elsewhere, and it is asked for at most what it still owes."""
    out = [i for i in refused if peer.outstanding.pop(i, None) is not None]
    peer.cap = max(1, len(peer.outstanding))
    return out


def on_draining(peer: PeerHealth, dropped: Iterable[int], reason: str) -> list[int]:
    """It said it is draining: nothing new is asked of it; returns the frames it dropped (to re-issue now)."""
    out = [i for i in dropped if peer.outstanding.pop(i, None) is not None]
    peer.why = f"draining: {reason}"
    peer.state = DRAINING
    return out


def quarantine(peer: PeerHealth, now: float, policy: HealthPolicy, why: str, for_run: bool = False) -> list[int]:
    """Leave it alone (``why``) until its quarantine ends, doubled each time again (``for_run``: for good);
    returns the frames it owed, to ask of the others. A producer already in quarantine keeps it (made
    permanent by ``for_run``) and loses nothing more."""
    if peer.state == QUARANTINED:
        if for_run:
            peer.quarantined_until = math.inf
        return []
    lost = peer.forget_work()
    peer.quarantines += 1
    peer.silent_since = peer.last_ping = 0.0
    peer.quarantined_until = now + policy.quarantine_for(peer.quarantines, for_run)
    peer.why = why
    peer.state = QUARANTINED
    return lost


def lose(peer: PeerHealth, why: str, drained: bool = False) -> list[int]:
    """It is gone (``drained``: it shut down cleanly); returns the frames it owed. It is connecting again and
    starts afresh when it (or a successor) says welcome, as after a quarantine."""
    lost = peer.forget_work()
    peer.why = f"{'shut down' if drained else 'lost'}: {why}"
    peer.last_sent = 0.0
    peer.judged_slow_at = 0.0
    peer.slow_strikes = 0
    peer.silent_since = peer.last_ping = 0.0
    peer.state = CONNECTING
    return lost


def restart(peer: PeerHealth) -> None:
    """Its quarantine is over: a fresh start, connecting (its quarantine count is kept, so the next doubles)."""
    peer.strikes = peer.slow_strikes = peer.rehellos = 0
    peer.judged_slow_at = 0.0
    peer.last_sent = 0.0
    peer.state = CONNECTING
