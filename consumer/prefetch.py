"""A prefetch process per job, so frames keep arriving while the simulation holds the GIL. Imports no torch.

basf2 runs its C++ modules (Geant4, the digitizers) with the GIL held: ``Framework::process`` is called through
boost.python, which does not release it (framework/pybasf2/src/Framework.cc). A :class:`BackgroundClient` I/O
thread inside the simulation process is frozen for seconds per event then: no credits, no decoding, no
heartbeats, and its producers judge it (and it judges them) silent. So the client runs in a process of its own:

- :class:`PrefetchProcess` starts ``python -m pxdbg.consumer.prefetch_server CONFIG`` (a subprocess, never a fork
  of the caller) on an ipc socket in a private (0700) directory. That process
  (:class:`pxdbg.consumer.prefetch_server.PrefetchServer`) owns the
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

import atexit
import collections
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

from pxdbg.consumer import errors
from pxdbg.consumer.errors import PipelineError
from pxdbg.consumer.options import ClientOptions
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE, SparseFrame
from pxdbg.shared.spec import ProducerSpec, TransportOptions

log = logging.getLogger("pxdbg.prefetch")

#: Requests a connection keeps outstanding beyond the frame it waits for: the frames of the next events travel
#: while the process that will use them holds the GIL (one event at a time needs one; two absorb a late reply).
DEFAULT_LOOKAHEAD = 2
#: Seconds between two looks at the owner process, the local workers and the stop flag.
WATCH_INTERVAL_S = 0.5
#: The largest frame a connection accepts (every pixel of the frame hit).
MAX_DIGITS = 40 * 250 * 768
_DTYPES: tuple[np.dtype, ...] = (SENSOR_DTYPE, U_DTYPE, V_DTYPE, CHARGE_DTYPE)
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
        self.client_options()  # a bad setting fails here, in the job, not in the prefetch process

    def client_options(self, first_frame: int = 0) -> ClientOptions:
        """The settings of the prefetch process's client, starting its stream at ``first_frame``."""
        return ClientOptions(
            spec=self.spec,
            transport=self.transport,
            seed=self.seed,
            first_frame=first_frame,
            prefetch=self.prefetch,
            frame_timeout=self.frame_timeout,
            connect_timeout=self.connect_timeout,
            heartbeat_timeout=self.heartbeat_timeout,
        )

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
        cmd = [python or sys.executable, "-m", "pxdbg.consumer.prefetch_server", str(config_path)]
        cmd += ["--bind", self.endpoint, "--owner-pid", str(self.owner_pid)]
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
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
        self._ctx: zmq.Context | None = zmq.Context()
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
