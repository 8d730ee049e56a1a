"""What producers and consumers read back from their context's guard: refusals, connection states, allow-lists.

A consumer that no producer has welcomed asks :func:`refusal` and fails with :class:`AuthenticationRefused` at
once instead of waiting for its connect timeout; it names what it is waiting for with :func:`connection_state`.
A producer reads its allow-list's numbers (:func:`allow_list`) for its snapshot. Every reader takes the guard's
lock and returns copies; none starts a guard.
"""

from __future__ import annotations

import zmq

from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.security.guard import context_guard
from pxdbg.shared.security.policy import CONFIRMING_FAILURES, AllowList


class AuthenticationRefused(PxdbgError, ConnectionRefusedError):
    """Every producer refused this consumer's CURVE handshake (unknown key, no key, or a server key mismatch)."""


def refusal(ctx: zmq.Context, endpoints: list[str]) -> str | None:
    """Why every one of ``endpoints`` refused this consumer's handshake; ``None`` while any has not refused.

    A consumer calls this while no producer has welcomed it, and fails with :class:`AuthenticationRefused`
    at once instead of waiting for its connect timeout.
    """
    guard = context_guard(ctx, create=False)
    if guard is None or not endpoints:
        return None
    with guard.lock:
        found = [guard.refusals.get(ep) for ep in endpoints]
    reasons = []
    for entry in found:
        if entry is None or entry[1] < CONFIRMING_FAILURES:
            return None
        reasons.append(entry[0])
    return "; ".join(dict.fromkeys(reasons))


def connection_state(ctx: zmq.Context, endpoint: str) -> str | None:
    """How a consumer's connection attempts to tcp ``endpoint`` go, as its socket monitor saw them:
    ``"connected"``, ``"failing"`` (each attempt fails at once), ``"pending"`` (no answer yet), or None (not
    monitored: not tcp, or no attempt seen yet)."""
    guard = context_guard(ctx, create=False)
    if guard is None:
        return None
    with guard.lock:
        return guard.connections.get(endpoint)


def refused_endpoints(ctx: zmq.Context) -> dict[str, str]:
    """Endpoint -> why it refused this consumer, for every producer whose last handshake failed."""
    guard = context_guard(ctx, create=False)
    if guard is None:
        return {}
    with guard.lock:
        return {ep: why for ep, (why, count) in guard.refusals.items() if count >= CONFIRMING_FAILURES}


def allow_list(sock: zmq.Socket) -> AllowList | None:
    """The allow-list of a producer socket set up by :func:`~.sockets.apply_server` (``None`` without CURVE).

    Call it in the thread that owns ``sock`` (it reads a socket option); the returned object's numbers may
    then be read from any thread.
    """
    guard = context_guard(sock.context, create=False)
    if guard is None:
        return None
    raw = sock.zap_domain
    domain = raw.decode() if isinstance(raw, bytes) else str(raw)
    with guard.lock:
        return guard.domains.get(domain)
