"""A prefetch process per job, so frames keep arriving while the simulation holds the GIL. Imports no torch.

basf2 runs its C++ modules (Geant4, the digitizers) with the GIL held: ``Framework::process`` is called through
boost.python, which does not release it (framework/pybasf2/src/Framework.cc). A :class:`BackgroundClient` I/O
thread inside the simulation process is frozen for seconds per event then: no credits, no decoding, no
heartbeats, and its producers judge it (and it judges them) silent. So the client runs in a process of its own:

- :class:`PrefetchProcess` starts ``python -m pxdbg.consumer.prefetch CONFIG`` (a subprocess, never a fork of
  the caller) on an ipc socket in a private (0700) directory. That process, :class:`PrefetchServer`, owns the
  local producer processes (``workers``) or the connection to a farm (``endpoints``), a ``BackgroundClient``
  over them, and serves frames by index to any process of the job. Only the process that started it stops it
  (``close`` checks the pid); it also stops when every connection that asked for frames has closed (under basf2
  -p N the input process, which handles the events, is done before its parent), and within half a second of
  its starter's death.
- :class:`PrefetchConnection` is what the processes that handle events use, opened lazily in the process that
  uses it (after basf2's fork, ``pEventProcessor.cc``). It keeps ``lookahead`` requests for the predicted next
  frames outstanding, so their replies (decoded digits) are received by libzmq's I/O thread, which needs no
  GIL, while the simulation holds it: a warm event takes a message that is already in memory.

The server hands out frames of one stream in index order and predicts that the next index follows the last
(basf2's EventInfoSetter numbers the events of a run 1, 2, ...; event keys of one run are consecutive frame
indices, :func:`pxdbg.shared.seeding.event_index`). A request for another index (a new run, ``skipToEvent``)
restarts the stream there: it costs the frames prefetched for the prediction, and is counted.

Messages of the server's client (a producer lost, quarantined, stalled) are relayed to the connection that
asked last and logged there under ``pxdbg.prefetch``, so inside basf2 they reach its log system with the module's
own messages.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

from pxdbg.consumer import errors
from pxdbg.consumer.errors import PipelineError
from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE, SparseFrame
from pxdbg.shared.spec import ProducerSpec, TransportOptions

log = logging.getLogger("pxdbg.prefetch")

#: Requests a connection keeps outstanding beyond the frame it waits for: the frames of the next events travel
#: while the process that will use them holds the GIL (one event at a time needs one; two absorb a late reply).
DEFAULT_LOOKAHEAD = 2
#: Log records the server keeps for a connection that has not asked yet (older ones are dropped and counted).
MAX_PENDING_LOGS = 1000
#: Seconds between two looks at the owner process, the local workers and the stop flag.
WATCH_INTERVAL_S = 0.5
#: The largest frame a connection accepts (every pixel of the frame hit).
MAX_DIGITS = 40 * 250 * 768
_DTYPES = (SENSOR_DTYPE, U_DTYPE, V_DTYPE, CHARGE_DTYPE)
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


class PrefetchError(PipelineError):
    """The job's prefetch process is gone or answered nonsense."""


@dataclass(frozen=True)
class PrefetchConfig:
    """What a prefetch process serves: one stream of one model from local workers or a farm."""

    spec: ProducerSpec
    seed: int
    workers: int | None = None
    endpoints: list[str] | None = None
    transport: TransportOptions = field(default_factory=TransportOptions)
    prefetch: int = 16
    frame_timeout: float = 600.0
    connect_timeout: float = 60.0
    heartbeat_timeout: float = 5.0

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.endpoints is None):
            raise ConfigError("give either endpoints (a producer farm) or workers (local producers), not both")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PrefetchConfig:
        raw = json.loads(text)
        raw["spec"] = ProducerSpec(**raw["spec"])
        raw["transport"] = TransportOptions(**raw["transport"])
        return cls(**raw)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: its parent may not have reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: kill(0) is the best answer there is


# -- the owner's handle ----------------------------------------------------------------------------------------
class PrefetchProcess:
    """Starts the job's prefetch process and, in the process that started it only, stops it.

    Creates no zmq context and no thread in the caller, so the caller may fork afterwards (basf2 -p N): the
    children connect with :meth:`connect`. ``close`` in any other process than the starting one does nothing,
    so a forked child's clean-up never stops what its parent runs.
    """

    def __init__(self, config: PrefetchConfig, *, python: str | None = None) -> None:
        self.config = config
        self.owner_pid = os.getpid()
        self.dir = Path(tempfile.mkdtemp(prefix="pxdbg-prefetch-"))  # mode 0700
        self.endpoint = f"ipc://{self.dir}/prefetch.sock"
        config_path = self.dir / "config.json"
        config_path.write_text(config.to_json())
        cmd = [python or sys.executable, "-m", "pxdbg.consumer.prefetch", str(config_path)]
        cmd += ["--bind", self.endpoint, "--owner-pid", str(self.owner_pid)]
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches the job, which stops this process in order
            close_fds=True,
        )
        self.pid = self.process.pid
        atexit.register(self.close)

    def connect(self, lookahead: int = DEFAULT_LOOKAHEAD) -> PrefetchConnection:
        """A connection for the calling process (open one per process, after any fork)."""
        return PrefetchConnection(
            self.endpoint,
            self.pid,
            lookahead=lookahead,
            timeout=self.config.connect_timeout + self.config.frame_timeout + _REPLY_GRACE_S,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the prefetch process (SIGTERM, then SIGKILL after ``timeout`` s) and remove its directory; only
        in the process that started it. Idempotent."""
        if os.getpid() != self.owner_pid or self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("the prefetch process did not stop within %.0f s; killing it", timeout)
                process.kill()
                process.wait(timeout=timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.close)


#: What a connection waits beyond the server's own frame timeout (the server reports its timeouts itself).
_REPLY_GRACE_S = 30.0


# -- the event loop's side -----------------------------------------------------------------------------------
class PrefetchConnection:
    """Frames by index from the job's prefetch process, for the process that calls :meth:`get`.

    After a frame is taken, requests for the next ``lookahead`` indices are outstanding, so their replies are
    received without the GIL. Counts the frames received and the mispredictions (a frame asked for that was not
    the next one predicted; the predicted ones received before it are dropped).
    """

    def __init__(self, endpoint: str, server_pid: int, *, lookahead: int = DEFAULT_LOOKAHEAD, timeout: float) -> None:
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or not 0 <= lookahead <= 64:
            raise ConfigError(f"lookahead must be 0..64, got {lookahead!r}")
        self.pid = os.getpid()
        self.server_pid = server_pid
        self.lookahead = lookahead
        self.timeout = timeout
        self.mispredicted = 0
        self.received = 0
        self._asked: collections.deque[int] = collections.deque()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)

    def _ask(self, index: int) -> None:
        self._sock.send(msgpack.packb({"k": "get", "i": index}))
        self._asked.append(index)

    def get(self, index: int) -> SparseFrame:
        """Frame ``index`` of the stream. Raises :class:`PipelineError` (the server's error, or its absence)."""
        if self._asked and self._asked[0] != index:
            self.mispredicted += 1  # the frames asked before it are received and dropped
        if index not in self._asked:
            self._ask(index)
        while True:
            got, frame = self._receive()
            expected = self._asked.popleft()
            if got != expected:
                raise PrefetchError(f"the prefetch process answered frame {got} where {expected} was asked")
            if got == index:
                break
        self.received += 1
        nxt = index + 1 + len(self._asked)
        while len(self._asked) < self.lookahead:
            self._ask(nxt)
            nxt += 1
        return frame

    def _receive(self) -> tuple[int, SparseFrame]:
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PrefetchError(f"the prefetch process sent nothing for {self.timeout:g} s")
            if self._sock.poll(int(1000 * min(remaining, WATCH_INTERVAL_S)), zmq.POLLIN):
                parts = self._sock.recv_multipart(copy=False)
                reply = self._parse(parts)
                if reply is not None:
                    return reply
            elif not _alive(self.server_pid):
                raise PrefetchError("the prefetch process exited (its last messages are above)")

    def _parse(self, parts) -> tuple[int, SparseFrame] | None:
        try:
            head = msgpack.unpackb(parts[0].bytes)
            kind = head["k"]
        except Exception as exc:
            raise PrefetchError(f"the prefetch process sent an unreadable message ({type(exc).__name__})") from None
        if kind == "log":
            log.log(_LEVELS.get(head.get("level"), logging.WARNING), "%s", head.get("msg", ""))
            return None
        if kind == "error":
            cls = getattr(errors, str(head.get("type")), None)
            if not (isinstance(cls, type) and issubclass(cls, PipelineError)):
                cls = PipelineError
            raise cls(str(head.get("msg", "the prefetch process failed")))
        if kind != "frame" or len(parts) != 5:
            raise PrefetchError(f"the prefetch process sent an unexpected message ({kind!r}, {len(parts)} parts)")
        n, index = head.get("n"), head.get("i")
        if not isinstance(n, int) or not 0 <= n <= MAX_DIGITS or not isinstance(index, int):
            raise PrefetchError("the prefetch process sent a frame header out of range")
        arrays = []
        for part, dtype in zip(parts[1:], _DTYPES):
            buf = part.buffer
            if buf.nbytes != n * dtype.itemsize:
                raise PrefetchError(f"the prefetch process sent frame {index} with a buffer of the wrong size")
            arrays.append(np.frombuffer(buf, dtype))
        return index, SparseFrame(*arrays)

    def close(self) -> None:
        """Close this process's socket (never the server: that is its starter's job). Idempotent."""
        if self._ctx is not None and os.getpid() == self.pid:
            try:
                self._sock.send(msgpack.packb({"k": "bye"}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._ctx.destroy(linger=0)
        self._ctx = None


# -- the prefetch process ------------------------------------------------------------------------------------
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
        self.client = None
        self.position: int | None = None
        self.restarts = 0

    def get(self, index: int) -> SparseFrame:
        from pxdbg.consumer.client import BackgroundClient

        if self.client is None or index != self.position:
            if self.client is not None:
                self.restarts += 1
                log.debug(
                    "prefetch: frame %d asked where %d was predicted; the stream restarts there", index, self.position
                )
                self.client.close()
                self.client = None
            c = self.config
            self.client = BackgroundClient(
                self.endpoints,
                spec=c.spec,
                transport=c.transport,
                seed=c.seed,
                first_frame=index,
                prefetch=c.prefetch,
                frame_timeout=c.frame_timeout,
                connect_timeout=c.connect_timeout,
                heartbeat_timeout=c.heartbeat_timeout,
            )
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
        self.workers = None
        if config.workers is not None:
            from pxdbg.consumer.workers import LocalWorkers

            self.workers = LocalWorkers(config.workers, config.spec)
            endpoints = self.workers.endpoints
        else:
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
                if kind == "get" and isinstance(msg.get("i"), int) and 0 <= msg["i"] < 2**63:
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
    parser = argparse.ArgumentParser(prog="python -m pxdbg.consumer.prefetch", description=__doc__.split("\n")[0])
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
