"""Socket set-up shared by producers and consumers: bounded queues, bounded linger, size limits."""

from __future__ import annotations

import zmq

from pxdbg.shared.protocol import MAX_FRAME_MESSAGE, MAX_REQUEST_MESSAGE

#: Milliseconds a closing socket may spend delivering queued messages.
LINGER_MS = 200
#: High-water mark (messages per peer). Credits bound the queue; this is the second guard.
HWM = 256


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A consumer's socket to one producer."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)  # unsent requests to a dead producer are re-issued elsewhere
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing to a peer that is not connected
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_MESSAGE)
    sock.connect(endpoint)
    return sock


def router(ctx: zmq.Context, endpoints: list[str]) -> zmq.Socket:
    """A producer's socket serving any number of consumers."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable frame raises instead of vanishing
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_MESSAGE)
    for ep in endpoints:
        try:
            sock.bind(ep)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(f"cannot bind {ep}: {exc}. Is another producer using it?") from exc
    return sock
