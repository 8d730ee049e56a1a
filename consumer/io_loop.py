"""The consumer's I/O thread: one loop that owns every producer socket (no other thread touches them).

Each pass polls the sockets, reads the clock once, hands what arrived to the message handlers
(:mod:`pxdbg.consumer.dispatch`), looks at every producer (:func:`pxdbg.consumer.health.assess`) and does what
the verdict implies (a loss, a quarantine, a fresh start: logs, counters, sockets), says what it waits for when
no producer answers, and asks for frames (:mod:`pxdbg.consumer.requests`). Frames go to the client's
:class:`~pxdbg.consumer.client.ReorderBuffer`; a failure of the run is put there for ``next()`` to raise.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import stat
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import zmq

from pxdbg.consumer import credits, health
from pxdbg.consumer.dispatch import MessageHandlers
from pxdbg.consumer.errors import IdentityMismatchError, NoProducerError, PipelineError, ProducerFailure
from pxdbg.consumer.health import PeerHealth
from pxdbg.consumer.options import MAX_PRODUCERS, WHOLE_FARM, ClientOptions
from pxdbg.consumer.peers import (
    ALIVE,
    CONNECTING,
    DRAINING,
    QUARANTINED,
    Peer,
    hello_message,
    open_socket,
    ping_message,
)
from pxdbg.consumer.requests import RequestPlanner
from pxdbg.consumer.subset import Subset
from pxdbg.consumer.workers import LocalWorkers
from pxdbg.shared import codecs, discovery, security
from pxdbg.shared import transport as sockets
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import ModelIdentity

if TYPE_CHECKING:
    from pxdbg.consumer.client import ReorderBuffer

log = logging.getLogger("pxdbg.consumer")
#: Hedged requests a consumer may make before it received any frame (its budget's bucket size): enough for a
#: producer that hangs from the start to be overtaken ``max_strikes`` (3) times and quarantined.
HEDGE_BURST = credits.HEDGE_BURST
#: Seconds without any producer after which a consumer says what it waits for.
WAITING_NOTICE_S = 2.0
#: Seconds a member of the subset may take to welcome us before another producer is tried in its place (only
#: while producers outside the subset are left to try): a live producer answers a hello in milliseconds.
SUBSET_PROBE_S = 2.0
#: Seconds after which a tcp member whose connections fail at once (refused) is replaced, likewise.
SUBSET_REFUSED_S = 0.2


class ConsumerIO(MessageHandlers, RequestPlanner):
    """The I/O thread of one :class:`~pxdbg.consumer.client.BackgroundClient` and the state only it touches:
    the producers (:attr:`peers`; their states change under the buffer's lock), the hedges, the audit, the
    counters. ``workers``: start that many local producer processes (then ``source`` is None)."""

    def __init__(
        self,
        options: ClientOptions,
        identity: ModelIdentity,
        buffer: ReorderBuffer,
        source: discovery.Source | None,
        workers: int | None = None,
    ) -> None:
        self.options = options
        self.policy = options.policy
        self.seed = options.seed
        self.prefetch = options.prefetch
        self.end = options.end
        self.transport = options.transport
        self.audit = options.audit or 0.0
        self.identity = identity
        self.identity_str = str(identity)
        self.counters: Counter = Counter()
        self.frames_per_producer: Counter = Counter()
        self.wire_bytes = 0
        self.wire_digits = 0
        self.peers: dict[str, Peer] = {}
        self.workers: LocalWorkers | None = None
        self._buffer = buffer
        self._source: discovery.Source | None = source  # set below from the workers when None
        self._audits: dict[int, dict[str, SparseFrame]] = {}  # frame index -> {producer: its copy}, held back
        self._ties: dict[int, float] = {}  # audited frames whose copies disagree -> when to stop awaiting a third
        self._forgers: set[str] = set()  # producers the audit caught: their copies are no evidence
        self._audit_rng = random.Random(os.urandom(16))  # a producer cannot tell which frames are audited
        # the producers used: a seeded subset of those the source resolves to; local workers are all used
        size = options.max_producers or MAX_PRODUCERS
        self.subset = Subset(
            size if workers is None else max(size, workers), key=options.subset_key or "", seed=self.seed
        )
        self._known: list[str] = []  # what the source resolved to last
        self._opened: dict[str, float] = {}  # endpoint -> when its current connection attempt began
        self._subset_drops: list[str] = []  # members to replace at the end of this pass
        self._set_aside: dict[str, PeerHealth] = {}  # quarantined producers out of the subset: their record
        self._restarting: set[str] = set()  # members that shut down cleanly and have not welcomed us since
        self._said_order: int | None = None  # order of magnitude of the farm size last logged
        self._large_farm = False  # used in subsets (without max_producers; see _sync_peers)
        self._next_hedge = 0.0
        self._hedged: dict[int, str] = {}  # frame index -> the producer it was first asked of (overdue there)
        # hedging's token bucket; the overdue frames already counted as skipped (each is counted once)
        self._budget = credits.HedgeBudget(ratio=options.hedge_budget or 0.0, burst=HEDGE_BURST)
        self._skipped: dict[str, set[int]] = {"hedges_skipped_budget": set(), "hedges_skipped_busy": set()}
        self._trim_at = 0.0
        self._waiting_said = False
        self._offered_codecs = codecs.available()  # what every hello of this consumer offers
        self._thread: threading.Thread | None = None
        self._wake_rx: zmq.Socket | None = None
        self._wake_tx: zmq.Socket | None = None
        self._ctx = zmq.Context()
        try:
            if workers is not None:
                self.workers = LocalWorkers(workers, options.spec)
                self._source = discovery.parse(self.workers.endpoints)
            wake_addr = f"inproc://pxdbg-wake-{id(self)}"
            self._wake_rx = self._ctx.socket(zmq.PAIR)
            self._wake_rx.bind(wake_addr)
            self._wake_tx = self._ctx.socket(zmq.PAIR)
            self._wake_tx.setsockopt(zmq.LINGER, 0)
            self._wake_tx.setsockopt(zmq.SNDHWM, 1)
            self._wake_tx.connect(wake_addr)
            assert self._source is not None  # given, or found from the local workers above
            self._next_refresh = time.monotonic() + self._source.refresh_interval
            self._sync_peers(self._source.resolve(), time.monotonic())
        except BaseException:
            self.stop()
            if self.workers is not None:
                self.workers.close()
            raise

    # -- the client's side: start, wake, stop -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._io_loop, name="pxdbg-consumer-io", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Make the loop run a pass now (a frame was consumed: the window moved). Never blocks."""
        assert self._wake_tx is not None  # made by __init__, which failed otherwise
        try:
            self._wake_tx.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:  # a wake-up is already queued (or the loop is gone)
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (the buffer says closing), wait up to ``timeout`` s for it, close every socket."""
        if self._thread is not None and self._thread.is_alive():
            self.wake()
            self._thread.join(timeout=timeout)
        if self._thread is None or not self._thread.is_alive():
            for sock in (self._wake_tx, self._wake_rx):
                if sock is not None:
                    sock.close(0)
            for peer in list(self.peers.values()):
                peer.close_socket()
            self._ctx.destroy(linger=0)  # closes whatever socket is left, so term() cannot hang

    # -- the loop ----------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        self._buffer.fail(exc)

    def _io_loop(self) -> None:
        try:
            self._io_run()
        except Exception as exc:  # an internal failure must reach next(), not vanish with the thread
            log.exception("consumer I/O thread failed")
            self._fail(PipelineError(f"consumer I/O thread failed: {exc!r}"))
        finally:
            for peer in self.peers.values():
                peer.close_socket(say_bye=True)

    def _sync_peers(self, endpoints: list[str], now: float) -> None:
        """Use the subset's choice of ``endpoints`` (what the source resolves to now): open a socket to each
        member that joined; close those that left it or vanished (what they owed is re-issued)."""
        with self._buffer.cv:
            known = dict(self.peers)
        before, self._known = set(self._known), list(endpoints)
        if self.options.max_producers is None and self.workers is None:  # the default: see ClientOptions
            # a farm counts as large from past WHOLE_FARM until it shrinks to half that: a restart in a farm of
            # nine must not open and close six connections of every consumer
            if len(endpoints) > WHOLE_FARM:
                self._large_farm = True
            elif len(endpoints) <= WHOLE_FARM // 2:
                self._large_farm = False
            self.subset.max_producers = MAX_PRODUCERS if self._large_farm else max(len(endpoints), 1)
        candidates = endpoints
        if len(endpoints) > self.subset.max_producers:
            # a producer quarantined for the run gives its place to another for good; where nothing else is
            # left (or all fit) it stays, and the run fails with its reason once no usable producer is left
            banned = {ep for ep, h in self._set_aside.items() if h.quarantined_until == math.inf}
            banned |= {ep for ep, p in known.items() if p.health.quarantined_until == math.inf}
            candidates = [ep for ep in endpoints if ep not in banned] or endpoints
        chosen = set(self.subset.choose(candidates, now))
        self.counters["producers_known"] = len(endpoints)
        self.counters["subset_size"] = len(chosen)
        self.counters["subset_changes"] = self.subset.changes
        if len(endpoints) > len(chosen):
            order = int(math.log10(len(endpoints)))
            if order != self._said_order:  # once per order of magnitude, not once per refresh
                self._said_order = order
                log.info("using %d of %d producers at %s (max_producers)", len(chosen), len(endpoints), self._source)
        for ep, peer in known.items():
            if ep in chosen:
                continue
            lost = peer.health.forget_work()
            self._unhedge(ep)
            self.counters["frames_reissued"] += len(lost)
            if ep not in endpoints:
                log.warning("producer %s vanished; re-issuing its %d outstanding frame(s)", ep, len(lost))
                self.counters["producers_vanished"] += 1
            else:
                log.debug("producer %s left this consumer's subset; re-issuing its %d frame(s)", ep, len(lost))
                self.counters["subset_left"] += 1
                if peer.state == QUARANTINED:  # its quarantine (and its doubling) holds if it is chosen again
                    self._set_aside[ep] = peer.health
            peer.close_socket(say_bye=True)
            self._opened.pop(ep, None)
            self._restarting.discard(ep)
            with self._buffer.cv:
                del self.peers[ep]
        for ep in endpoints:
            if ep not in chosen or ep in self.peers:
                continue
            aside = self._set_aside.pop(ep, None)
            if aside is not None and aside.state == QUARANTINED:
                peer = Peer(ep, None, aside)  # a socket once its quarantine is over (_keep_alive)
            else:
                try:
                    sock = open_socket(self._ctx, ep, self.transport)
                except zmq.ZMQError as exc:  # out of sockets or file descriptors: use the ones we have
                    self.counters["producers_skipped"] += 1
                    log.warning("cannot open a socket to producer %s (%s); skipping it", ep[:200], exc)
                    continue
                peer = Peer(ep, sock)
            self._opened[ep] = now
            with self._buffer.cv:
                self.peers[ep] = peer
            if before and ep not in before:
                log.info("producer %s appeared", ep)
        for ep in [ep for ep in self._set_aside if ep not in chosen and ep not in endpoints]:
            del self._set_aside[ep]
        self.counters["most_producers_held"] = max(self.counters["most_producers_held"], len(self.peers))

    def _leave_subset(self, endpoint: str) -> None:
        """``endpoint`` was lost, quarantined, or never welcomed us: the subset is chosen again at the end of
        this pass (:meth:`_apply_subset_drops`), with a replacement where the farm has one."""
        self._subset_drops.append(endpoint)

    def _probe_subset(self, now: float) -> None:
        """Drop members that have not welcomed us in time while producers outside the subset are left to try:
        refused (no ipc socket file: at once; the tcp monitor says each attempt fails: after
        :data:`SUBSET_REFUSED_S`) or silent for :data:`SUBSET_PROBE_S`. So a directory full of dead entries is
        walked in seconds instead of each one being waited on."""
        if len(self._known) <= len(self.subset.current):  # nobody outside the subset to try instead
            return
        late = []
        for ep, peer in self.peers.items():
            if peer.state != CONNECTING or (
                ep in self._restarting and self._source is not None and self._source.dynamic
            ):
                continue  # a restarting producer's entry goes while it is down, and brings it back when it is up
            age = now - self._opened.get(ep, now)
            if age >= SUBSET_PROBE_S or self._refused(ep, age):
                late.append(ep)
        if late and set(self._known) - set(self.subset.current) - set(self.subset.held(now)):
            self.counters["subset_probes_failed"] += len(late)
            self._subset_drops.extend(late)

    def _refused(self, endpoint: str, age: float) -> bool:
        """Whether connections to ``endpoint`` (tried for ``age`` seconds) fail at once: nothing listens there."""
        if endpoint.startswith("ipc://"):  # no socket file: certain at once
            try:
                return not stat.S_ISSOCK(os.stat(endpoint[len("ipc://") :]).st_mode)
            except OSError:
                return True
        # the monitor's state may still be that of an earlier connection to it until this one has tried
        return age >= SUBSET_REFUSED_S and security.connection_state(self._ctx, endpoint) == "failing"

    def _apply_subset_drops(self, now: float) -> None:
        if not self._subset_drops:
            return
        for ep in dict.fromkeys(self._subset_drops):
            self.subset.drop(ep, now)
        self._subset_drops.clear()
        self._sync_peers(self._known, now)

    def _io_run(self) -> None:
        last_alive = time.monotonic()
        hello = hello_message(self.identity, f"{socket.gethostname()}:{os.getpid()}")
        ping = ping_message()
        source, wake_rx = self._source, self._wake_rx
        assert source is not None and wake_rx is not None  # both made by __init__, which failed otherwise
        poller: zmq.Poller | None = None
        polled: list[zmq.Socket] | None = None
        tick = int(min(self.policy.heartbeat_interval / 2, 0.05) * 1000) or 1
        while True:
            with self._buffer.cv:
                if self._buffer.closing:
                    return
            peers = list(self.peers.values())
            open_sockets = [p.sock for p in peers if p.sock is not None]
            if open_sockets != polled:  # rebuilt only when a socket was replaced, added or dropped
                poller, polled = zmq.Poller(), open_sockets
                poller.register(wake_rx, zmq.POLLIN)
                for sock in open_sockets:
                    poller.register(sock, zmq.POLLIN)
            assert poller is not None  # built on the first pass: polled starts as None
            events = dict(poller.poll(tick))
            if wake_rx in events:
                while True:
                    try:
                        wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            now = time.monotonic()  # the one clock reading of this pass: every decision below is made at `now`
            if source.dynamic and now >= self._next_refresh:
                self._next_refresh = now + source.refresh_interval
                self._sync_peers(source.resolve(), now)  # new peers join the next pass
            for peer in peers:
                if peer.sock is not None and peer.sock in events:
                    self._drain(peer, now)
            if self.workers is not None:
                self._check_workers()
            others = self._healths()
            for peer in peers:
                self._keep_alive(peer, now, hello, ping, others)
            if self._buffer.error is not None:
                return
            self._probe_subset(now)
            self._apply_subset_drops(now)
            if self._ties:
                self._break_ties(now)
            usable = [p for p in self.peers.values() if p.state != QUARANTINED]
            if self.peers and not usable and not source.dynamic:
                self._fail(self._no_usable_producer())
                return
            if any(p.state in (ALIVE, DRAINING) for p in self.peers.values()):
                last_alive = now
                self._waiting_said = False
            elif (refused := security.refusal(self._ctx, list(self.peers))) is not None:  # every producer said no
                self._fail(security.AuthenticationRefused(refused))
                return
            elif now - last_alive > self.options.connect_timeout:
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
                    logging.INFO if self.workers is not None else logging.WARNING,  # local ones take time to start
                    "no producer has answered %s; waiting up to %.0f s in all (connect_timeout)",
                    where_text,
                    self.options.connect_timeout,
                )
            if self._trim_at and now >= self._trim_at:  # see MessageHandlers._drain
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
            self._opened[peer.endpoint] = now
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

    def _overtaken(self, endpoint: str, now: float) -> None:
        """Another producer delivered a frame first that ``endpoint`` was asked of and was overdue with."""
        self.counters["hedges_won"] += 1
        peer = self.peers.get(endpoint)
        if peer is None:
            return
        verdict = health.on_overtaken(peer.health, now, self.policy, self._healths())
        if verdict.quarantine_now:
            self._quarantine(peer, verdict.reason, now)

    def _healths(self) -> list[PeerHealth]:
        """Every producer's health, for the rules that compare a producer with the others."""
        return [p.health for p in self.peers.values()]

    def _change(self, transition, *args):
        """Apply a state transition of :mod:`pxdbg.consumer.health` under the lock (other threads read states)."""
        with self._buffer.cv:
            out = transition(*args)
            self._buffer.cv.notify_all()
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
        self._restarting.discard(peer.endpoint)
        self._leave_subset(peer.endpoint)

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
            self._opened[peer.endpoint] = time.monotonic()
            # a clean shutdown is a restart: its entry goes and comes back with it, so it is not held out
            # (held out, a rolling restart moved every consumer away and back and raised the simulated p99 wait)
            if drained:
                self._restarting.add(peer.endpoint)
            else:
                self._restarting.discard(peer.endpoint)
                self._leave_subset(peer.endpoint)

    def _check_workers(self) -> None:
        workers = self.workers
        assert workers is not None  # called only for a client with local workers
        gone = workers.exited()
        for w in gone:
            peer = self.peers.get(w.endpoint)
            if peer is not None and not peer.process_exited:
                peer.process_exited = True
                log.error("local producer %d exited with code %s:\n%s", w.index, w.process.returncode, w.log_tail())
                if peer.state != CONNECTING or peer.health.outstanding:
                    self._peer_lost(peer, f"process exited with code {w.process.returncode}")
        if gone and len(gone) == len(workers.workers):
            w = gone[0]
            self._fail(
                ProducerFailure(
                    f"all {len(gone)} local producer(s) exited; worker {w.index} "
                    f"(code {w.process.returncode}) said:\n{w.log_tail()}"
                )
            )

    def _no_usable_producer(self) -> PipelineError:
        peers = list(self.peers.values())
        text = "; ".join(f"{p.endpoint} {p.health.why.removeprefix('identity: ')}" for p in peers)
        if all(p.health.why.startswith("identity: ") for p in peers):
            return IdentityMismatchError(f"no producer serves the model asked for: producer {text}")
        return ProducerFailure(f"no usable producer left for stream {self.seed}: producer {text}")

    def _why_waiting(self, most: int = 3) -> list[str]:
        """Where this consumer waits and why each producer has not answered, e.g. "tcp://h:46997 (connection
        refused)", from the socket monitor (see :func:`pxdbg.shared.transport.why_no_answer`)."""
        waiting = [p for p in self.peers.values() if p.state == CONNECTING]
        if not waiting:
            where = str(self._source)[:200]
            return [where if self.peers else f"{where} (no producer is registered or resolved there)"]
        out = []
        for p in waiting[:most]:
            why = p.health.why or sockets.why_no_answer(p.endpoint, security.connection_state(self._ctx, p.endpoint))
            out.append(f"{p.endpoint[:200]} ({why})")
        if len(waiting) > most:
            out.append(f"and {len(waiting) - most} more")
        return out

    def _nobody_answered(self) -> NoProducerError:
        extra = ""
        if self.workers is not None:
            extra = " Local worker logs:\n" + "\n".join(
                f"--- worker {w.index}:\n{w.log_tail()}" for w in self.workers.workers
            )
        return NoProducerError(
            f"no producer answered within {self.options.connect_timeout:.0f} s: {'; '.join(self._why_waiting())}; "
            f"start producers there ('pxdbg produce --bind ...') or check the endpoints{extra}"
        )
