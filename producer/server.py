"""ProducerServer: serves frames of one model identity to any number of consumers.

Three threads. The network thread owns the ROUTER socket: it checks every message against the protocol's
schema (anything malformed is counted and dropped), answers hello/ping/status at once (so heartbeats flow while
the model computes), queues requests per consumer (:mod:`~pxdbg.producer.queues`), hands each consumer's frames
to its socket without waiting on any other, and forgets peers by :mod:`~pxdbg.producer.peer_policy`. The
generation thread takes up to ``max_batch`` frames round robin across consumers and runs one model call; the post
thread (:mod:`~pxdbg.producer.post`) encodes them in each consumer's codec while the next batch computes. A
generation failure is shipped back to the consumers that asked, as an ``error`` message.

Shutdown: :meth:`ProducerServer.shutdown` (SIGTERM or SIGINT in ``pxdbg produce``) drains: no more requests
are taken, queued ones are listed to their consumers in a ``goodbye`` (they re-issue them elsewhere at once),
batches in progress are finished and sent within ``grace`` seconds, then a final ``goodbye`` and the loop ends.
:meth:`ProducerServer.stop` (or a second signal, or the death of ``parent_pid``) ends it at once. The generation
thread is joined with a timeout and sockets close with a bounded linger.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
import traceback

import zmq

from pxdbg.producer import peer_policy
from pxdbg.producer.post import PostThread
from pxdbg.producer.queues import ConsumerQueues, LimitError
from pxdbg.producer.stats import ProducerStats
from pxdbg.shared import codecs, protocol, security, transport
from pxdbg.shared.sparselog import warn_sparsely
from pxdbg.shared.spec import TransportOptions

log = logging.getLogger("pxdbg.producer")

#: Default most frames asked but not yet sent, per consumer (the largest consumer prefetch fits).
MAX_PENDING_PER_CONSUMER = protocol.MAX_INDICES_PER_REQUEST
#: Default most consumers one producer serves at once.
MAX_CONSUMERS = 256
#: Longest routing id libzmq gives a peer, bytes (a peer may choose its own, up to 255 bytes).
MAX_ROUTING_ID = 256
#: Messages libzmq may hold for one consumer's connection: the rest wait in that consumer's own send queue.
SEND_HWM = 16


class ProducerServer:
    """Serve ``model`` on ``bind`` (one endpoint or a list).

    Limits (settings; a consumer over one gets an ``error`` that says so, the others are unaffected):
    ``max_consumers`` served at once (at most ``max_per_address`` from one IP address, default half of them, so
    one host cannot take every slot); ``max_pending`` frames asked but not yet sent per consumer. Consumers idle
    after their hello for ``hello_timeout`` seconds, silent for ``client_timeout`` seconds, or not reading for
    ``stall_timeout`` seconds (:func:`~pxdbg.producer.peer_policy.stale_consumers`) are forgotten with their
    frames (they say hello again if they come back).
    ``grace``: seconds a shutdown may take to finish batches in progress.
    """

    def __init__(
        self,
        model,
        bind: str | list[str],
        *,
        max_batch: int = 8,
        client_timeout: float = 30.0,
        hello_timeout: float = 10.0,
        parent_pid: int | None = None,
        report_interval: float = 60.0,
        max_pending: int = MAX_PENDING_PER_CONSUMER,
        max_consumers: int = MAX_CONSUMERS,
        max_per_address: int | None = None,
        max_unsent: int | None = None,
        stall_timeout: float = 30.0,
        grace: float = 10.0,
        send_hwm: int = SEND_HWM,
        transport_options: TransportOptions | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        peer_policy.check_seconds(
            client_timeout=client_timeout, hello_timeout=hello_timeout, stall_timeout=stall_timeout, grace=grace
        )
        self.model = model
        self.identity = model.identity
        self.identity_str = str(model.identity)
        self.endpoints = [bind] if isinstance(bind, str) else list(bind)
        for ep in self.endpoints:
            transport.check_endpoint(ep, bind=True)
        self.max_batch = max_batch
        self.client_timeout = client_timeout
        self.hello_timeout = hello_timeout
        self._status_limit = peer_policy.RateLimit(peer_policy.STATUS_PER_S, peer_policy.STATUS_BURST)
        self.stall_timeout = stall_timeout
        self.grace = grace
        self.parent_pid = parent_pid
        self.report_interval = report_interval
        self.send_hwm = send_hwm
        self.transport_options = transport_options or TransportOptions()
        self.stats = ProducerStats()
        self.queues = ConsumerQueues(
            max_consumers=max_consumers,
            max_pending=max_pending,
            max_unsent=max_unsent or max(16, 2 * max_batch),
            max_per_address=max_per_address or max(1, max_consumers // 2),
        )
        self.codecs = codecs.available()
        self._stop = threading.Event()
        self._drain_asked = threading.Event()
        self._draining_since: float | None = None
        self._serving = False
        self._started = self._last_progress = time.monotonic()
        self._inproc = f"inproc://pxdbg-results-{id(self)}"
        self.allow_list: security.AllowList | None = None
        self._trim_memory = False
        self._banned = peer_policy.BanList()  # senders of oversized messages
        self._info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": str(getattr(model, "device", "?")),
            "max_batch": max_batch,
        }

    # -- public -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """End serving at once (frames in progress are not sent)."""
        self._stop.set()
        self.queues.stop()

    def shutdown(self) -> None:
        """Drain and stop (see the module's docstring); a second call stops at once. Safe in a signal handler."""
        if self._drain_asked.is_set():
            self.stop()
        self._drain_asked.set()

    def snapshot(self) -> dict:
        """A point-in-time copy of this producer's numbers (for metrics, health checks and ``status``)."""
        now = time.monotonic()
        counters, histograms = self.stats.snapshot()
        counters = {**counters, **(self.allow_list.counters() if self.allow_list else {"refused_auth": 0})}
        return {
            "identity": self.identity_str,
            "host": self._info["host"],
            "pid": self._info["pid"],
            "device": self._info["device"],
            "endpoints": list(self.endpoints),
            "uptime_s": now - self._started,
            "ready": self._serving and self._draining_since is None and not self._stop.is_set(),
            "last_progress_s": now - self._last_progress,
            "consumers": len(self.queues),
            "pending": self.queues.pending(),
            "counters": counters,
            "histograms": histograms,
        }

    def serve(self, ready: threading.Event | None = None) -> None:
        """Serve until :meth:`stop`, the end of a :meth:`shutdown`, or the parent process's death."""
        ctx = zmq.Context()
        sock = results = gen = None
        try:
            sock = transport.router(ctx, self.endpoints, self.transport_options, sndhwm=self.send_hwm)
            self.allow_list = security.allow_list(sock)  # CURVE: refused handshakes, for snapshot()
            self.endpoints = transport.bound_endpoints(sock, self.endpoints)
            results = ctx.socket(zmq.PAIR)
            results.bind(self._inproc)
            gen = threading.Thread(target=self._generation_loop, args=(ctx,), name="pxdbg-generate", daemon=True)
            gen.start()
            log.info(
                "serving %s on %s (max batch %d, pid %d, wire codecs: %s)",
                self.identity_str,
                ", ".join(self.endpoints),
                self.max_batch,
                os.getpid(),
                ", ".join(self.codecs) or "none",
            )
            self._started = self._last_progress = time.monotonic()
            self._serving = True
            if ready is not None:
                ready.set()
            self._network_loop(sock, results)
        finally:
            self._serving = False
            self.stop()
            if gen is not None:
                gen.join(timeout=30)
                if gen.is_alive():
                    log.warning("generation thread did not finish within 30 s; exiting anyway")
            for s in (sock, results):
                if s is not None:
                    s.close(self.transport_options.linger_ms)
            if gen is None or not gen.is_alive():  # a socket still open in a stuck thread would hang term()
                ctx.term()
            log.info("stopped; %s", self.stats.counters)

    # -- network thread ---------------------------------------------------------------------------------
    def _network_loop(self, sock: zmq.Socket, results: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        next_housekeeping = 0.0
        next_report = time.monotonic() + self.report_interval
        sent_at_report = 0
        blocked = False
        while not self._stop.is_set():
            events = dict(poller.poll(10 if blocked else 100))
            if sock in events:
                for _ in range(1000):  # drain, but let results through under a flood of requests
                    try:
                        # routing id, header, and one more part to tell "unexpected buffers"; past that, the
                        # parts are dropped as they are read (a 400-part message is not held whole)
                        frames, dropped = transport.recv_bounded(
                            sock, max_parts=3, max_bytes=MAX_ROUTING_ID + 2 * protocol.MAX_REQUEST_MESSAGE, copy=False
                        )
                    except zmq.Again:
                        break
                    parts = [f.bytes for f in frames]
                    if dropped:
                        self._oversized(parts[0], dropped)
                        continue
                    if self._banned.banned(parts[0], time.monotonic()):
                        self.stats.count("messages_from_banned_peers")
                        continue
                    try:
                        self._handle(sock, parts, frames[0])
                    except Exception:  # a bug here must not take the producer down with it
                        log.exception("internal error while handling a message")
                        self.stats.count("internal_errors")
            if results in events:
                self._collect(results)
            blocked = self._flush(sock)
            now = time.monotonic()
            if self._drain_asked.is_set():
                self._drain(sock, now)
            if now >= next_housekeeping:
                next_housekeeping = now + 0.5
                self._expire(now)
                if self._trim_memory:
                    self._trim_memory = False
                    transport.release_freed_memory()
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("parent process %d is gone; stopping", self.parent_pid)
                    self.stop()
            if now >= next_report:  # numbers for the people who run the farm
                sent = self.stats["frames_sent"]
                log.info(
                    "%d consumers, %.1f frames/s over the last %.0f s, %d frames sent in all, %d pending, "
                    "model %.1f s, post-processing %.1f s in all",
                    len(self.queues),
                    (sent - sent_at_report) / self.report_interval,
                    self.report_interval,
                    sent,
                    self.queues.pending(),
                    self.stats.model_s,
                    self.stats.post_s,
                )
                next_report, sent_at_report = now + self.report_interval, sent

    def _collect(self, results: zmq.Socket) -> None:
        """Finished frames and errors from the post thread, into their consumers' send queues."""
        while True:
            try:
                parts = results.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            cid, serial = parts[0].bytes, int.from_bytes(parts[1].bytes, "little")
            if not self.queues.to_outbox(cid, serial, [cid, *parts[2:]]):
                self.stats.count("frames_for_gone_consumers")

    def _flush(self, sock: zmq.Socket) -> bool:
        """Hand each consumer's waiting messages to its socket, independently; True if some socket is full."""
        blocked = False
        now = time.monotonic()
        for consumer in self.queues.consumers():
            while consumer.outbox:
                try:
                    sock.send_multipart(consumer.outbox[0], zmq.NOBLOCK, copy=False)
                except zmq.Again:  # its pipe is full: it reads slowly, or not at all
                    if consumer.blocked_since is None:
                        consumer.blocked_since = now
                    blocked = True
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    self.stats.count("sends_to_gone_consumer")
                    self._forget(consumer.cid, "its connection is gone")
                    break
                self.queues.sent_one(consumer)
                self.stats.count("frames_sent")
        return blocked

    def _send(self, sock: zmq.Socket, cid: bytes, msg: bytes) -> None:
        """A small reply (welcome, pong, error, snapshot): dropped if the consumer's pipe is full or gone."""
        try:
            sock.send_multipart([cid, msg], zmq.NOBLOCK)
        except zmq.Again:
            self.stats.count("replies_dropped")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats.count("sends_to_gone_consumer")
            self._forget(cid, "its connection is gone")

    def _oversized(self, cid: bytes, dropped: int) -> None:
        """A message far beyond any request: its sender is forgotten and ignored for a while."""
        self._bad("oversized_messages", f"a message with {dropped} parts beyond the bound; its sender is ignored")
        self._forget(cid, "it sent an oversized message")
        self._trim_memory = True  # after the whole message is read (the housekeeping pass)
        self._banned.ban(cid, time.monotonic())

    def _bad(self, kind: str, detail: str) -> None:
        n = self.stats.count(kind)
        warn_sparsely(log, n, "%s (%d so far): %s", kind.replace("_", " "), n, detail)

    def _handle(self, sock: zmq.Socket, parts: list, first: zmq.Frame | None = None) -> None:
        """One message: ``parts`` as bytes (routing id first); ``first``: its first part as received (it knows
        the sender's address)."""
        cid = parts[0]
        if len(parts) < 2:
            return self._bad("malformed_messages", "a message without a header")
        try:
            header = protocol.unpack(parts[1], any_version=True)
        except protocol.ProtocolError as exc:
            return self._bad("malformed_messages", str(exc))
        kind = header["t"]
        if kind not in protocol.TO_PRODUCER:
            return self._bad("unexpected_messages", f"message type {kind!r}")
        if len(parts) > 2:
            return self._bad("malformed_messages", f"a {kind!r} message with {len(parts) - 2} unexpected buffers")
        if kind == protocol.HELLO:
            return self._on_hello(sock, cid, header, _peer_ip(first))
        if kind == protocol.STATUS:
            if not self._status_limit.allow(cid, time.monotonic()):
                self.stats.count("status_rate_limited")
                return None
            return self._send(sock, cid, protocol.snapshot(self.snapshot()))
        if not protocol.MIN_PROTOCOL_VERSION <= header["v"] <= protocol.PROTOCOL_VERSION:
            return self._bad("malformed_messages", f"a {kind!r} message of protocol version {header['v']}")
        consumer = self.queues.get(cid)
        if consumer is not None:
            consumer.last_seen = time.monotonic()
            consumer.active = True
        if kind == protocol.PING:
            if consumer is None:  # we forgot it (or restarted): make it say hello again
                self._send(
                    sock,
                    cid,
                    protocol.error("unknown consumer", code=protocol.E_UNKNOWN_CONSUMER, fatal=False, rehello=True),
                )
            else:
                self._send(sock, cid, protocol.pong())
        elif kind == protocol.REQUEST:
            if consumer is None:
                return self._bad("requests_before_hello", "a request from a consumer that did not say hello")
            self._on_request(sock, cid, header)
        elif kind == protocol.BYE:
            self._forget(cid, None)

    def _on_hello(self, sock: zmq.Socket, cid: bytes, header: dict, address: str | None = None) -> None:
        try:
            hello = protocol.parse_hello(header)
        except protocol.ProtocolError as exc:
            return self._bad("malformed_messages", str(exc))
        version = protocol.negotiate_version(hello.versions)
        if version is None:
            self._bad("version_mismatches", protocol.version_mismatch(hello.versions))
            return self._send(
                sock,
                cid,
                protocol.error(protocol.version_mismatch(hello.versions), code=protocol.E_VERSION, version=header["v"]),
            )
        if self._draining_since is not None:
            return self._send(sock, cid, protocol.goodbye("the producer is shutting down", final=True))
        existing = self.queues.get(cid)
        codec = codecs.negotiate(hello.codecs, self.codecs)
        if existing is None:
            try:
                consumer = self.queues.add(cid, hello.client, codec, version, time.monotonic(), address=address)
            except LimitError as exc:
                self._bad("consumers_over_limit", str(exc))
                return self._send(sock, cid, protocol.error(str(exc), code=protocol.E_LIMIT))
            log.info("consumer %s connected (protocol %d, wire codec %s)", consumer.name, version, codec or "none")
        else:  # a hello again is no sign of use: a peer that only says hello keeps no slot for long
            codec = existing.codec  # frames already queued keep their codec
        self._send(sock, cid, protocol.welcome(self.identity.as_dict(), self._info, version=version, codec=codec))

    def _on_request(self, sock: zmq.Socket, cid: bytes, header: dict) -> None:
        seed, indices = header["seed"], header["idx"]
        if self._draining_since is not None:
            self._send(
                sock, cid, protocol.goodbye("the producer is shutting down", final=False, dropped={seed: indices})
            )
            return
        refused = self.queues.submit(cid, seed, indices)
        self.stats.count("frames_requested", len(indices) - len(refused))
        if refused:
            limit = self.queues.max_pending
            self._bad("requests_over_limit", f"{len(refused)} frames beyond {limit} pending for one consumer")
            self.stats.count("frames_refused_over_limit", len(refused))
            self._send(
                sock,
                cid,
                protocol.error(
                    f"more than {limit} frames asked and not yet received from this producer; ask for fewer at once "
                    f"(--prefetch {limit} or less)",
                    code=protocol.E_LIMIT,
                    seed=seed,
                    indices=refused,
                ),
            )

    def _forget(self, cid: bytes, why: str | None, counter: str | None = None, sparse: bool = True) -> None:
        """Forget a consumer (``why`` None: it said bye); ``counter``: count it there, and log it sparsely unless
        ``sparse`` is False (a flood of squatters or oversized messages must not flood the log)."""
        consumer = self.queues.remove(cid)
        if consumer is None:
            return
        text = f"consumer {consumer.name} forgotten ({why}); {consumer.pending} pending frames dropped"
        if why is None:
            log.info("consumer %s left; %d pending frames dropped", consumer.name, consumer.pending)
        elif counter is not None and sparse:
            self._bad(counter, text)
        else:
            if counter is not None:
                self.stats.count(counter)
            log.warning("%s", text)

    def _expire(self, now: float) -> None:
        timeouts = (self.hello_timeout, self.client_timeout, self.stall_timeout)
        for v in peer_policy.stale_consumers(self.queues.consumers(), now, *timeouts):
            self._forget(v.cid, v.why, v.counter, sparse=v.sparse)

    def _drain(self, sock: zmq.Socket, now: float) -> None:
        if self._draining_since is None:
            self._draining_since = now
            dropped = self.queues.close()
            for cid, frames in dropped.items():
                self._send(sock, cid, protocol.goodbye("the producer is shutting down", final=False, dropped=frames))
            log.info(
                "shutting down: %d queued frames handed back to their consumers, finishing the batches in "
                "progress (at most %.0f s)",
                sum(len(v) for d in dropped.values() for v in d.values()),
                self.grace,
            )
            return
        if self.queues.busy() and now - self._draining_since < self.grace:
            return
        for consumer in self.queues.consumers():
            self._send(sock, consumer.cid, protocol.goodbye("the producer is shutting down", final=True))
        log.info("shut down after %.1f s", now - self._draining_since)
        self.stop()

    # -- generation thread ------------------------------------------------------------------------------
    def _generation_loop(self, ctx: zmq.Context) -> None:
        """Run the model; a post thread encodes and sends, so the next batch computes meanwhile."""
        post = PostThread(
            ctx,
            self._inproc,
            self.model.encode,  # the model's wire path, the one the bench times
            self.stats,
            self._stop,
            linger_ms=self.transport_options.linger_ms,
            on_dead=self.stop,
        )
        post.start()
        try:
            while not self._stop.is_set():
                batch = self.queues.take(self.max_batch)
                if not batch:
                    continue
                t0 = time.perf_counter()
                try:
                    frames = self.model.wire_frames_for([(w.seed, w.idx) for w in batch])
                except Exception as exc:
                    log.error("generation failed for %d frames: %s", len(batch), exc)
                    self.stats.count("generation_errors")
                    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    post.hand_over("error", batch, (protocol.E_GENERATION, text))
                    continue
                self.stats.histograms["model_seconds"].observe(time.perf_counter() - t0)
                self.stats.histograms["batch_size"].observe(len(batch))
                self.stats.count("frames_generated", len(batch))
                self._last_progress = time.monotonic()
                post.hand_over("frames", batch, frames)
        finally:
            post.finish()


def _peer_ip(frame: zmq.Frame | None) -> str | None:
    """The IP address a message came from (tcp), or None (ipc, inproc, unknown)."""
    if frame is None:
        return None
    try:
        address = frame.get("Peer-Address")
        ipaddress.ip_address(address)
    except (zmq.ZMQError, ValueError, TypeError):
        return None
    return address if isinstance(address, str) else None  # a string property; ip_address also takes ints
