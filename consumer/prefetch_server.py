r"""The job's prefetch process: ``python -m pxdbg.consumer.prefetch_server CONFIG --bind ... --owner-pid ...``.

Started by :class:`pxdbg.consumer.prefetch.PrefetchProcess` (which describes the whole arrangement). It owns the
local producer processes or the connection to a farm, one :class:`~pxdbg.consumer.client.BackgroundClient`
over them, and a router socket on which it serves frames by index to the job's
:class:`~pxdbg.consumer.prefetch.PrefetchConnection`\ s, relaying its client's log messages to them. It stops
when its starter says so, when its starter dies, or when every connection that asked has closed.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack
import numpy as np
import zmq

from pxdbg.consumer.client import BackgroundClient
from pxdbg.consumer.errors import PipelineError
from pxdbg.consumer.prefetch import WATCH_INTERVAL_S, PrefetchConfig
from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.frame import SparseFrame

if TYPE_CHECKING:
    from pxdbg.consumer.workers import LocalWorkers

log = logging.getLogger("pxdbg.prefetch")
#: Log records the server keeps for a connection that has not asked yet (older ones are dropped and counted).
MAX_PENDING_LOGS = 1000


class _Relay(logging.Handler):
    """Keeps the server's log records for the connection that asked last."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: collections.deque[tuple[str, str]] = collections.deque(maxlen=MAX_PENDING_LOGS)
        self.dropped = 0
        self._lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        level = "ERROR" if record.levelno >= logging.ERROR else record.levelname
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: say so rather than lose it
            text = f"(unformattable log record {record.msg!r})"
        with self._lock_:
            if len(self.records) == self.records.maxlen:
                self.dropped += 1
            self.records.append((level, text))

    def take(self) -> list[tuple[str, str]]:
        with self._lock_:
            out = list(self.records)
            self.records.clear()
            if self.dropped:
                out.insert(
                    0,
                    (
                        "WARNING",
                        f"prefetch: {self.dropped} log message(s) dropped (more than {MAX_PENDING_LOGS} waited)",
                    ),
                )
                self.dropped = 0
        return out


class _Stream:
    """Frames of the config's stream in index order; a jump restarts the client at the index asked for."""

    def __init__(self, config: PrefetchConfig, endpoints: list[str]) -> None:
        self.config = config
        self.endpoints = endpoints
        self.client: BackgroundClient | None = None
        self.position: int | None = None
        self.restarts = 0

    def get(self, index: int) -> SparseFrame:
        if self.client is None or index != self.position:
            if self.client is not None:
                self.restarts += 1
                log.debug(
                    "prefetch: frame %d asked where %d was predicted; the stream restarts there", index, self.position
                )
                self.client.close()
                self.client = None
            self.client = BackgroundClient(self.endpoints, options=self.config.client_options(first_frame=index))
            self.position = index
        frame = self.client.next()
        self.position = index + 1
        return frame

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class PrefetchServer:
    """The prefetch process: a router socket for the job's connections, a fetch thread over the stream."""

    def __init__(self, config: PrefetchConfig, bind: str, owner_pid: int) -> None:
        self.config = config
        self.owner_pid = owner_pid
        self.relay = _Relay()
        logging.getLogger("pxdbg").addHandler(self.relay)
        logging.getLogger("pxdbg").setLevel(logging.INFO)
        self.workers: LocalWorkers | None = None
        if config.workers is not None:
            from pxdbg.consumer.workers import LocalWorkers

            self.workers = LocalWorkers(config.workers, config.spec)
            endpoints = self.workers.endpoints
        else:
            assert config.endpoints is not None  # PrefetchConfig holds workers or endpoints
            endpoints = config.endpoints
        self.stream = _Stream(config, endpoints)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind(bind)
        self.wake_rx = self.ctx.socket(zmq.PAIR)
        self.wake_rx.bind("inproc://pxdbg-prefetch-wake")
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.last_peer: bytes | None = None
        self.peers: set[bytes] = set()
        self.fetcher = threading.Thread(target=self._fetch_loop, name="pxdbg-prefetch-fetch", daemon=True)

    def _fetch_loop(self) -> None:
        wake = self.ctx.socket(zmq.PAIR)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect("inproc://pxdbg-prefetch-wake")
        failed: BaseException | None = None
        try:
            while not self.stop.is_set():
                try:
                    peer, index = self.requests.get(timeout=WATCH_INTERVAL_S)
                except queue.Empty:
                    continue
                result: SparseFrame | BaseException
                if failed is None:
                    try:
                        result = self.stream.get(index)
                    except PipelineError as exc:
                        failed = result = exc
                    except PxdbgError as exc:  # a user error (a setting the client refuses): one line
                        failed = result = PipelineError(str(exc))
                    except Exception as exc:  # a bug: its traceback goes to this process's stderr
                        log.exception("prefetch: fetching frame %d failed", index)
                        failed = result = PipelineError(f"the prefetch process failed: {exc!r}")
                else:
                    result = failed
                self.replies.put((peer, index, result))
                wake.send(b"")
        finally:
            wake.close(0)

    def _send(self, peer: bytes, parts: list) -> None:
        try:
            self.router.send_multipart([peer, *parts], copy=False)
        except zmq.ZMQError:  # the connection is gone (ROUTER_MANDATORY): nobody waits for this reply
            pass

    def _flush_logs(self) -> None:
        if self.last_peer is None:
            return
        for level, text in self.relay.take():
            self._send(self.last_peer, [msgpack.packb({"k": "log", "level": level, "msg": text})])

    def _reply(self, peer: bytes, index: int, result) -> None:
        self._flush_logs()  # what happened before the frame is said before it
        if isinstance(result, BaseException):
            head = {"k": "error", "i": index, "type": type(result).__name__, "msg": str(result)}
            self._send(peer, [msgpack.packb(head)])
            return
        head = {"k": "frame", "i": index, "n": result.n_digits}
        arrays = (result.sensor, result.u, result.v, result.charge)
        self._send(peer, [msgpack.packb(head), *(np.ascontiguousarray(a) for a in arrays)])

    def _check_workers(self) -> None:
        if self.workers is None:
            return
        gone = self.workers.exited()
        if gone and len(gone) == len(self.workers.workers):
            tails = "\n".join(f"--- worker {w.index}:\n{w.log_tail()}" for w in gone)
            log.error("prefetch: every local producer exited; their last output:\n%s", tails)
            self.stop.set()

    def serve(self) -> None:
        self.fetcher.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.wake_rx, zmq.POLLIN)
        next_watch = 0.0
        while not self.stop.is_set():
            for sock, _ in poller.poll(int(1000 * WATCH_INTERVAL_S)):
                if sock is self.wake_rx:
                    self.wake_rx.recv()
                    continue
                peer, *parts = self.router.recv_multipart()
                try:
                    msg = msgpack.unpackb(parts[0]) if len(parts) == 1 else None
                    kind = msg.get("k") if isinstance(msg, dict) else None
                except Exception:
                    kind = None
                if kind == "get" and isinstance(msg, dict) and isinstance(msg.get("i"), int) and 0 <= msg["i"] < 2**63:
                    self.last_peer = peer
                    self.peers.add(peer)
                    self.requests.put((peer, msg["i"]))
                elif kind == "bye":
                    self.peers.discard(peer)
                    if not self.peers:  # every process that handled events is done: nothing more will be asked
                        log.debug("prefetch: the last connection said bye; stopping")
                        self.stop.set()
                else:
                    log.warning("prefetch: an unreadable request was dropped")
            while True:
                try:
                    peer, index, result = self.replies.get_nowait()
                except queue.Empty:
                    break
                self._reply(peer, index, result)
            self._flush_logs()
            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + WATCH_INTERVAL_S
                if os.getppid() != self.owner_pid:
                    log.info("prefetch: the job (pid %d) is gone; stopping", self.owner_pid)
                    self.stop.set()
                self._check_workers()

    def close(self) -> None:
        self.stop.set()
        self.fetcher.join(timeout=5)
        self.stream.close()
        if self.workers is not None:
            self.workers.close()
        self._flush_logs()
        logging.getLogger("pxdbg").removeHandler(self.relay)
        for level, text in self.relay.take():  # nobody to relay to any more: say it here
            print(f"[{level}] {text}", file=sys.stderr)
        self.ctx.destroy(linger=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pxdbg.consumer.prefetch_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", help="the PrefetchConfig as a JSON file")
    parser.add_argument("--bind", required=True, help="the ipc endpoint to serve on")
    parser.add_argument("--owner-pid", type=int, required=True, help="stop when this process (the job) is gone")
    args = parser.parse_args(argv)
    try:
        config = PrefetchConfig.from_json(Path(args.config).read_text())
        server = PrefetchServer(config, args.bind, args.owner_pid)
    except PxdbgError as exc:  # a user error (a bad spec, a worker that cannot start): one line
        print(f"[ERROR] pxdbg prefetch: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job decides when to stop
    try:
        server.serve()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
