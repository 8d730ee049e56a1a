"""Socket set-up shared by producers and consumers: the one place where socket options are set.

Bounded queues, bounded linger, size limits, and endpoint checks before any socket exists: a producer refuses
``tcp://127.0.0.1:99999`` (libzmq would bind another port) and an ``ipc://`` path another process listens on
(libzmq would silently take it over, leaving the first producer running unreachable).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import socket
import stat
from collections.abc import Callable
from typing import Literal

import zmq

from pxdbg.shared import security
from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.protocol import MAX_FRAME_PART, MAX_REQUEST_MESSAGE
from pxdbg.shared.spec import TransportOptions

#: Defaults of :class:`~pxdbg.shared.spec.TransportOptions`, kept under their old names.
LINGER_MS = TransportOptions().linger_ms
HWM = TransportOptions().hwm
#: Longest ipc:// path (the sun_path field of a Unix socket address, less its terminating zero), bytes.
MAX_IPC_PATH = 107

_HOST = re.compile(r"^(\*|[A-Za-z0-9_.%-]+|\[[0-9A-Fa-f:.%A-Za-z]+\])$")


class EndpointInUseError(PxdbgError, OSError):
    """An endpoint is already served by another process."""


def check_endpoint(endpoint: str, *, bind: bool = False) -> str:
    """Return ``endpoint`` if it is a well-formed ``tcp://host:port``, ``ipc:///path`` or ``inproc://name``;
    raise :class:`~pxdbg.shared.errors.ConfigError` saying what is wrong otherwise.

    ``bind``: a port may be ``*`` (any free port) and the host ``*`` (every interface).
    """
    if not isinstance(endpoint, str) or not endpoint:
        raise ConfigError("an endpoint is a string such as tcp://host:5555 or ipc:///path/to/socket")
    shown = endpoint if len(endpoint) <= 200 else endpoint[:200] + "..."
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ConfigError(f"endpoint {shown!r} has no scheme; write tcp://host:port or ipc:///path")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not _HOST.match(host) or (host == "*" and not bind):
            raise ConfigError(
                f"endpoint {shown!r} is not tcp://host:port (host: a name, an address"
                f"{', or * for every interface' if bind else ''})"
            )
        if port == "*" and bind:
            return endpoint
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"endpoint {shown!r}: the port must be a number in 1..65535"
                f"{' (or * for any free port)' if bind else ''}"
            )
        return endpoint
    if scheme == "ipc":
        if not rest or "\0" in rest:
            raise ConfigError(f"endpoint {shown!r} names no socket path; write ipc:///path/to/socket")
        if len(os.fsencode(rest)) > MAX_IPC_PATH:
            raise ConfigError(
                f"endpoint {shown!r}: an ipc path has at most {MAX_IPC_PATH} bytes; choose a shorter path"
            )
        return endpoint
    if scheme == "inproc" and rest:
        return endpoint
    raise ConfigError(f"endpoint {shown!r}: the transport must be tcp:// or ipc://")


def check_ipc_free(path: str) -> None:
    """Refuse to bind an ipc path that another process listens on, or that is not a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointInUseError(f"cannot bind ipc://{path}: the path exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # a socket file left by a process that is gone: libzmq replaces it
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return
        raise EndpointInUseError(f"cannot bind ipc://{path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise EndpointInUseError(
        f"cannot bind ipc://{path}: another process is serving it (another producer?); "
        f"stop that one or choose another path"
    )


def check_binds(endpoints: list[str]) -> None:
    """Check a producer's endpoints before anything slow happens (a model load): their form, and that no other
    process serves an ipc path."""
    for ep in endpoints:
        check_endpoint(ep, bind=True)
        if ep.startswith("ipc://"):
            check_ipc_free(ep[len("ipc://") :])


def dealer(ctx: zmq.Context, endpoint: str, options: TransportOptions | None = None) -> zmq.Socket:
    """A consumer's socket to one producer."""
    options = options or TransportOptions()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)  # unsent requests to a dead producer are re-issued elsewhere
    sock.setsockopt(zmq.SNDHWM, options.hwm)
    sock.setsockopt(zmq.RCVHWM, options.hwm)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing to a peer that is not connected
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_PART)
    try:
        security.apply_client(sock, options, endpoint)  # CURVE keys; a monitor that tells a refusal
    except BaseException:
        sock.close(0)
        raise
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ConfigError(f"cannot connect to {endpoint}: {exc}") from None
    return sock


def router(
    ctx: zmq.Context, endpoints: list[str], options: TransportOptions | None = None, *, sndhwm: int | None = None
) -> zmq.Socket:
    """A producer's socket serving any number of consumers, bound to every endpoint (checked first).

    ``sndhwm``: messages libzmq may queue per consumer (default ``options.hwm``); a producer keeps it small and
    queues the rest itself, per consumer."""
    options = options or TransportOptions()
    check_binds(endpoints)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, options.linger_ms)
    sock.setsockopt(zmq.SNDHWM, options.hwm if sndhwm is None else sndhwm)
    sock.setsockopt(zmq.RCVHWM, options.hwm)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable frame raises instead of vanishing
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_MESSAGE)
    try:
        security.apply_server(sock, options, endpoints)  # CURVE with an allow-list on tcp; private ipc directories
    except BaseException:
        sock.close(0)
        raise
    for ep in endpoints:
        try:
            sock.bind(ep)
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno == zmq.EADDRINUSE:
                raise EndpointInUseError(
                    f"cannot bind {ep}: the address is in use (another producer?); stop that one or choose another port"
                ) from None
            raise ConfigError(f"cannot bind {ep}: {exc}") from None
    return sock


def recv_bounded(sock: zmq.Socket, *, max_parts: int, max_bytes: int, copy: bool = True) -> tuple[list, int]:
    """One waiting message, part by part: ``(parts kept, parts dropped)``. Raises ``zmq.Again`` when none waits.

    Keeps at most ``max_parts`` parts and ``max_bytes`` in all; the rest is received and released at once, so
    a message of many parts (``MAXMSGSIZE`` bounds each part, not their number) never costs more than the bound
    in this process's own copies. libzmq itself assembles a whole message before it hands over its first part:
    that transient copy is bounded only by what the peer sends, and is freed as the parts are read here.
    ``copy``: parts as ``bytes`` (else as ``zmq.Frame``)."""
    first = sock.recv(zmq.NOBLOCK, copy=copy)
    parts = [first]
    size = len(first)
    dropped = 0
    while sock.getsockopt(zmq.RCVMORE):
        part = sock.recv(copy=False)  # the rest of a message is here already: libzmq delivers whole messages
        n = len(part)
        if len(parts) < max_parts and size + n <= max_bytes:
            parts.append(part.bytes if copy else part)
            size += n
        else:
            dropped += 1
        del part
    return parts, dropped


def why_no_answer(endpoint: str, monitored: str | None) -> str:
    """Why a producer at ``endpoint`` has not welcomed a consumer yet, in a few words, from what the socket
    monitor saw (``monitored``: see :func:`pxdbg.shared.security.connection_state`) and, where each attempt fails
    at once, a probe that names the reason (it fails at once too, so it never blocks for long)."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return f"no socket file at {path[:200]}"
        except OSError as exc:
            return f"cannot reach {path[:200]}: {exc.strerror}"
        if not stat.S_ISSOCK(mode):
            return f"{path[:200]} is not a socket"
        return _probe(socket.AF_UNIX, path) or "connected, no welcome yet: a full producer, or no pxdbg producer?"
    if monitored == "connected":
        return "connected, no welcome yet: a full producer, or no pxdbg producer?"
    if monitored == "pending":
        return "no answer: a firewall, or a host that is down?"
    if monitored == "failing":
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        return _probe(socket.AF_INET6 if host.startswith("[") else socket.AF_INET, (host.strip("[]"), int(port))) or (
            "each connection attempt fails"
        )
    return "no answer yet"


def _probe(family: int, address) -> str | None:
    """The reason a connection to ``address`` fails (e.g. "connection refused"), None if it connects."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.settimeout(0.2)
    try:
        probe.connect(address)
    except OSError as exc:
        return (exc.strerror or type(exc).__name__).lower() if not isinstance(exc, TimeoutError) else "no answer"
    finally:
        probe.close()
    return None


def release_freed_memory() -> None:
    """Give memory freed by dropped messages back to the system (glibc keeps freed heap pages otherwise: the
    parts of one 400 MB message would stay resident for good). No-op where ``malloc_trim`` does not exist."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


# None: not looked up yet; False: this C library has none
_malloc_trim: Callable[[int], object] | Literal[False] | None = None


def bound_endpoints(sock: zmq.Socket, endpoints: list[str]) -> list[str]:
    """The endpoints as bound (``tcp://*:*`` becomes the port the system chose)."""
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    if len(endpoints) == 1 and last:
        return [last]
    return list(endpoints)
