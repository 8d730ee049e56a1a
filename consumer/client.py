"""BackgroundClient: the consumer's side of the pipeline. Imports no torch.

A background I/O thread keeps, per consumer, at most ``prefetch`` frames requested but not yet consumed
(credit-based flow control, :mod:`pxdbg.consumer.credits`), spread over the producers by their speed; it
receives, checks and decodes frames into a reorder buffer, heartbeats every producer
(:mod:`pxdbg.consumer.peers`), asks a second producer for frames outstanding much longer than their
producer's recent latency and the other producers' (stragglers: hedged requests, within a budget), re-issues a
lost, draining or quarantined producer's frames to the others, and follows a dynamic endpoint source
(rendezvous directory, DNS name). :meth:`BackgroundClient.next` hands out frame ``first_frame``,
``first_frame + 1``, ... in order; when the pipeline is warm it only takes a decoded frame from the buffer.

Robustness (each a test in ``tests/test_consumer_faults.py``): a frame is accepted only from a producer it
was asked of, for this stream and model, intact (checksum over seed, index, identity and payload); anything
else is dropped and counted. A producer that sends corrupt or foreign frames, garbage or oversized messages,
reports errors, welcomes with a version or codec never offered, forgets this consumer again and again, is mute
(answers heartbeats but delivers nothing) or is far slower than the others is quarantined and its frames go
elsewhere; one that misses a pong has its frames asked of the others at once; a sample of frames is audited
against a second producer's copy. The run fails only when no usable producer is left, naming what each did.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
import weakref
from collections import Counter

import numpy as np
import zmq

from pxdbg.consumer import credits, health
from pxdbg.consumer.errors import (
    FrameTimeoutError,
    IdentityMismatchError,
    NoProducerError,
    PipelineError,
    ProducerFailure,
)
from pxdbg.consumer.health import HealthPolicy, PeerHealth
from pxdbg.consumer.peers import (
    ALIVE,
    CONNECTING,
    DRAINING,
    QUARANTINED,
    Peer,
    hello_message,
    open_socket,
    parse_goodbye,
    ping_message,
    request_message,
)
from pxdbg.consumer.stats import ClientStats
from pxdbg.consumer.workers import LocalWorkers
from pxdbg.shared import codecs, discovery, protocol, security
from pxdbg.shared import transport as sockets
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.seeding import check_seed
from pxdbg.shared.spec import ProducerSpec, TransportOptions

log = logging.getLogger("pxdbg.consumer")
#: Seconds a producer may owe frames without delivering one before the consumer says so (every as many seconds).
STALL_WARNING_S = 10.0
#: Seconds between two looks for overdue frames.
HEDGE_CHECK_S = 0.01
#: The latency assumed before any producer delivered a frame (no hedge is made on a guess before 4x that).
INITIAL_LATENCY_S = 1.0
#: Hedged requests a consumer may make before it received any frame (its budget's bucket size): enough for a
#: producer that hangs from the start to be overtaken ``max_strikes`` (3) times and quarantined.
HEDGE_BURST = 4.0
#: Hedged requests, as a fraction of the frames received, for a farm (local workers: none by default).
DEFAULT_HEDGE_BUDGET = 0.05
#: Seconds without any producer after which a consumer says what it waits for.
WAITING_NOTICE_S = 2.0
#: Seconds between two hellos to a producer that said it serves its most consumers.
FULL_RETRY_S = 1.0
#: Fraction of a farm's frames asked of a second producer too and compared (local workers: none by default).
DEFAULT_AUDIT = 0.01
#: Most producers one consumer uses at once (each costs two sockets and a connection).
MAX_PRODUCERS = 128

__all__ = [
    "BackgroundClient",
    "FrameTimeoutError",
    "IdentityMismatchError",
    "NoProducerError",
    "PipelineError",
    "ProducerFailure",
    "expected_identity",
]


def expected_identity(
    model: str,
    *,
    checkpoint=None,
    checkpoint_sha256: str | None = None,
    globaltag: str | None = None,
    precision: str = "fp32",
    stores=None,
) -> ModelIdentity:
    """The identity a consumer asks for, resolved without torch: ``ProducerSpec(...).identity()``."""
    spec = ProducerSpec(
        model=model,
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        globaltag=globaltag,
        precision=precision,
    )
    return spec.identity(stores)


#: The keywords that build a :class:`ProducerSpec` when no ``spec`` is given (the constructor's older form).
_SPEC_KEYWORDS = (
    "model",
    "checkpoint",
    "checkpoint_sha256",
    "globaltag",
    "precision",
    "device",
    "max_batch",
    "threads",
)


def agreeing(copies: dict) -> list[tuple[object, list]]:
    """The copies of one frame grouped by equality, largest group first: ``[(frame, [producers]), ...]``
    (``copies``: {producer: its copy}). One group: they agree; a first group larger than the second: a majority."""
    groups: list[tuple[object, list]] = []
    for key, frame in copies.items():
        for same_frame, keys in groups:
            if same_frame == frame:
                keys.append(key)
                break
        else:
            groups.append((frame, [key]))
    groups.sort(key=lambda g: -len(g[1]))
    return groups


def _seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class BackgroundClient:
    """Frames of one stream, in order, from local workers or a producer farm.

    Give either ``endpoints`` (an endpoint string of :mod:`pxdbg.shared.discovery`, or a list of them) or
    ``workers`` (how many local producer processes to start). ``spec`` says which model (the keywords
    ``model=``, ``checkpoint=``, ... build one); ``events`` bounds the frames handed out (none is requested past
    ``first_frame + events - 1``). Timeouts are in seconds: ``heartbeat_timeout`` (a silent producer is declared
    lost and its frames re-issued), ``connect_timeout`` (no producer at all: :class:`NoProducerError`),
    ``stall_timeout`` (a producer owes frames but delivers none: quarantined), ``frame_timeout`` (the next frame
    does not come: :class:`FrameTimeoutError`), ``quarantine`` (how long a misbehaving producer is left alone
    the first time; doubled each time again). A frame outstanding longer than ``straggler_factor`` times its
    producer's recent latency and the other producers' typical latency (and at least ``straggler_min_s``) is
    asked of another producer too (a hedged request), if one has spare credit and within ``hedge_budget`` (about
    that fraction of the frames received; 0: no hedging; default 0.05 for a farm, 0 for local workers, which
    share this machine's CPUs); see :func:`pxdbg.consumer.credits.hedges`. ``audit``: the fraction of frames
    also asked of a second producer and handed out only when both copies agree (default 0.01 for a farm, 0 for
    local workers; nothing is audited while only one producer answers); a producer whose copy differs from the
    others' is quarantined for the run. ``max_producers``: most producers used at once (the rest are skipped,
    with a warning).
    """

    def __init__(
        self,
        endpoints: list[str] | str | None = None,
        *,
        workers: int | None = None,
        spec: ProducerSpec | None = None,
        transport: TransportOptions | None = None,
        seed: int = 0,
        first_frame: int = 0,
        events: int | None = None,
        prefetch: int = 16,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 5.0,
        connect_timeout: float = 60.0,
        frame_timeout: float = 600.0,
        stall_timeout: float = 60.0,
        quarantine: float = 60.0,
        straggler_factor: float = 4.0,
        straggler_min_s: float = 0.05,
        hedge_budget: float | None = None,
        max_strikes: int = 3,
        max_producers: int = MAX_PRODUCERS,
        audit: float | None = None,
        **spec_keywords,
    ) -> None:
        unknown = set(spec_keywords) - set(_SPEC_KEYWORDS)
        if unknown:
            raise TypeError(f"BackgroundClient() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        if spec is not None and spec_keywords:
            raise ConfigError(f"give either spec or {', '.join(sorted(spec_keywords))}, not both")
        if spec is None:
            spec = ProducerSpec(**{k: v for k, v in spec_keywords.items() if v is not None})
        if (endpoints is None) == (workers is None):
            raise ConfigError("give either endpoints (a producer farm) or workers (local producers), not both")
        if not 1 <= prefetch <= protocol.MAX_INDICES_PER_REQUEST:
            raise ConfigError(f"prefetch must be in 1..{protocol.MAX_INDICES_PER_REQUEST}, got {prefetch}")
        if isinstance(first_frame, bool) or not isinstance(first_frame, int) or first_frame < 0:
            raise ConfigError(f"first_frame must be a non-negative integer, got {first_frame!r}")
        if events is not None and (isinstance(events, bool) or not isinstance(events, int) or events < 0):
            raise ConfigError(f"events must be a non-negative integer, got {events!r}")
        self.heartbeat_interval = _seconds("heartbeat_interval", heartbeat_interval)
        self.heartbeat_timeout = _seconds("heartbeat_timeout", heartbeat_timeout)
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.frame_timeout = _seconds("frame_timeout", frame_timeout)
        self.stall_timeout = _seconds("stall_timeout", stall_timeout)
        self.quarantine = _seconds("quarantine", quarantine)
        self.straggler_min_s = _seconds("straggler_min_s", straggler_min_s)
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed twice the heartbeat_interval")
        if not straggler_factor > 1 or not math.isfinite(straggler_factor):
            raise ConfigError(f"straggler_factor must be a number above 1, got {straggler_factor!r}")
        if hedge_budget is None:
            # local workers share this machine's CPUs: a hedged copy takes the CPU the first copy waits for, so it
            # is no cure for a straggler there (a lost, draining or silent worker's frames still go elsewhere)
            hedge_budget = 0.0 if workers is not None else DEFAULT_HEDGE_BUDGET
        if isinstance(hedge_budget, bool) or not isinstance(hedge_budget, (int, float)) or not 0 <= hedge_budget <= 1:
            raise ConfigError(f"hedge_budget must be a fraction of the frames received, 0..1, got {hedge_budget!r}")
        if isinstance(max_strikes, bool) or not isinstance(max_strikes, int) or max_strikes < 1:
            raise ConfigError(f"max_strikes must be a positive integer, got {max_strikes!r}")
        if isinstance(max_producers, bool) or not isinstance(max_producers, int) or max_producers < 1:
            raise ConfigError(f"max_producers must be a positive integer, got {max_producers!r}")
        self.max_producers = max_producers
        if audit is None:  # local workers are this consumer's own processes; a farm's producers may not be
            audit = 0.0 if workers is not None else DEFAULT_AUDIT
        if isinstance(audit, bool) or not isinstance(audit, (int, float)) or not 0 <= audit <= 1:
            raise ConfigError(f"audit must be a fraction of the frames, 0..1, got {audit!r}")
        self.audit = float(audit)
        self._audits: dict[int, dict[str, SparseFrame]] = {}  # frame index -> {producer: its copy}, held back
        self._audit_rng = random.Random(os.urandom(16))  # a producer cannot tell which frames are audited
        self._skipped_producers = 0
        self.straggler_factor = float(straggler_factor)
        self.max_strikes = max_strikes
        self.policy = HealthPolicy(
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            stall_timeout=self.stall_timeout,
            quarantine_s=self.quarantine,
            max_strikes=max_strikes,
            straggler_factor=self.straggler_factor,
            straggler_min_s=self.straggler_min_s,
            warn_interval=min(STALL_WARNING_S, self.stall_timeout / 2),
        )
        # endpoint strings are checked before any socket or process exists
        self._source = discovery.parse(endpoints) if endpoints is not None else None
        self.spec = spec
        self.transport = transport if transport is not None else TransportOptions()
        self.seed = check_seed(seed)
        self.first_frame = first_frame
        self.end = None if events is None else first_frame + events
        self.prefetch = prefetch
        self.identity = spec.identity()
        self.identity_str = str(self.identity)
        self.counters: Counter = Counter()
        self.frames_per_producer: Counter = Counter()
        self.stats = ClientStats(warmup=prefetch)
        self.wire_bytes = 0
        self.wire_digits = 0
        self.last_index: int | None = None
        #: the most frames ever requested but not consumed at once (the prefetch bound says <= prefetch)
        self.max_in_flight = 0
        #: the most decoded frames ever waiting in the reorder buffer (<= prefetch)
        self.max_buffered = 0

        self._cv = threading.Condition()
        self._ready: dict[int, SparseFrame] = {}
        self._next = first_frame
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._next_hedge = 0.0
        self._hedged: dict[int, str] = {}  # frame index -> the producer it was first asked of (overdue there)
        # hedging's token bucket; the overdue frames already counted as skipped (each is counted once)
        self._budget = credits.HedgeBudget(ratio=float(hedge_budget), burst=HEDGE_BURST)
        self._skipped: dict[str, set[int]] = {"hedges_skipped_budget": set(), "hedges_skipped_busy": set()}
        self._peers: dict[str, Peer] = {}
        self._trim_at = 0.0
        self._waiting_said = False
        self._offered_codecs = codecs.available()  # what every hello of this consumer offers
        self._workers: LocalWorkers | None = None
        self._ctx = zmq.Context()
        self._finalizer = None
        try:
            if workers is not None:
                self._workers = LocalWorkers(workers, spec)
                self._finalizer = weakref.finalize(self, self._workers.close)
                self._source = discovery.parse(self._workers.endpoints)
            self._wake_addr = f"inproc://pxdbg-wake-{id(self)}"
            self._wake_rx = self._ctx.socket(zmq.PAIR)
            self._wake_rx.bind(self._wake_addr)
            self._wake_tx = self._ctx.socket(zmq.PAIR)
            self._wake_tx.setsockopt(zmq.LINGER, 0)
            self._wake_tx.setsockopt(zmq.SNDHWM, 1)
            self._wake_tx.connect(self._wake_addr)
            self._next_refresh = time.monotonic() + self._source.refresh_interval
            self._sync_peers(self._source.resolve())
            self._thread = threading.Thread(target=self._io_loop, name="pxdbg-consumer-io", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise

    # -- the event loop's side ---------------------------------------------------------------------------
    def next(self, dense: bool = False) -> SparseFrame | np.ndarray:
        """The next frame of the stream (sparse digits; a (40, 250, 768) uint8 array when ``dense``)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.frame_timeout
        with self._cv:
            if self.end is not None and self._next >= self.end:
                raise PipelineError(f"all {self.end - self.first_frame} frames this client was opened for are used")
            while True:
                if self._error is not None:
                    raise self._error
                if self._closing:
                    raise PipelineError("the client is closed")
                frame = self._ready.pop(self._next, None)
                if frame is not None:
                    index = self._next
                    self._next += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FrameTimeoutError(
                        f"frame {self._next} of stream {self.seed} did not arrive within {self.frame_timeout:g} s "
                        f"(--frame-timeout); producers: {self._describe()}"
                    )
                self._cv.wait(min(remaining, 1.0))
        try:
            self._wake_tx.send(b"", zmq.NOBLOCK)
        except zmq.Again:  # a wake-up is already queued
            pass
        self.stats.record_wait(time.perf_counter() - t0)
        self.last_index = index
        return frame.to_dense() if dense else frame

    def __next__(self) -> SparseFrame:
        if self.end is not None and self._next >= self.end:
            raise StopIteration
        return self.next()

    def __iter__(self):
        return self

    def wait_for_producers(self, count: int | None = None, timeout: float = 60.0) -> int:
        """Block until ``count`` producers (default: all known now) have welcomed this client; return how many
        have. Raises :class:`NoProducerError` after ``timeout`` seconds. Useful to warm up before timing a loop."""
        deadline = time.monotonic() + timeout
        with self._cv:
            count = len(self._peers) if count is None else count
            while True:
                if self._error is not None:
                    raise self._error
                alive = sum(p.state == ALIVE for p in self._peers.values())
                if alive >= count:
                    return alive
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoProducerError(
                        f"{alive} of {count} producers answered within {timeout} s ({self._describe()})"
                    )
                self._cv.wait(min(remaining, 0.1))

    @property
    def consumed(self) -> int:
        return self._next - self.first_frame

    @property
    def endpoints(self) -> list[str]:
        """The producers' concrete endpoints known now."""
        with self._cv:
            return list(self._peers)

    @property
    def local_workers(self) -> LocalWorkers | None:
        """The local producer processes (``workers=``), else None."""
        return self._workers

    def producer_states(self) -> dict[str, str]:
        """{endpoint: connecting / alive / draining / quarantined} as of now."""
        with self._cv:
            return {ep: p.state for ep, p in self._peers.items()}

    def producer_report(self) -> dict[str, str]:
        """{endpoint: what it did}: its state, frames delivered, and why it was quarantined or lost, if so."""
        with self._cv:
            return {ep: p.describe() for ep, p in self._peers.items()}

    def in_flight(self) -> int:
        """Frames requested but not yet consumed (received or not), as of the I/O thread's last pass."""
        with self._cv:
            return self._in_flight

    def close(self) -> None:
        """Say bye to the producers, stop the I/O thread and any local workers. Idempotent."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None and self._thread.is_alive():
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._thread.join(timeout=10)
        if self._thread is None or not self._thread.is_alive():
            for name in ("_wake_tx", "_wake_rx"):
                sock = getattr(self, name, None)
                if sock is not None:
                    sock.close(0)
            for peer in list(getattr(self, "_peers", {}).values()):
                peer.close_socket()
            self._ctx.destroy(linger=0)  # closes whatever socket is left, so term() cannot hang
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _describe(self) -> str:
        return "; ".join(p.describe() for p in self._peers.values()) or "none known"

    # -- the I/O thread ------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            if self._error is None:
                self._error = exc
            self._cv.notify_all()

    def _io_loop(self) -> None:
        try:
            self._io_run()
        except Exception as exc:  # an internal failure must reach next(), not vanish with the thread
            log.exception("consumer I/O thread failed")
            self._fail(PipelineError(f"consumer I/O thread failed: {exc!r}"))
        finally:
            for peer in self._peers.values():
                peer.close_socket(say_bye=True)

    def _sync_peers(self, endpoints: list[str]) -> None:
        """Use producers that appeared (at most ``max_producers``); drop vanished ones (what they owed is
        re-issued)."""
        with self._cv:
            known = dict(self._peers)
        fresh = [ep for ep in endpoints if ep not in known]
        room = max(0, self.max_producers - sum(ep in known for ep in endpoints))
        if len(fresh) > room:
            # each producer costs sockets and file descriptors (libzmq allows 1,023 sockets per context):
            # a directory of thousands of entries must not crash the consumer
            skipped = len(fresh) - room
            if skipped != self._skipped_producers:
                log.warning(
                    "%d producer endpoint(s) at %s skipped: this consumer uses at most %d producers "
                    "(max_producers); first skipped: %s",
                    skipped,
                    self._source,
                    self.max_producers,
                    fresh[room][:200],
                )
            self._skipped_producers = skipped
            self.counters["producers_skipped"] = skipped
            fresh = fresh[:room]
        for ep in fresh:
            try:
                sock = open_socket(self._ctx, ep, self.transport)
            except zmq.ZMQError as exc:  # out of sockets or file descriptors: use the ones we have
                self.counters["producers_skipped"] += 1
                log.warning("cannot open a socket to producer %s (%s); skipping it", ep[:200], exc)
                continue
            peer = Peer(ep, sock)
            with self._cv:
                self._peers[ep] = peer
            if known:
                log.info("producer %s appeared", ep)
        for ep, peer in known.items():
            if ep not in endpoints:
                lost = peer.health.forget_work()
                self._unhedge(ep)
                log.warning("producer %s vanished; re-issuing its %d outstanding frame(s)", ep, len(lost))
                self.counters["producers_vanished"] += 1
                self.counters["frames_reissued"] += len(lost)
                peer.close_socket(say_bye=True)
                with self._cv:
                    del self._peers[ep]

    def _io_run(self) -> None:
        last_alive = time.monotonic()
        hello = hello_message(self.identity, f"{socket.gethostname()}:{os.getpid()}")
        ping = ping_message()
        poller, polled = None, None
        tick = int(min(self.policy.heartbeat_interval / 2, 0.05) * 1000) or 1
        while True:
            with self._cv:
                if self._closing:
                    return
            peers = list(self._peers.values())
            sockets = [p.sock for p in peers if p.sock is not None]
            if sockets != polled:  # rebuilt only when a socket was replaced, added or dropped
                poller, polled = zmq.Poller(), sockets
                poller.register(self._wake_rx, zmq.POLLIN)
                for sock in sockets:
                    poller.register(sock, zmq.POLLIN)
            events = dict(poller.poll(tick))
            if self._wake_rx in events:
                while True:
                    try:
                        self._wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            now = time.monotonic()  # the one clock reading of this pass: every decision below is made at `now`
            if self._source.dynamic and now >= self._next_refresh:
                self._next_refresh = now + self._source.refresh_interval
                self._sync_peers(self._source.resolve())  # new peers join the next pass
            for peer in peers:
                if peer.sock is not None and peer.sock in events:
                    self._drain(peer, now)
            if self._workers is not None:
                self._check_workers()
            others = self._healths()
            for peer in peers:
                self._keep_alive(peer, now, hello, ping, others)
            if self._error is not None:
                return
            usable = [p for p in self._peers.values() if p.state != QUARANTINED]
            if self._peers and not usable and not self._source.dynamic:
                self._fail(self._no_usable_producer())
                return
            if any(p.state in (ALIVE, DRAINING) for p in self._peers.values()):
                last_alive = now
                self._waiting_said = False
            elif (refused := security.refusal(self._ctx, list(self._peers))) is not None:  # every producer said no
                self._fail(security.AuthenticationRefused(refused))
                return
            elif now - last_alive > self.connect_timeout:
                self._fail(self._nobody_answered())
                return
            elif now - last_alive > WAITING_NOTICE_S and not self._waiting_said:
                self._waiting_said = True
                where = self._why_waiting()
                if len(where) == 1:  # "at tcp://h:46997 yet (connection refused)"
                    ep, _, why = where[0].partition(" (")
                    where_text = f"at {ep} yet" + (f" ({why}" if why else "")
                else:
                    where_text = "yet: " + "; ".join(where)
                log.log(
                    logging.INFO if self._workers is not None else logging.WARNING,  # local ones take time to start
                    "no producer has answered %s; waiting up to %.0f s in all (connect_timeout)",
                    where_text,
                    self.connect_timeout,
                )
            if self._trim_at and now >= self._trim_at:
                self._trim_at = 0.0
                sockets.release_freed_memory()
            self._hedge(now)
            self._assign_credits(now)
            self._account()

    def _keep_alive(self, peer: Peer, now: float, hello: bytes, ping: bytes, others: list[PeerHealth]) -> None:
        """The periodic look at one producer (:func:`health.assess`) and what its verdict implies: a loss, a
        quarantine, a fresh start, asking the others for a silent one's frames; then a ping or a hello."""
        verdict = health.assess(peer.health, now, self.policy, others)
        if verdict.kind == health.QUARANTINED:
            return
        if verdict.kind == health.QUARANTINE_OVER:  # a fresh connection, a fresh start
            log.info("producer %s: quarantine over; trying it again", peer.endpoint)
            peer.reset_socket(self._ctx, self.transport)
            self._change(health.restart, peer.health)
        elif verdict.kind in (health.LOST, health.DRAINED):
            # one that said it was draining and then went silent shut down as it said: its final goodbye was
            # lost with its connection (a loaded machine, a short linger), which is no failure
            self._peer_lost(peer, verdict.reason, drained=verdict.kind == health.DRAINED)
        elif verdict.quarantine_now:
            self._quarantine(peer, verdict.reason, now)
            return
        elif verdict.kind == health.SUSPECT:
            self._silent(peer, now)
        busy = health.stall_warning(peer.health, now, self.policy)
        if busy is not None:
            log.warning(
                "producer %s answers heartbeats but delivered none of its %d outstanding frame(s) for %.0f s; "
                "quarantined after %.0f s",
                peer.endpoint,
                len(peer.health.outstanding),
                busy,
                self.policy.stall_timeout,
            )
        interval = self.policy.heartbeat_interval
        if peer.state in (ALIVE, DRAINING):
            # a ping every interval even while requests flow: a missed pong then means silence, not a busy model
            if now - peer.health.last_ping >= interval and self._try_send(peer, ping, now):
                peer.health.last_ping = now
        elif now - peer.health.last_sent >= interval:
            self._try_send(peer, hello, now)

    def _silent(self, peer: Peer, now: float) -> None:
        """It missed a pong (a partition, a stopped process): what it owes is at risk as a whole, so its frames
        are asked of the others now (no hedge budget) instead of after the heartbeat timeout's loss verdict."""
        self.counters["producers_silent"] += 1
        log.info(
            "producer %s missed its heartbeat (silent for %.1f s); asking the others for its %d outstanding frame(s)",
            peer.endpoint,
            now - peer.health.last_recv,
            len(peer.health.outstanding),
        )

    def _try_send(self, peer: Peer, msg: bytes, now: float) -> bool:
        if peer.sock is None:
            return False
        try:
            peer.sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:  # not connected (IMMEDIATE) or queue full
            return False
        peer.health.last_sent = now
        return True

    def _drain(self, peer: Peer, now: float) -> None:
        for _ in range(10000):
            if peer.sock is None or peer.state == QUARANTINED:
                return
            try:
                # a frame is a header and at most 4 buffers; past that, parts are released as they are read
                parts, dropped = sockets.recv_bounded(
                    peer.sock, max_parts=5, max_bytes=protocol.MAX_FRAME_MESSAGE, copy=False
                )
            except zmq.Again:
                return
            silent_for = health.on_message(peer.health, now)
            if silent_for:
                log.info("producer %s answers again after %.1f s", peer.endpoint, silent_for)
            if dropped:
                self.counters["bad_messages"] += 1
                self.counters["oversized_messages"] += 1
                self._quarantine(
                    peer, f"sent a message of more than 5 parts or {protocol.MAX_FRAME_MESSAGE} bytes", now
                )
                self._trim_at = now + 0.5  # once libzmq has freed what it held for the closed socket
                return
            try:
                header = protocol.unpack(parts[0].buffer)
                self._handle(peer, header, parts[1:], now)
            except protocol.ProtocolError as exc:
                self._strike(peer, "malformed_messages", f"sent malformed messages ({exc})", now)
            except RecursionError:  # a message nested deeper than the parser goes: garbage, not our bug
                self._strike(peer, "malformed_messages", "sent malformed messages (nested too deep)", now)

    def _strike(self, peer: Peer, counter: str, what: str, now: float) -> None:
        """Count a bad message; quarantine its producer after ``max_strikes`` of them."""
        self.counters["bad_messages"] += 1
        self.counters[counter] += 1
        n = self.counters["bad_messages"]
        if n <= 5 or n % 1000 == 0:
            log.warning("bad message from %s (%d so far): %s", peer.endpoint, n, what)
        verdict = health.on_bad_message(peer.health, self.policy, what)
        if verdict.quarantine_now:
            self._quarantine(peer, verdict.reason, now)

    def _handle(self, peer: Peer, header: dict, buffers: list, now: float) -> None:
        kind = header["t"]
        if kind == protocol.FRAME:
            if peer.state not in (ALIVE, DRAINING):
                raise protocol.ProtocolError("a frame before welcome")
            return self._receive_frame(peer, header, buffers, now)
        if buffers:
            raise protocol.ProtocolError(f"a message of type {kind!r} with {len(buffers)} unexpected buffers")
        if kind == protocol.PONG:
            return None
        if kind == protocol.WELCOME:
            return self._welcome(peer, header, now)
        if kind == protocol.ERROR:
            return self._error_message(peer, header, now)
        if kind == protocol.GOODBYE:
            return self._goodbye(peer, header, now)
        raise protocol.ProtocolError(f"unexpected message type {str(kind)[:32]!r}")

    def _error_message(self, peer: Peer, header: dict, now: float) -> None:
        if header.get("rehello"):  # the producer restarted and forgot us: what we asked for is lost
            verdict = health.on_rehello(peer.health, self.policy)
            if verdict.quarantine_now:  # a restart is rare: one that forgets us every time is broken
                self.counters["producer_errors"] += 1
                self._quarantine(peer, verdict.reason, now)
                return
            self._peer_lost(peer, verdict.reason, reconnect=False)
            return
        msg = str(header.get("msg"))[:500]
        idx = header.get("idx")
        if header.get("code") == getattr(protocol, "E_LIMIT", "limit") and isinstance(idx, list) and idx:
            # more than it takes from one consumer: ask it for fewer at once, the rest elsewhere
            refused = health.on_limit(peer.health, idx)
            self.counters["frames_over_producer_limit"] += len(refused)
            log.warning(
                "producer %s refused %d frame(s) over its limit (%s); asking it for at most %d at once",
                peer.endpoint,
                len(refused),
                msg,
                peer.health.cap,
            )
            return
        if header.get("code") == protocol.E_LIMIT and idx is None and peer.state == CONNECTING:
            # it serves its most consumers: a reason to wait for a slot (its hello is repeated) or use others
            self.counters["producers_full"] += 1
            if not peer.health.why.startswith("full"):
                log.info("producer %s is full (%s); using the others and asking it again", peer.endpoint, msg)
            peer.health.why = f"full: {msg}"
            peer.health.last_sent = now + FULL_RETRY_S - self.policy.heartbeat_interval  # the next hello, later
            return
        if idx is not None:
            what = f"failed on frame(s) {str(idx)[:80]} of stream {header.get('seed')}: {msg}"
        else:
            what = f"refused to serve: {msg}"
        self.counters["producer_errors"] += 1
        self._quarantine(peer, what, now)

    def _goodbye(self, peer: Peer, header: dict, now: float) -> None:
        final, dropped = parse_goodbye(header)
        reason = str(header.get("reason"))[:200]
        if final:  # a clean shutdown (a rollout, scancel): expected, not a failure
            self._peer_lost(peer, f"it said goodbye ({reason})", drained=True)
            return
        lost = self._change(health.on_draining, peer.health, dropped.get(self.seed, []), reason)
        self.counters["producers_draining"] += 1
        self.counters["frames_reissued"] += len(lost)
        log.info(
            "producer %s is draining (%s); re-issuing %d dropped frame(s) now, %d still to come from it",
            peer.endpoint,
            reason,
            len(lost),
            len(peer.health.outstanding),
        )

    def _welcome(self, peer: Peer, header: dict, now: float) -> None:
        try:
            theirs = ModelIdentity.from_dict(header["identity"])
        except (KeyError, TypeError, ValueError) as exc:
            raise protocol.ProtocolError(f"welcome without a valid identity ({type(exc).__name__})") from None
        if theirs != self.identity:
            self.counters["identity_mismatches"] += 1
            self._quarantine(
                peer,
                f"serves model {theirs} (checkpoint sha256 {theirs.checkpoint_sha256}), but this consumer asked "
                f"for {self.identity} (checkpoint sha256 {self.identity.checkpoint_sha256}); point it at producers "
                f"of the same model, checkpoint and precision",
                now,
                identity=True,
            )
            return
        version, codec = header.get("version"), header.get("codec")
        if version is not None and not protocol.MIN_PROTOCOL_VERSION <= version <= protocol.PROTOCOL_VERSION:
            self.counters["bad_welcomes"] += 1
            self._quarantine(
                peer,
                f"welcomed this consumer with protocol version {version}, which it never offered (it speaks "
                f"{protocol.MIN_PROTOCOL_VERSION}..{protocol.PROTOCOL_VERSION})",
                now,
            )
            return
        if codec is not None and codec not in self._offered_codecs:
            self.counters["bad_welcomes"] += 1
            self._quarantine(
                peer,
                f"welcomed this consumer with wire codec {codec[:64]!r}, which it never offered (it offered "
                f"{', '.join(self._offered_codecs) or 'none'})",
                now,
            )
            return
        peer.codec = codec
        if peer.state != CONNECTING:
            return
        info = header.get("producer", {})
        peer.info = info if isinstance(info, dict) else {}
        log.info(
            "producer %s ready: %s (pid %s on %s, %s)",
            peer.endpoint,
            theirs,
            peer.info.get("pid"),
            peer.info.get("host"),
            peer.info.get("device"),
        )
        self._change(health.on_welcome, peer.health, now)

    def _receive_frame(self, peer: Peer, header: dict, buffers: list, now: float) -> None:
        idx = header.get("idx")
        if header.get("seed") != self.seed or header.get("id") != self.identity_str:
            self.counters["foreign_frames"] += 1
            self._quarantine(
                peer,
                f"sent a frame of stream {str(header.get('seed'))[:24]} / model {str(header.get('id'))[:80]}, "
                f"but was asked for stream {self.seed} / model {self.identity_str}",
                now,
            )
            return
        if header.get("codec") not in (None, peer.codec):
            self.counters["corrupt_frames"] += 1
            self._strike(peer, "corrupt_frame_messages", "sent frames in a wire codec not agreed on", now)
            return
        requested_at = peer.health.outstanding.get(idx) if isinstance(idx, int) else None
        if requested_at is None:
            self.counters["unrequested_frames"] += 1
            self._strike(peer, "unrequested_frames", "sent frames it was not asked for", now)
            return
        del peer.health.outstanding[idx]
        with self._cv:
            wanted = idx >= self._next and idx not in self._ready
        if not wanted:  # the other copy of a straggler came first
            peer.health.note_frame(now, requested_at)
            self.counters["duplicates_dropped"] += 1
            return
        try:
            frame = protocol.decode_frame(header, [memoryview(b.buffer) for b in buffers])
        except protocol.ProtocolError as exc:
            self.counters["corrupt_frames"] += 1
            self._strike(peer, "corrupt_frame_messages", f"sent corrupt frames ({exc})", now)
            return  # the window's planner asks for it again
        peer.health.note_frame(now, requested_at)
        first = self._hedged.pop(idx, None)
        if first is not None and first != peer.endpoint:
            self._overtaken(first, now)
        elif first is None:
            health.on_own_frame(peer.health, now - requested_at, self.policy, self._healths())
        else:  # the producer first asked delivered before the hedged copy: the copy was work for nothing
            self.counters["hedges_wasted"] += 1
        self._budget.earn(1)
        self.counters["frames_received"] += 1
        self.frames_per_producer[peer.endpoint] += 1
        self.wire_bytes += sum(b.buffer.nbytes for b in buffers)
        self.wire_digits += frame.n_digits
        if self.audit:
            frame = self._audit(peer, idx, frame, now)
            if frame is None:  # held back until another producer's copy confirms it
                return
        with self._cv:
            self._ready[idx] = frame
            self.max_buffered = max(self.max_buffered, len(self._ready))
            self._cv.notify_all()

    def _audit(self, peer: Peer, idx: int, frame: SparseFrame, now: float) -> SparseFrame | None:
        """The frame to hand out for ``idx``, or None while it is held for the audit.

        A fraction ``audit`` of the frames is asked of a second producer too, and handed out only when both
        copies agree: a checksum cannot catch a producer that labels frame i+1 as frame i with a valid checksum
        (CRC-32 is no MAC), a comparison can. Copies that differ go to a third producer; the producers that
        disagree with the majority are quarantined for the run. With no third producer, both are (which copy is
        right cannot be told), and the frame waits for another producer."""
        copies = self._audits.get(idx)
        if copies is None:
            if self._audit_rng.random() >= self.audit:
                return frame
            if not self._audit_ask(idx, {peer.endpoint}, now):
                return frame  # no second producer now: nothing to compare with
            self._audits[idx] = {peer.endpoint: frame}
            self.counters["audits"] += 1
            return None
        if peer.endpoint in copies:  # its own copy again (the second producer was lost): nothing to compare
            del self._audits[idx]
            self.counters["audits_inconclusive"] += 1
            return frame
        copies[peer.endpoint] = frame
        groups = agreeing(copies)
        if len(groups) == 1:
            del self._audits[idx]
            self.counters["audits_passed"] += 1
            return frame
        self.counters["audit_mismatches"] += 1
        log.warning(
            "audit: frame %d of stream %d differs between producers %s",
            idx,
            self.seed,
            " and ".join(ep for g in groups for ep in g[1]),
        )
        if len(groups[0][1]) > len(groups[1][1]):  # a majority
            winner, agreed = groups[0]
            for _, eps in groups[1:]:
                for ep in eps:
                    self._forger(ep, idx, agreed, now)
            del self._audits[idx]
            return winner
        if self._audit_ask(idx, set(copies), now):
            return None
        for ep in copies:  # which copy is right cannot be told: neither is used again in this run
            self._forger(ep, idx, [e for e in copies if e != ep], now)
        del self._audits[idx]
        return None

    def _audit_ask(self, idx: int, exclude: set[str], now: float) -> bool:
        """Ask a producer outside ``exclude`` for frame ``idx`` (for the audit); False if none can be asked."""
        others = [
            p
            for p in self._peers.values()
            if p.endpoint not in exclude
            and p.state == ALIVE
            and not p.health.silent_since
            and idx not in p.health.outstanding
        ]
        for other in sorted(others, key=lambda p: len(p.health.outstanding)):
            if self._try_send(other, request_message(self.seed, [idx]), now):
                other.health.outstanding[idx] = now
                return True
        return False

    def _forger(self, endpoint: str, idx: int, others: list[str], now: float) -> None:
        peer = self._peers.get(endpoint)
        if peer is not None:
            self._quarantine(
                peer,
                f"its frame {idx} of stream {self.seed} differs from the copy of {' and '.join(others)} (audit)",
                now,
                for_run=True,
            )

    def _overtaken(self, endpoint: str, now: float) -> None:
        """Another producer delivered a frame first that ``endpoint`` was asked of and was overdue with."""
        self.counters["hedges_won"] += 1
        peer = self._peers.get(endpoint)
        if peer is None:
            return
        verdict = health.on_overtaken(peer.health, now, self.policy, self._healths())
        if verdict.quarantine_now:
            self._quarantine(peer, verdict.reason, now)

    def _healths(self) -> list[PeerHealth]:
        """Every producer's health, for the rules that compare a producer with the others."""
        return [p.health for p in self._peers.values()]

    def _change(self, transition, *args):
        """Apply a state transition of :mod:`pxdbg.consumer.health` under the lock (other threads read states)."""
        with self._cv:
            out = transition(*args)
            self._cv.notify_all()
        return out

    def _unhedge(self, endpoint: str) -> None:
        for idx in [i for i, ep in self._hedged.items() if ep == endpoint]:
            del self._hedged[idx]

    def _quarantine(self, peer: Peer, why: str, now: float, identity: bool = False, for_run: bool = False) -> None:
        if peer.state == QUARANTINED:  # it keeps its quarantine (for good, if for_run)
            health.quarantine(peer.health, now, self.policy, why, for_run)
            return
        lost = self._change(
            health.quarantine, peer.health, now, self.policy, ("identity: " if identity else "") + why, for_run
        )
        self._unhedge(peer.endpoint)
        log.warning(
            "producer %s quarantined for %s: %s; re-issuing its %d outstanding frame(s) elsewhere",
            peer.endpoint,
            "the run" if for_run else f"{peer.health.quarantined_until - now:.0f} s",
            why,
            len(lost),
        )
        self.counters["producers_quarantined"] += 1
        self.counters["frames_reissued"] += len(lost)
        peer.close_socket(say_bye=True)

    def _peer_lost(self, peer: Peer, why: str, reconnect: bool = True, drained: bool = False) -> None:
        """It is gone (``drained``: it shut down cleanly, an INFO and its own counter); what it owed goes elsewhere;
        a fresh connection waits for it (or a successor) to say welcome."""
        lost = self._change(health.lose, peer.health, why, drained)
        self._unhedge(peer.endpoint)
        if drained:
            log.info(
                "producer %s shut down (%s); re-issuing its %d outstanding frame(s)", peer.endpoint, why, len(lost)
            )
            self.counters["producers_drained"] += 1
        else:
            log.warning("producer %s lost (%s); re-issuing its %d outstanding frame(s)", peer.endpoint, why, len(lost))
            self.counters["producer_failures"] += 1
        self.counters["frames_reissued"] += len(lost)
        if reconnect:  # a fresh socket: nothing queued for the lost process is delivered to a new one
            peer.reset_socket(self._ctx, self.transport)

    def _check_workers(self) -> None:
        gone = self._workers.exited()
        for w in gone:
            peer = self._peers.get(w.endpoint)
            if peer is not None and not peer.process_exited:
                peer.process_exited = True
                log.error("local producer %d exited with code %s:\n%s", w.index, w.process.returncode, w.log_tail())
                if peer.state != CONNECTING or peer.health.outstanding:
                    self._peer_lost(peer, f"process exited with code {w.process.returncode}")
        if gone and len(gone) == len(self._workers.workers):
            w = gone[0]
            self._fail(
                ProducerFailure(
                    f"all {len(gone)} local producer(s) exited; worker {w.index} "
                    f"(code {w.process.returncode}) said:\n{w.log_tail()}"
                )
            )

    def _no_usable_producer(self) -> PipelineError:
        peers = list(self._peers.values())
        text = "; ".join(f"{p.endpoint} {p.health.why.removeprefix('identity: ')}" for p in peers)
        if all(p.health.why.startswith("identity: ") for p in peers):
            return IdentityMismatchError(f"no producer serves the model asked for: producer {text}")
        return ProducerFailure(f"no usable producer left for stream {self.seed}: producer {text}")

    def _why_waiting(self, most: int = 3) -> list[str]:
        """Where this consumer waits and why each producer has not answered, e.g. "tcp://h:46997 (connection
        refused)", from the socket monitor (see :func:`pxdbg.shared.transport.why_no_answer`)."""
        waiting = [p for p in self._peers.values() if p.state == CONNECTING]
        if not waiting:
            where = str(self._source)[:200]
            return [where if self._peers else f"{where} (no producer is registered or resolved there)"]
        out = []
        for p in waiting[:most]:
            why = p.health.why or sockets.why_no_answer(p.endpoint, security.connection_state(self._ctx, p.endpoint))
            out.append(f"{p.endpoint[:200]} ({why})")
        if len(waiting) > most:
            out.append(f"and {len(waiting) - most} more")
        return out

    def _nobody_answered(self) -> NoProducerError:
        extra = ""
        if self._workers is not None:
            extra = " Local worker logs:\n" + "\n".join(
                f"--- worker {w.index}:\n{w.log_tail()}" for w in self._workers.workers
            )
        return NoProducerError(
            f"no producer answered within {self.connect_timeout:.0f} s: {'; '.join(self._why_waiting())}; "
            f"start producers there ('pxdbg produce --bind ...') or check the endpoints{extra}"
        )

    def _loads(self, peers: list[Peer], now: float = 0.0, trust_all: bool = False) -> list[credits.PeerLoad]:
        """What the planner knows of ``peers``. A producer under suspicion of being slow takes one frame at a
        time (unless ``trust_all``: the frames of a silent or draining producer must go somewhere, and being
        overtaken by a producer that then went silent is no sign of slowness); one whose speed is not known yet
        (it delivered nothing) at most its share of the window among the producers not quarantined, so the
        producer that welcomes first does not take the whole window."""
        suspects = set() if trust_all else set(self._hedged.values())
        usable = sum(p.state != QUARANTINED for p in self._peers.values())
        share = -(-self.prefetch // max(1, usable))
        return [
            credits.PeerLoad(
                p.endpoint,
                len(p.health.outstanding),
                p.health.seconds_per_frame,
                1
                if (p.endpoint in suspects or (p.health.slow_strikes and not trust_all))
                else min(self.prefetch, p.health.cap, share if p.health.seconds_per_frame is None else self.prefetch),
                p.health.latency,
                now - min(p.health.outstanding.values()) if p.health.outstanding else 0.0,
            )
            for p in peers
        ]

    def _hedge(self, now: float) -> None:
        """Ask a second producer for the stragglers of the window (:func:`credits.hedges`: overdue at their first
        producer beyond the others' typical latency, to a producer with spare credit, within the budget)."""
        if now < self._next_hedge:  # a look every few milliseconds is enough (the window may be 4096 frames)
            return
        self._next_hedge = now + HEDGE_CHECK_S
        working = [p for p in self._peers.values() if p.state in (ALIVE, DRAINING)]
        alive = [p for p in working if p.state == ALIVE]
        if len(alive) < 2 and not (alive and len(working) > len(alive)):
            return
        with self._cv:
            start = self._next
            ready = set(self._ready)
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
        # a draining producer's frames are asked elsewhere too at once: it may stop before sending them
        # and so are a silent producer's (it missed a pong: a partition or a stopped process, not slowness)
        draining = [p.endpoint for p in working if p.state == DRAINING or p.health.silent_since]
        if self._budget.ratio == 0 and not draining:
            return
        latency = {p.endpoint: p.health.latency for p in working}
        decided = credits.hedges(
            now,
            copies,
            latency,
            self._loads([p for p in alive if not p.health.silent_since], now, trust_all=bool(draining)),
            self._budget,
            factor=self.straggler_factor,
            min_age=self.straggler_min_s,
            initial_latency=INITIAL_LATENCY_S,
            urgent=draining,
        )
        for name, late in (("hedges_skipped_budget", decided.over_budget), ("hedges_skipped_busy", decided.no_spare)):
            fresh = set(late) - self._skipped[name]
            if fresh:
                self._skipped[name].update(fresh)
                self.counters[name] += len(fresh)
        for ep, indices in decided.asked.items():
            peer = self._peers[ep]
            if not self._try_send(peer, request_message(self.seed, indices), now):
                continue
            for i in indices:
                peer.health.outstanding[i] = now
                if decided.first[i] in draining:  # a re-issue the draining producer asked for, not a hedge
                    self.counters["frames_reissued"] += 1
                else:
                    self._hedged[i] = decided.first[i]
                    self.counters["hedged"] += 1
            log.info("frame(s) %s overdue; asked %s too", indices, ep)

    def _assign_credits(self, now: float) -> None:
        alive = [p for p in self._peers.values() if p.state == ALIVE and not p.health.silent_since]
        if not alive:
            return
        with self._cv:
            start = self._next
            taken = set(self._ready)
        for p in self._peers.values():
            taken.update(p.health.outstanding)
        plan = credits.plan(start, self.prefetch, self.end, taken, self._loads(alive))
        for p in alive:
            indices = plan.get(p.endpoint)
            if indices and self._try_send(p, request_message(self.seed, indices), now):
                for i in indices:
                    p.health.outstanding[i] = now

    def _account(self) -> None:
        with self._cv:
            start = self._next
            pending = {i for p in self._peers.values() for i in p.health.outstanding if i >= start}
            self._in_flight = len(self._ready) + len(pending - self._ready.keys())
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
