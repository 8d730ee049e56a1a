"""BackgroundClient: the consumer's side of the pipeline. Imports no torch.

A background I/O thread keeps, per consumer, at most ``prefetch`` frames requested but not yet consumed
(credit-based flow control), spread over the producers; it receives, checks and decodes frames into a
reorder buffer, heartbeats every producer, and re-issues a dead producer's outstanding frames to the others.
:meth:`BackgroundClient.next` hands out frame ``first_frame``, ``first_frame + 1``, ... in order; when the
pipeline is warm it only takes a decoded frame from the buffer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import zmq

from pxdbg.consumer.workers import LocalWorkers
from pxdbg.shared import protocol
from pxdbg.shared import transport as sockets
from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.seeding import check_seed
from pxdbg.shared.spec import ProducerSpec, TransportOptions

log = logging.getLogger("pxdbg.consumer")


class PipelineError(PxdbgError, RuntimeError):
    """Base class of the errors a :class:`BackgroundClient` raises."""


class NoProducerError(PipelineError, TimeoutError):
    """No producer answered within the connect timeout."""


class IdentityMismatchError(PipelineError):
    """A producer serves another model identity than the one asked for."""


class ProducerFailure(PipelineError):
    """A producer failed to generate a frame (its error is in the message), or a worker process died."""


class FrameTimeoutError(PipelineError, TimeoutError):
    """Producers are alive, but the next frame did not arrive within the frame timeout."""


_CONNECTING, _ALIVE = "connecting", "alive"


@dataclass
class _Peer:
    endpoint: str
    sock: zmq.Socket
    state: str = _CONNECTING
    last_recv: float = 0.0
    last_sent: float = 0.0
    outstanding: set = field(default_factory=set)
    info: dict = field(default_factory=dict)
    deaths: int = 0
    process_exited: bool = False  # a local worker's process exit was seen and reported


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


class BackgroundClient:
    """Frames of one stream, in order, from local workers or a producer farm.

    Give either ``endpoints`` (producers to connect to) or ``workers`` (how many local producer processes to
    start). Timeouts are in seconds: ``heartbeat_timeout`` (a silent producer is declared dead),
    ``connect_timeout`` (no producer at all: :class:`NoProducerError`), ``frame_timeout`` (producers alive but
    the next frame does not come: :class:`FrameTimeoutError`).
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
        prefetch: int = 16,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 5.0,
        connect_timeout: float = 60.0,
        frame_timeout: float = 600.0,
        **spec_keywords,
    ) -> None:
        unknown = set(spec_keywords) - set(_SPEC_KEYWORDS)
        if unknown:
            raise TypeError(f"BackgroundClient() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        if spec is not None and spec_keywords:
            raise ConfigError(f"give either spec or {', '.join(sorted(spec_keywords))}, not both")
        if spec is None:
            spec = ProducerSpec(**{k: v for k, v in spec_keywords.items() if v is not None})
        self.spec = spec
        self.transport = transport if transport is not None else TransportOptions()
        if (endpoints is None) == (workers is None):
            raise ConfigError("give either endpoints (a producer farm) or workers (local producers), not both")
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if endpoints is not None and not endpoints:
            raise ConfigError("no producer endpoints given")
        if not 1 <= prefetch <= protocol.MAX_INDICES_PER_REQUEST:
            raise ConfigError(f"prefetch must be in 1..{protocol.MAX_INDICES_PER_REQUEST}, got {prefetch}")
        if first_frame < 0:
            raise ConfigError("first_frame must be non-negative")
        if heartbeat_timeout <= 2 * heartbeat_interval:
            raise ConfigError("heartbeat_timeout must exceed twice the heartbeat_interval")
        self.seed = check_seed(seed)
        self.first_frame = first_frame
        self.prefetch = prefetch
        self.identity = spec.identity()
        self.identity_str = str(self.identity)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.frame_timeout = frame_timeout
        self.counters: Counter = Counter()
        self.frames_per_producer: Counter = Counter()
        self.waits = array("d")
        self.wire_bytes = 0
        self.wire_digits = 0

        self._cv = threading.Condition()
        self._ready: dict[int, SparseFrame] = {}
        self._next = first_frame
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._retries: Counter = Counter()
        self._in_flight = 0
        #: the most frames ever requested but not consumed at once (the prefetch bound says <= prefetch)
        self.max_in_flight = 0
        self._workers: LocalWorkers | None = None
        self._ctx = zmq.Context()
        self._finalizer = None
        try:
            if workers is not None:
                self._workers = LocalWorkers(workers, spec)
                self._finalizer = weakref.finalize(self, self._workers.close)
                endpoints = self._workers.endpoints
            self.endpoints = list(endpoints)
            self._wake_addr = f"inproc://pxdbg-wake-{id(self)}"
            self._wake_rx = self._ctx.socket(zmq.PAIR)
            self._wake_rx.bind(self._wake_addr)
            self._wake_tx = self._ctx.socket(zmq.PAIR)
            self._wake_tx.setsockopt(zmq.LINGER, 0)
            self._wake_tx.setsockopt(zmq.SNDHWM, 1)
            self._wake_tx.connect(self._wake_addr)
            self._peers = [_Peer(ep, sockets.dealer(self._ctx, ep)) for ep in self.endpoints]
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
                        f"frame {self._next} of stream {self.seed} did not arrive within {self.frame_timeout} s "
                        f"although producers answer heartbeats; they may be overloaded ({self._describe()})"
                    )
                self._cv.wait(min(remaining, 1.0))
        try:
            self._wake_tx.send(b"", zmq.NOBLOCK)
        except zmq.Again:  # a wake-up is already queued
            pass
        self.waits.append(time.perf_counter() - t0)
        self.last_index = index
        return frame.to_dense() if dense else frame

    __next__ = next

    def __iter__(self):
        return self

    def wait_for_producers(self, count: int | None = None, timeout: float = 60.0) -> int:
        """Block until ``count`` producers (default: all) have welcomed this client; return how many have.

        Raises :class:`NoProducerError` after ``timeout`` seconds. Useful to warm up before timing a loop.
        """
        count = len(self._peers) if count is None else count
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                if self._error is not None:
                    raise self._error
                alive = sum(p.state == _ALIVE for p in self._peers)
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
        for name in ("_wake_tx", "_wake_rx"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)
        if self._thread is None or not self._thread.is_alive():
            for peer in getattr(self, "_peers", []):
                peer.sock.close(0)
            self._ctx.term()
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _describe(self) -> str:
        return ", ".join(f"{p.endpoint}: {p.state}, {len(p.outstanding)} outstanding" for p in self._peers)

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
            for peer in self._peers:
                try:
                    peer.sock.send(protocol.pack({"t": "bye"}), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
                peer.sock.close(0)

    def _io_run(self) -> None:
        last_alive = time.monotonic()
        hello = protocol.pack(
            {"t": "hello", "want": self.identity.as_dict(), "client": f"{socket.gethostname()}:{os.getpid()}"}
        )
        ping = protocol.pack({"t": "ping"})
        poller, polled = None, None
        while True:
            with self._cv:
                if self._closing:
                    return
            sockets = [peer.sock for peer in self._peers]
            if sockets != polled:  # rebuilt only when a dead producer's socket was replaced
                poller, polled = zmq.Poller(), sockets
                poller.register(self._wake_rx, zmq.POLLIN)
                for sock in sockets:
                    poller.register(sock, zmq.POLLIN)
            events = dict(poller.poll(int(self.heartbeat_interval * 500)))
            if self._wake_rx in events:
                while True:
                    try:
                        self._wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            now = time.monotonic()
            for peer in self._peers:
                if peer.sock in events:
                    self._drain(peer, now)
            if self._workers is not None:
                self._check_workers()
            for peer in self._peers:
                if peer.state == _ALIVE and now - peer.last_recv > self.heartbeat_timeout:
                    self._peer_died(peer, f"silent for {now - peer.last_recv:.1f} s")
                if now - peer.last_sent >= self.heartbeat_interval:
                    self._try_send(peer, ping if peer.state == _ALIVE else hello, now)
            if any(p.state == _ALIVE for p in self._peers):
                last_alive = now
            elif now - last_alive > self.connect_timeout:
                extra = ""
                if self._workers is not None:
                    extra = " Local worker logs:\n" + "\n".join(
                        f"--- worker {w.index}:\n{w.log_tail()}" for w in self._workers.workers
                    )
                self._fail(
                    NoProducerError(
                        f"no producer answered for {self.connect_timeout:.0f} s at {', '.join(self.endpoints)}; "
                        f"start producers there ('pxdbg produce --bind ...') or check the endpoints.{extra}"
                    )
                )
                return
            self._assign_credits(now)
            with self._cv:
                self._in_flight = len(self._ready) + sum(len(p.outstanding) for p in self._peers)
                self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _try_send(self, peer: _Peer, msg: bytes, now: float) -> bool:
        try:
            peer.sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:  # not connected (IMMEDIATE) or queue full
            return False
        peer.last_sent = now
        return True

    def _drain(self, peer: _Peer, now: float) -> None:
        for _ in range(10000):
            try:
                parts = peer.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer.last_recv = now
            try:
                header = protocol.unpack(parts[0].buffer)
                self._handle(peer, header, parts[1:], now)
            except protocol.ProtocolError as exc:
                self._bad(peer, str(exc))

    def _bad(self, peer: _Peer, detail: str) -> None:
        self.counters["bad_messages"] += 1
        n = self.counters["bad_messages"]
        if n <= 5 or n % 1000 == 0:
            log.warning("bad message from %s (%d so far): %s", peer.endpoint, n, detail)

    def _handle(self, peer: _Peer, header: dict, buffers: list, now: float) -> None:
        kind = header["t"]
        if kind == "frame":
            if peer.state != _ALIVE:
                raise protocol.ProtocolError("a frame before welcome")
            return self._receive_frame(peer, header, buffers)
        if buffers:
            raise protocol.ProtocolError(f"a {kind!r} message with {len(buffers)} unexpected buffers")
        if kind == "pong":
            return
        if kind == "welcome":
            return self._welcome(peer, header)
        if kind == "error":
            if header.get("rehello"):  # the producer restarted and forgot us: what we asked for is lost
                self._peer_died(peer, "it restarted", reconnect=False)
                return
            idx = header.get("idx")
            self._fail(
                ProducerFailure(
                    f"producer {peer.endpoint} failed on frame(s) {idx} of stream "
                    f"{header.get('seed')}: {header.get('msg')}"
                )
            )
            return
        raise protocol.ProtocolError(f"unexpected message type {kind!r}")

    def _welcome(self, peer: _Peer, header: dict) -> None:
        try:
            theirs = ModelIdentity.from_dict(header["identity"])
        except (KeyError, TypeError, ValueError) as exc:
            raise protocol.ProtocolError(f"welcome without a valid identity: {exc}") from None
        if theirs != self.identity:
            self._fail(
                IdentityMismatchError(
                    f"producer {peer.endpoint} serves model {theirs} (checkpoint sha256 {theirs.checkpoint_sha256}), "
                    f"but this consumer asked for {self.identity} (checkpoint sha256 "
                    f"{self.identity.checkpoint_sha256}); point it at producers of the same model, checkpoint "
                    f"and precision"
                )
            )
            return
        if peer.state != _ALIVE:
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
            with self._cv:
                peer.state = _ALIVE
                self._cv.notify_all()

    def _receive_frame(self, peer: _Peer, header: dict, buffers: list) -> None:
        idx = header.get("idx")
        if header.get("seed") != self.seed or header.get("id") != self.identity_str:
            raise protocol.ProtocolError(
                f"frame of stream {header.get('seed')} / {header.get('id')}, expected {self.seed} / {self.identity_str}"
            )
        with self._cv:
            wanted = isinstance(idx, int) and idx >= self._next and idx not in self._ready
        if not wanted:
            self.counters["duplicates_dropped"] += 1
            return
        try:
            frame = protocol.decode_frame(header, [memoryview(b.buffer) for b in buffers])
        except protocol.ProtocolError:
            for p in self._peers:  # ask again: from scratch, wherever it lands
                p.outstanding.discard(idx)
            self._retries[idx] += 1
            if self._retries[idx] > 3:
                self._fail(PipelineError(f"frame {idx} arrived corrupt {self._retries[idx]} times; giving up"))
            raise
        for p in self._peers:
            p.outstanding.discard(idx)
        self.counters["frames_received"] += 1
        self.frames_per_producer[peer.endpoint] += 1
        self.wire_bytes += sum(b.buffer.nbytes for b in buffers)
        self.wire_digits += frame.n_digits
        with self._cv:
            self._ready[idx] = frame
            self._cv.notify_all()

    def _peer_died(self, peer: _Peer, why: str, reconnect: bool = True) -> None:
        lost = sorted(peer.outstanding)
        log.warning("producer %s lost (%s); re-issuing its %d outstanding frame(s)", peer.endpoint, why, len(lost))
        self.counters["producer_failures"] += 1
        self.counters["frames_reissued"] += len(lost)
        peer.outstanding.clear()
        peer.state = _CONNECTING
        peer.deaths += 1
        peer.last_sent = 0.0
        if reconnect:  # a fresh socket: nothing queued for the dead process is delivered to a new one
            peer.sock.close(0)
            peer.sock = sockets.dealer(self._ctx, peer.endpoint)

    def _check_workers(self) -> None:
        gone = self._workers.exited()
        for w in gone:
            peer = next(p for p in self._peers if p.endpoint == w.endpoint)
            if not peer.process_exited:
                peer.process_exited = True
                log.error("local producer %d exited with code %s:\n%s", w.index, w.process.returncode, w.log_tail())
                if peer.state == _ALIVE or peer.outstanding:
                    self._peer_died(peer, f"process exited with code {w.process.returncode}")
        if gone and len(gone) == len(self._workers.workers):
            w = gone[0]
            self._fail(
                ProducerFailure(
                    f"all {len(gone)} local producer(s) exited; worker {w.index} "
                    f"(code {w.process.returncode}) said:\n{w.log_tail()}"
                )
            )

    def _assign_credits(self, now: float) -> None:
        alive = [p for p in self._peers if p.state == _ALIVE]
        if not alive:
            return
        with self._cv:
            start = self._next
            taken = set(self._ready)
        for p in self._peers:
            taken |= p.outstanding
        todo = [i for i in range(start, start + self.prefetch) if i not in taken]
        if not todo:
            return
        plan: dict[int, list[int]] = {}
        load = {id(p): len(p.outstanding) for p in alive}
        for i in todo:
            p = min(alive, key=lambda q: load[id(q)])
            load[id(p)] += 1
            plan.setdefault(id(p), []).append(i)
        for p in alive:
            indices = plan.get(id(p))
            if indices and self._try_send(p, protocol.pack({"t": "req", "seed": self.seed, "idx": indices}), now):
                p.outstanding.update(indices)
