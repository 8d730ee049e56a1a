"""One producer as the consumer sees it: its socket, liveness, what it owes, how fast it is, how it behaved.

States: ``connecting`` (hello sent, no welcome yet), ``alive`` (welcomed us; asked for frames), ``draining``
(said goodbye; what it still owes may arrive, nothing new is asked of it), ``quarantined`` (it misbehaved: its
frames went elsewhere, and it is left alone until its quarantine ends). Liveness is judged by traffic
(heartbeats) for the connection and by frames arriving for the work: a producer that answers pings but sends
none of the frames asked of it is quarantined after the stall timeout.

Only the consumer's I/O thread touches a peer, except :attr:`Peer.state`, which it writes under the client's
lock (other threads read it there).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import zmq

from pxdbg.shared import protocol
from pxdbg.shared import transport as sockets
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.spec import TransportOptions

CONNECTING, ALIVE, DRAINING, QUARANTINED = "connecting", "alive", "draining", "quarantined"
#: Weight of the newest sample in a producer's latency and time-per-frame averages.
EWMA = 0.3

try:
    _DEALER_TAKES_OPTIONS = "options" in inspect.signature(sockets.dealer).parameters
except (TypeError, ValueError):  # pragma: no cover - a C implementation without a signature
    _DEALER_TAKES_OPTIONS = False


def open_socket(ctx: zmq.Context, endpoint: str, options: TransportOptions) -> zmq.Socket:
    """A fresh DEALER to ``endpoint`` (set up by :mod:`pxdbg.shared.transport`, the one place for socket options)."""
    if _DEALER_TAKES_OPTIONS:
        return sockets.dealer(ctx, endpoint, options=options)
    return sockets.dealer(ctx, endpoint)


@dataclass(eq=False)
class Peer:
    endpoint: str
    sock: zmq.Socket | None
    state: str = CONNECTING
    last_recv: float = 0.0  # any message (heartbeat liveness)
    last_sent: float = 0.0
    last_frame: float = 0.0  # a frame arrived (work liveness)
    #: frame index -> when it was requested from this peer
    outstanding: dict = field(default_factory=dict)
    latency: float | None = None  # seconds from request to arrival, recent average
    seconds_per_frame: float | None = None  # seconds per delivered frame while busy, recent average
    strikes: int = 0  # bad messages since its welcome
    slow_strikes: int = 0  # frames in a row that another producer delivered first after it was overdue
    quarantines: int = 0
    quarantined_until: float = 0.0
    why: str = ""  # what it did, for the run's failure message
    info: dict = field(default_factory=dict)
    frames: int = 0
    process_exited: bool = False  # a local worker's process exit was seen and reported

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

    def busy_for(self, now: float) -> float:
        """Seconds it has owed frames without delivering one (0 when it owes nothing)."""
        if not self.outstanding:
            return 0.0
        return now - max(self.last_frame, min(self.outstanding.values()))

    def reset_socket(self, ctx: zmq.Context, options: TransportOptions) -> None:
        """A fresh socket: nothing queued for (or from) the old connection is delivered any more."""
        self.close_socket()
        self.sock = open_socket(ctx, self.endpoint, options)

    def close_socket(self, say_bye: bool = False) -> None:
        if self.sock is None:
            return
        if say_bye:
            try:
                self.sock.send(bye_message(), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.sock.close(0)
        self.sock = None

    def forget_work(self) -> list[int]:
        """Drop what it owes (the credit planner re-issues it elsewhere); return those frame indices."""
        lost = sorted(self.outstanding)
        self.outstanding.clear()
        return lost

    def describe(self) -> str:
        what = f"{self.endpoint}: {self.state}, {self.frames} frames delivered, {len(self.outstanding)} outstanding"
        return f"{what} ({self.why})" if self.why else what


# -- messages (the protocol module's builders where it has them) -------------------------------------------
def hello_message(identity: ModelIdentity, client: str) -> bytes:
    builder = getattr(protocol, "hello", None)
    if builder is not None:
        return builder(identity.as_dict(), client)
    return protocol.pack({"t": "hello", "want": identity.as_dict(), "client": client})


def request_message(seed: int, indices: list[int]) -> bytes:
    builder = getattr(protocol, "request", None)
    if builder is not None:
        return builder(seed, indices)
    return protocol.pack({"t": "req", "seed": seed, "idx": list(indices)})


def ping_message() -> bytes:
    builder = getattr(protocol, "ping", None)
    return builder() if builder is not None else protocol.pack({"t": "ping"})


def bye_message() -> bytes:
    builder = getattr(protocol, "bye", None)
    return builder() if builder is not None else protocol.pack({"t": "bye"})


def parse_goodbye(header: dict) -> tuple[bool, dict]:
    """(final, {seed: [frame indices that will not come]}) of a producer's goodbye."""
    parser = getattr(protocol, "parse_goodbye", None)
    if parser is not None:
        return parser(header)
    final = header.get("final") is True
    dropped: dict = {}
    for entry in header.get("dropped") or []:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list):
            dropped.setdefault(entry[0], []).extend(i for i in entry[1] if isinstance(i, int))
    return final, dropped
