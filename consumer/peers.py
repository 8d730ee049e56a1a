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

from dataclasses import dataclass, field

import zmq

from pxdbg.shared import protocol
from pxdbg.shared import transport as sockets
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.spec import TransportOptions

CONNECTING, ALIVE, DRAINING, QUARANTINED = "connecting", "alive", "draining", "quarantined"
#: Weight of the newest sample in a producer's latency and time-per-frame averages.
EWMA = 0.3


def open_socket(ctx: zmq.Context, endpoint: str, options: TransportOptions) -> zmq.Socket:
    """A fresh DEALER to ``endpoint`` (set up by :mod:`pxdbg.shared.transport`, the one place for socket options)."""
    return sockets.dealer(ctx, endpoint, options)


@dataclass(eq=False)
class Peer:
    endpoint: str
    sock: zmq.Socket | None
    state: str = CONNECTING
    last_recv: float = 0.0  # any message (heartbeat liveness)
    last_sent: float = 0.0
    last_ping: float = 0.0
    #: when it was found to have missed a pong (0: it answers); its frames are then asked of the others at once
    silent_since: float = 0.0
    last_frame: float = 0.0  # a frame arrived (work liveness)
    #: frame index -> when it was requested from this peer
    outstanding: dict = field(default_factory=dict)
    latency: float | None = None  # seconds from request to arrival, recent average
    seconds_per_frame: float | None = None  # seconds per delivered frame while busy, recent average
    strikes: int = 0  # bad messages since its welcome
    slow_strikes: int = 0  # frames in a row that another producer delivered first after it was overdue
    judged_slow_at: float = 0.0  # when its strikes were last found enough to call it slow (0: not yet)
    quarantines: int = 0
    quarantined_until: float = 0.0
    why: str = ""  # what it did, for the run's failure message
    info: dict = field(default_factory=dict)
    frames: int = 0
    process_exited: bool = False  # a local worker's process exit was seen and reported
    warned: float = 0.0  # when a stall was last reported
    codec: str | None = None  # the wire codec its welcome chose (one of those offered)
    rehellos: int = 0  # times in a row it forgot this consumer (rehello) without delivering a frame
    cap: int = 1 << 30  # most frames it takes from this consumer at once (learnt from its limit errors)

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
        self.rehellos = 0

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


# -- messages -----------------------------------------------------------------------------------------------
def hello_message(identity: ModelIdentity, client: str) -> bytes:
    return protocol.hello(identity.as_dict(), client)


def request_message(seed: int, indices: list[int]) -> bytes:
    return protocol.request(seed, indices)


def ping_message() -> bytes:
    return protocol.ping()


def bye_message() -> bytes:
    return protocol.bye()


def parse_goodbye(header: dict) -> tuple[bool, dict]:
    """(final, {seed: [frame indices that will not come]}) of a producer's goodbye."""
    return protocol.parse_goodbye(header)
