"""ProducerServer: serves frames of one model identity to any number of consumers.

Two threads. The network thread owns the ROUTER socket: it answers hello/ping at once (so heartbeats
flow while the model computes), queues requests, expires silent consumers and forwards finished frames.
The generation thread takes up to ``max_batch`` pending requests of all consumers and runs one model call
(sparsifying on the model's device); a post thread encodes the frames and hands them to the network thread
over an inproc socket while the next batch computes. A generation failure is
shipped back to the consumers that asked, as an ``error`` message.

Shutdown: :meth:`ProducerServer.stop` (or SIGTERM/SIGINT in ``pxdbg produce``, or the death of
``parent_pid``) ends the loop; the generation thread is joined with a timeout and sockets close with a
bounded linger.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field

import zmq

from pxdbg.shared import protocol, transport

log = logging.getLogger("pxdbg.producer")

#: Most requested-but-unsent frames one consumer may have here; credit windows are far below this.
MAX_PENDING_PER_CLIENT = 4096


@dataclass
class _Client:
    last_seen: float
    pending: int = 0
    name: str = "?"


@dataclass
class _Request:
    client: bytes
    seed: int
    idx: int


@dataclass
class ProducerStats:
    counters: Counter = field(default_factory=Counter)
    model_s: float = 0.0
    post_s: float = 0.0
    batches: int = 0


class ProducerServer:
    def __init__(self, model, bind: str | list[str], *, max_batch: int = 8, client_timeout: float = 30.0,
                 parent_pid: int | None = None, report_interval: float = 60.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.identity = model.identity
        self.identity_str = str(model.identity)
        self.endpoints = [bind] if isinstance(bind, str) else list(bind)
        self.max_batch = max_batch
        self.client_timeout = client_timeout
        self.parent_pid = parent_pid
        self.report_interval = report_interval
        self.stats = ProducerStats()
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._clients: dict[bytes, _Client] = {}
        self._inproc = f"inproc://pxdbg-results-{id(self)}"
        self._warned = Counter()

    # -- public -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def serve(self, ready: threading.Event | None = None) -> None:
        """Serve until :meth:`stop` is called (or the parent process dies)."""
        ctx = zmq.Context()
        sock = results = None
        gen = None
        try:
            sock = transport.router(ctx, self.endpoints)
            results = ctx.socket(zmq.PAIR)
            results.bind(self._inproc)
            gen = threading.Thread(target=self._generation_loop, args=(ctx,), name="pxdbg-generate",
                                   daemon=True)
            gen.start()
            log.info("serving %s on %s (max batch %d, pid %d)", self.identity_str, ", ".join(self.endpoints),
                     self.max_batch, os.getpid())
            if ready is not None:
                ready.set()
            self._network_loop(sock, results)
        finally:
            self.stop()
            if gen is not None:
                gen.join(timeout=30)
                if gen.is_alive():
                    log.warning("generation thread did not finish within 30 s; exiting anyway")
            for s in (sock, results):
                if s is not None:
                    s.close(transport.LINGER_MS)
            if gen is None or not gen.is_alive():  # a socket still open in a stuck thread would hang term()
                ctx.term()
            log.info("stopped; %s", dict(self.stats.counters))

    # -- network thread ---------------------------------------------------------------------------------
    def _network_loop(self, sock: zmq.Socket, results: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        backlog: deque[list] = deque()
        next_housekeeping = 0.0
        next_report = time.monotonic() + self.report_interval
        sent_at_report = 0
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            if sock in events:
                for _ in range(1000):  # drain, but let results through under a flood of requests
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(sock, parts)
            if results in events:
                while True:
                    try:
                        backlog.append(results.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
            while backlog:
                if not self._send(sock, backlog[0], frame=True):
                    break
                backlog.popleft()
            now = time.monotonic()
            if now >= next_housekeeping:
                next_housekeeping = now + 0.5
                self._expire_clients(now)
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("parent process %d is gone; stopping", self.parent_pid)
                    self.stop()
            if now >= next_report:  # numbers for the people who run the farm
                sent = self.stats.counters["frames_sent"]
                with self._cv:
                    pending = len(self._pending)
                log.info("%d consumers, %.1f frames/s over the last %.0f s, %d frames sent in all, %d pending, "
                         "model %.1f s, post-processing %.1f s in all", len(self._clients),
                         (sent - sent_at_report) / self.report_interval, self.report_interval, sent, pending,
                         self.stats.model_s, self.stats.post_s)
                next_report, sent_at_report = now + self.report_interval, sent

    def _send(self, sock: zmq.Socket, parts: list, frame: bool = False) -> bool:
        """Send to a consumer. False if its queue is full (retry later); a vanished consumer is dropped."""
        try:
            sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            if frame:
                self.stats.counters["frames_sent"] += 1
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats.counters["sends_to_gone_consumer"] += 1
            self._drop_client(bytes(parts[0].bytes if hasattr(parts[0], "bytes") else parts[0]))
            return True

    def _bad(self, kind: str, detail: str) -> None:
        self.stats.counters[kind] += 1
        n = self.stats.counters[kind]
        if n <= 5 or n % 1000 == 0:
            log.warning("%s (%d so far): %s", kind.replace("_", " "), n, detail)

    def _handle(self, sock: zmq.Socket, parts: list) -> None:
        cid = parts[0]
        if len(parts) < 2:
            return self._bad("malformed_messages", "a message without a header")
        try:
            header = protocol.unpack(parts[1])
        except protocol.ProtocolError as exc:
            return self._bad("malformed_messages", str(exc))
        kind = header["t"]
        if len(parts) > 2:
            return self._bad("malformed_messages", f"a {kind!r} message with {len(parts) - 2} unexpected buffers")
        now = time.monotonic()
        client = self._clients.get(cid)
        if client is not None:
            client.last_seen = now
        if kind == "hello":
            if client is None:
                self._clients[cid] = _Client(now, name=str(header.get("client", "?"))[:64])
                log.info("consumer %s connected", self._clients[cid].name)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.model.device),
                    "max_batch": self.max_batch}
            self._send(sock, [cid, protocol.pack({"t": "welcome", "identity": self.identity.as_dict(),
                                                  "producer": info})])
        elif kind == "ping":
            if client is None:  # we expired it (or restarted): make it say hello again
                self._send(sock, [cid, protocol.pack({"t": "error", "fatal": False, "msg": "unknown consumer",
                                                      "rehello": True})])
            else:
                self._send(sock, [cid, protocol.pack({"t": "pong"})])
        elif kind == "req":
            if client is None:
                return self._bad("requests_before_hello", "a request from a consumer that did not say hello")
            self._queue(sock, cid, client, header)
        elif kind == "bye":
            self._drop_client(cid)
        else:
            self._bad("unexpected_messages", f"message type {kind!r}")

    def _queue(self, sock: zmq.Socket, cid: bytes, client: _Client, header: dict) -> None:
        seed, indices = header.get("seed"), header.get("idx")
        if not isinstance(indices, list) or not 0 < len(indices) <= protocol.MAX_INDICES_PER_REQUEST:
            return self._bad("malformed_messages", "a request without a list of frame indices")
        try:
            for idx in indices:
                protocol.check_seed_index(seed, idx)
        except protocol.ProtocolError as exc:
            return self._bad("malformed_messages", str(exc))
        with self._cv:
            room = MAX_PENDING_PER_CLIENT - client.pending
            accepted, refused = indices[:room], indices[room:]
            self._pending.extend(_Request(cid, seed, idx) for idx in accepted)
            client.pending += len(accepted)
            self._cv.notify()
        self.stats.counters["frames_requested"] += len(accepted)
        if refused:
            self._bad("requests_over_limit", f"{len(refused)} frames beyond {MAX_PENDING_PER_CLIENT} pending")
            self._send(sock, [cid, protocol.pack({"t": "error", "fatal": True, "seed": seed, "idx": refused,
                                                  "msg": f"more than {MAX_PENDING_PER_CLIENT} pending frames"})])

    def _drop_client(self, cid: bytes) -> None:
        with self._cv:
            client = self._clients.pop(cid, None)
            if client is None:
                return
            before = len(self._pending)
            self._pending = deque(r for r in self._pending if r.client != cid)
        log.info("consumer %s left; %d pending frames dropped", client.name, before - len(self._pending))

    def _expire_clients(self, now: float) -> None:
        for cid, client in list(self._clients.items()):
            if now - client.last_seen > self.client_timeout:
                log.warning("consumer %s silent for %.0f s; forgetting it", client.name, now - client.last_seen)
                self._drop_client(cid)

    # -- generation thread ------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Request]:
        with self._cv:
            while not self._pending and not self._stop.is_set():
                self._cv.wait(0.5)
            batch = []
            while self._pending and len(batch) < self.max_batch:
                batch.append(self._pending.popleft())
            return batch

    def _generation_loop(self, ctx: zmq.Context) -> None:
        """Run the model; a post thread encodes and sends, so the next batch computes meanwhile."""
        handoff: queue.Queue = queue.Queue(maxsize=2)
        post = threading.Thread(target=self._post_loop, args=(ctx, handoff), name="pxdbg-post", daemon=True)
        post.start()
        try:
            while not self._stop.is_set():
                batch = self._take_batch()
                if not batch:
                    continue
                t0 = time.perf_counter()
                try:
                    frames = self.model.wire_frames_for([(r.seed, r.idx) for r in batch])
                except Exception as exc:
                    log.error("generation failed for %d frames: %s", len(batch), exc)
                    self.stats.counters["generation_errors"] += 1
                    self._hand_over(handoff, post, ("error", batch,
                                                    "".join(traceback.format_exception_only(type(exc), exc)).strip()))
                    continue
                self.stats.model_s += time.perf_counter() - t0
                self.stats.batches += 1
                self._hand_over(handoff, post, ("frames", batch, frames))
        finally:
            if post.is_alive():
                self._hand_over(handoff, post, None)
            post.join(timeout=30)

    def _hand_over(self, handoff: queue.Queue, post: threading.Thread, item) -> None:
        """Queue work for the post thread; never wait forever on a post thread that died."""
        while True:
            try:
                handoff.put(item, timeout=0.5)
                return
            except queue.Full:
                if not post.is_alive():
                    log.error("the post thread died; stopping the producer")
                    self.stop()
                    return

    def _post_loop(self, ctx: zmq.Context, handoff: queue.Queue) -> None:
        out = ctx.socket(zmq.PAIR)
        out.connect(self._inproc)
        try:
            while True:
                item = handoff.get()
                if item is None:
                    return
                kind, batch, payload = item
                t0 = time.perf_counter()
                if kind == "frames":
                    try:
                        parts = [[r.client, *protocol.encode_frame(r.seed, r.idx, self.identity_str, f).parts()]
                                 for r, f in zip(batch, payload)]
                    except Exception as exc:  # a frame the model made but we cannot encode: report, go on
                        log.exception("encoding failed for %d frames", len(batch))
                        self.stats.counters["encoding_errors"] += 1
                        kind, payload = "error", f"the producer could not encode the frames: {exc!r}"
                if kind == "error":
                    for r in batch:
                        out.send_multipart([r.client, protocol.pack({"t": "error", "fatal": True, "seed": r.seed,
                                                                     "idx": [r.idx], "msg": payload})])
                else:
                    for msg in parts:
                        out.send_multipart(msg, copy=False)
                self._settle(batch)
                self.stats.post_s += time.perf_counter() - t0
        finally:
            out.close(transport.LINGER_MS)

    def _settle(self, batch: list[_Request]) -> None:
        with self._cv:
            for r in batch:
                client = self._clients.get(r.client)
                if client is not None:
                    client.pending -= 1
