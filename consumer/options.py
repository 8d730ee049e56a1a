"""The consumer's settings: one frozen, validated :class:`ClientOptions` (no sockets, no torch).

Everything a :class:`~pxdbg.consumer.client.BackgroundClient` can be told, apart from where its producers are
(``endpoints`` or ``workers``), is a field here; bad values raise :class:`~pxdbg.shared.errors.ConfigError`
naming the field, before any socket or process exists.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pxdbg.consumer.health import HealthPolicy
from pxdbg.consumer.subset import DEFAULT_MAX_PRODUCERS
from pxdbg.shared import protocol
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.seeding import check_seed
from pxdbg.shared.spec import ProducerSpec, TransportOptions
from pxdbg.shared.validators import positive_seconds

#: Hedged requests, as a fraction of the frames received, for a farm (local workers: none by default).
DEFAULT_HEDGE_BUDGET = 0.05
#: Fraction of a farm's frames asked of a second producer too and compared (local workers: none by default).
DEFAULT_AUDIT = 0.01
#: Most producers one consumer of a large farm uses at once by default (see :mod:`pxdbg.consumer.subset`).
MAX_PRODUCERS = DEFAULT_MAX_PRODUCERS
#: Without ``max_producers``, a farm of at most this many producers is used whole: a few connections cost
#: nothing, and one consumer of a small farm may need more than two producers' rate (a fast event loop, a
#: straggler among three).
WHOLE_FARM = 8
#: Largest ``max_producers`` accepted: each producer used costs two sockets (a DEALER and its monitor), and
#: libzmq allows 1,023 per context.
MAX_PRODUCERS_LIMIT = 256
#: The environment variable that names a consumer for its subset (else Slurm's array ids, else host:pid).
CONSUMER_KEY_ENV = "PXDBG_CONSUMER_KEY"
_KEY = re.compile(r"^[A-Za-z0-9_.:@/+\-]{1,200}$")
#: Seconds a producer may owe frames without delivering one before the consumer says so (every as many seconds).
STALL_WARNING_S = 10.0

_SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(ProducerSpec))


def _count(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be a {'positive' if least else 'non-negative'} integer, got {value!r}")
    return value


def consumer_key(environ: Mapping[str, str] | None = None) -> str:
    """The name of this consumer that, with the stream seed, picks its subset of producers (reproducible per
    job): ``$PXDBG_CONSUMER_KEY``, else Slurm's array job and task ids, else ``host:pid``.
    :class:`ConfigError` for a key that is not 1..200 letters, digits or ``_.:@/+-``."""
    env = os.environ if environ is None else environ
    given = env.get(CONSUMER_KEY_ENV)
    if given is not None:
        return check_consumer_key(given, CONSUMER_KEY_ENV)
    job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return check_consumer_key(f"slurm-{job}-{task}", "SLURM_ARRAY_JOB_ID/SLURM_ARRAY_TASK_ID")
    return f"{socket.gethostname()[:100]}:{os.getpid()}"


def check_consumer_key(key: object, what: str = "subset_key") -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        shown = repr(key)[:40] + ("..." if len(repr(key)) > 40 else "")
        raise ConfigError(f"{what} must be 1..200 letters, digits or _.:@/+- (it names this consumer), got {shown}")
    return key


def _fraction(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a fraction of the {what}, 0..1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ClientOptions:
    """What a consumer asks for and how it treats its producers. Times are in seconds.

    ``spec`` says which model; ``seed`` which stream; frames ``first_frame`` .. ``first_frame + events - 1`` are
    handed out (``events`` None: no end); at most ``prefetch`` frames are requested but not consumed.
    ``heartbeat_timeout``: a silent producer is declared lost and its frames re-issued; ``connect_timeout``: no
    producer at all (:class:`~pxdbg.consumer.errors.NoProducerError`); ``stall_timeout``: a producer owes
    frames but delivers none (quarantined); ``frame_timeout``: the next frame does not come
    (:class:`~pxdbg.consumer.errors.FrameTimeoutError`); ``quarantine``: how long a misbehaving producer is
    left alone the first time (doubled each time again). A frame outstanding longer than ``straggler_factor``
    times its producer's recent latency and the other producers' typical latency (and at least
    ``straggler_min_s``) is asked of another producer too (a hedged request), if one has spare credit and within
    ``hedge_budget`` (about that fraction of the frames received; 0: no hedging; None: 0.05 for a farm, 0 for
    local workers, which share this machine's CPUs). ``audit``: the fraction of frames also asked of a second
    producer and handed out only when both copies agree (None: 0.01 for a farm, 0 for local workers); a
    producer whose copy differs from the others' is quarantined for the run. ``max_strikes``: bad messages (or
    frames overtaken in a row) before a quarantine. ``max_producers``: most producers used at once (a seeded
    subset of those the endpoints resolve to, :mod:`pxdbg.consumer.subset`; None: a farm of up to
    :data:`WHOLE_FARM` producers whole, a larger one :data:`MAX_PRODUCERS` at a time, until it shrinks to
    half that); ``subset_key`` names this consumer in that choice (None: :func:`consumer_key`, from the
    environment).
    """

    spec: ProducerSpec = field(default_factory=ProducerSpec)
    transport: TransportOptions = field(default_factory=TransportOptions)
    seed: int = 0
    first_frame: int = 0
    events: int | None = None
    prefetch: int = 16
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 5.0
    connect_timeout: float = 60.0
    frame_timeout: float = 600.0
    stall_timeout: float = 60.0
    quarantine: float = 60.0
    straggler_factor: float = 4.0
    straggler_min_s: float = 0.05
    hedge_budget: float | None = None
    max_strikes: int = 3
    max_producers: int | None = None
    subset_key: str | None = None
    audit: float | None = None
    #: the health rules' thresholds, derived from the fields above
    policy: HealthPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.spec, ProducerSpec):
            raise ConfigError(f"spec must be a ProducerSpec, got {type(self.spec).__name__}")
        if not isinstance(self.transport, TransportOptions):
            raise ConfigError(f"transport must be a TransportOptions, got {type(self.transport).__name__}")
        put("seed", check_seed(self.seed))
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int):
            raise ConfigError(f"prefetch must be an integer, got {self.prefetch!r}")
        if not 1 <= self.prefetch <= protocol.MAX_INDICES_PER_REQUEST:
            raise ConfigError(f"prefetch must be in 1..{protocol.MAX_INDICES_PER_REQUEST}, got {self.prefetch}")
        _count("first_frame", self.first_frame, 0)
        if self.events is not None:
            _count("events", self.events, 0)
        for name in ("connect_timeout", "frame_timeout", "quarantine"):
            put(name, positive_seconds(name, getattr(self, name)))
        if self.max_producers is not None and _count("max_producers", self.max_producers, 1) > MAX_PRODUCERS_LIMIT:
            raise ConfigError(
                f"max_producers must be at most {MAX_PRODUCERS_LIMIT} (each producer used costs two sockets; "
                f"libzmq allows 1,023), got {self.max_producers}"
            )
        put("subset_key", consumer_key() if self.subset_key is None else check_consumer_key(self.subset_key))
        if self.hedge_budget is not None:
            put("hedge_budget", _fraction("hedge_budget", self.hedge_budget, "frames received"))
        if self.audit is not None:
            put("audit", _fraction("audit", self.audit, "frames"))
        # the health thresholds are checked (and the seconds made floats) by the policy itself
        policy = HealthPolicy(
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            stall_timeout=self.stall_timeout,
            quarantine_s=self.quarantine,
            max_strikes=self.max_strikes,
            straggler_factor=self.straggler_factor,
            straggler_min_s=self.straggler_min_s,
            warn_interval=min(STALL_WARNING_S, positive_seconds("stall_timeout", self.stall_timeout) / 2),
        )
        for name in ("heartbeat_interval", "heartbeat_timeout", "stall_timeout", "straggler_factor", "straggler_min_s"):
            put(name, getattr(policy, name))
        put("policy", policy)

    @classmethod
    def build(cls, options: ClientOptions | None = None, **keywords: Any) -> ClientOptions:
        """``options`` (default: the defaults) with ``keywords`` replacing its fields; every field is validated
        (``__post_init__``), so the values may be the caller's, of any type. Which model is asked for is one field,
        ``spec=ProducerSpec(...)``, as everywhere else."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(keywords) - names
        if unknown:
            hint = " (a model's settings go in spec=ProducerSpec(...))" if unknown & _SPEC_FIELDS else ""
            raise TypeError(f"BackgroundClient() got unexpected keyword argument(s) {', '.join(sorted(unknown))}{hint}")
        if options is None:
            return cls(**keywords)
        return dataclasses.replace(options, **keywords)

    def for_source(self, local: bool) -> ClientOptions:
        """These options with the defaults that depend on the producers filled in: for ``local`` workers no
        hedging (a hedged copy takes the CPU the first copy waits for, on this same machine; a lost, draining or
        silent worker's frames still go elsewhere) and no audit (they are this consumer's own processes)."""
        hedge = self.hedge_budget if self.hedge_budget is not None else 0.0 if local else DEFAULT_HEDGE_BUDGET
        audit = self.audit if self.audit is not None else 0.0 if local else DEFAULT_AUDIT
        return dataclasses.replace(self, hedge_budget=hedge, audit=audit)

    @property
    def end(self) -> int | None:
        """One past the last frame handed out (None: no end)."""
        return None if self.events is None else self.first_frame + self.events
