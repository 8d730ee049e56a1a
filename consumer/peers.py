"""One producer as the consumer sees it: its socket and its :class:`~pxdbg.consumer.health.PeerHealth`.

States (:mod:`pxdbg.consumer.health` holds the rules that move a producer between them): ``connecting`` (hello
sent, no welcome yet), ``alive`` (welcomed us; asked for frames), ``draining`` (said goodbye; what it still owes
may arrive, nothing new is asked of it), ``quarantined`` (it misbehaved: its frames went elsewhere, and it is
left alone until its quarantine ends).

Only the consumer's I/O thread touches a peer; it changes a peer's state under the client's lock (other
threads read :attr:`Peer.state` there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import zmq

from pxdbg.consumer.health import ALIVE, CONNECTING, DRAINING, QUARANTINED, PeerHealth
from pxdbg.shared import protocol
from pxdbg.shared import transport as sockets
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.spec import TransportOptions

__all__ = ["ALIVE", "CONNECTING", "DRAINING", "QUARANTINED", "Peer", "open_socket"]


def open_socket(ctx: zmq.Context, endpoint: str, options: TransportOptions) -> zmq.Socket:
    """A fresh DEALER to ``endpoint`` (set up by :mod:`pxdbg.shared.transport`, the one place for socket options)."""
    return sockets.dealer(ctx, endpoint, options)


@dataclass(eq=False)
class Peer:
    endpoint: str
    sock: zmq.Socket | None
    health: PeerHealth = field(default_factory=PeerHealth)
    info: dict = field(default_factory=dict)  # what its welcome said about it (pid, host, device)
    process_exited: bool = False  # a local worker's process exit was seen and reported
    codec: str | None = None  # the wire codec its welcome chose (one of those offered)

    @property
    def state(self) -> str:
        return self.health.state

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

    def describe(self) -> str:
        h = self.health
        what = f"{self.endpoint}: {h.state}, {h.frames} frames delivered, {len(h.outstanding)} outstanding"
        return f"{what} ({h.why})" if h.why else what


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
