"""The thread that applies the policy: one per zmq context, answering ZAP requests and reading socket monitors.

Like ``zmq.auth.thread``: a thin runner around :mod:`.policy`. On a producer it answers each ZAP request with
:func:`~.policy.zap_reply`, counts handshakes that failed before ZAP (plaintext consumers, a wrong server key),
and re-reads allow-lists whose files changed (checked every :data:`RELOAD_CHECK_S`) or that
:func:`reload_allow_lists` flagged (``pxdbg produce`` calls it on SIGHUP). On a consumer it records, per
endpoint, why the producer refused this consumer (:func:`~.policy.count_refusal`) and how its connection
attempts go, which :mod:`.refusals` reads. ZAP is one handler per context by design, hence one guard per
context, found with :func:`context_guard`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Literal, overload

import zmq
from zmq.utils.monitor import parse_monitor_message

from pxdbg.shared.security.policy import HANDSHAKE_FAILED, AllowList, count_refusal, zap_reply
from pxdbg.shared.sparselog import warn_sparsely

log = logging.getLogger("pxdbg.security")

#: Seconds between checks of an allow-list directory for changed files.
RELOAD_CHECK_S = 1.0
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_MONITORED = HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED
#: What a consumer's monitor also reads: how its connection attempts go (to say what a consumer waits for).
_CONNECTING = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
_CONNECTION_STATES: dict[int, str] = {
    zmq.EVENT_CONNECTED: "connected",
    zmq.EVENT_CONNECT_DELAYED: "pending",  # a connect in progress: only its end says how it went
    zmq.EVENT_CONNECT_RETRIED: "failing",  # it ended at once (refused, unreachable), and libzmq tries again
    zmq.EVENT_DISCONNECTED: "failing",
}


def _own_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A socket of the guard thread, not registered with ``ctx``: ``Context.destroy()`` closes the registered
    sockets from the calling thread, which would race with this thread; ours close here when ``term`` begins."""
    sock = zmq.Socket(ctx, kind)
    sock.linger = 0
    return sock


class ContextGuard:
    """One thread per zmq context: answers ZAP requests and reads the monitors of the context's sockets."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.lock = threading.Lock()
        self.domains: dict[str, AllowList] = {}
        # consumer side: endpoint -> (why the producer refused us, failed handshakes in a row)
        self.refusals: dict[str, tuple[str, int]] = {}
        # consumer side: endpoint -> how its connection attempts go: "connected", "failing" (each attempt ends at
        # once: refused or unreachable) or "pending" (an attempt has had no answer yet)
        self.connections: dict[str, str] = {}
        self._zap: zmq.Socket | None = None
        self._monitors: dict[zmq.Socket, tuple] = {}  # PAIR -> ("server", AllowList) | ("client", ep, why)
        self._serial = 0
        self._added = threading.Event()  # a socket to poll was added: an idle guard wakes for it
        self._thread = threading.Thread(target=self._run, name="pxdbg-security", daemon=True)
        self._thread.start()

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    # called in the thread that owns ``sock``, before it binds or connects
    def add_server(self, sock: zmq.Socket, allow: AllowList) -> None:
        with self.lock:
            if self._zap is None:  # the thread takes it over under the lock (a full memory barrier)
                zap = _own_socket(self.ctx, zmq.REP)
                zap.bind(ZAP_ENDPOINT)
                self._zap = zap
            domain = f"pxdbg-{os.getpid()}-{self._next()}"
            self.domains[domain] = allow
            sock.zap_domain = domain.encode()
            self._monitors[self._monitor(sock)] = ("server", allow)
            self._added.set()

    def add_client(self, sock: zmq.Socket, endpoint: str, why_refused: dict[str, str]) -> None:
        with self.lock:
            self._monitors[self._monitor(sock, _MONITORED | _CONNECTING)] = ("client", endpoint, why_refused)
            self._added.set()

    def _monitor(self, sock: zmq.Socket, events: int = _MONITORED) -> zmq.Socket:
        addr = f"inproc://pxdbg-monitor-{id(self)}-{self._next()}"
        # MONITOR_STOPPED tells _read_monitor to close the PAIR: without it every closed socket left one behind,
        # and a consumer that reconnects or replaces producers ran out of sockets (libzmq allows 1,023)
        sock.monitor(addr, events | zmq.EVENT_MONITOR_STOPPED)
        pair = _own_socket(self.ctx, zmq.PAIR)
        pair.connect(addr)
        return pair

    def _run(self) -> None:
        poller = zmq.Poller()
        polled: tuple[zmq.Socket, ...] = ()
        next_check = time.monotonic() + RELOAD_CHECK_S  # each allow-list was read when it was made
        try:
            while True:
                with self.lock:
                    current = ((self._zap,) if self._zap is not None else ()) + tuple(self._monitors)
                if current != polled:
                    poller, polled = zmq.Poller(), current
                    for s in current:
                        poller.register(s, zmq.POLLIN)
                if current:
                    events = dict(poller.poll(250))
                else:
                    # nothing to poll: zmq_poll of no items returns at once, so this loop spun a core holding the
                    # GIL (every syscall of the consumer's I/O thread waited for it: a directory read took 10 s),
                    # and never saw its context end; wait for a socket instead, and stop with the context
                    if self.ctx.closed:
                        return
                    self._added.wait(0.25)
                    self._added.clear()
                    events = {}
                for s in events:
                    if s is self._zap:
                        s.send_multipart(zap_reply(s.recv_multipart(), self.domains))
                    else:
                        self._read_monitor(s)
                now = time.monotonic()
                if now >= next_check or any(a.reload_requested for a in list(self.domains.values())):
                    next_check = now + RELOAD_CHECK_S
                    for allow in list(self.domains.values()):
                        allow.reload_if_changed()
        except zmq.ContextTerminated:
            pass
        except Exception:  # a guard that dies silently would refuse everyone: make it loud
            log.exception("security thread failed")
        finally:
            with self.lock, _GUARDS_LOCK:
                for s in (*self._monitors, *((self._zap,) if self._zap is not None else ())):
                    s.close(0)
                self._monitors.clear()
                self._zap = None
                if _GUARDS.get(id(self.ctx)) is self:
                    del _GUARDS[id(self.ctx)]

    def _read_monitor(self, pair: zmq.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(pair.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            role = self._monitors.get(pair)
            if event["event"] == zmq.EVENT_MONITOR_STOPPED or role is None:
                with self.lock:
                    self._monitors.pop(pair, None)
                pair.close(0)
                return
            failed = event["event"] & HANDSHAKE_FAILED
            if role[0] == "server":
                allow = role[1]
                if failed and event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # ZAP refusals count in zap_reply
                    allow.refused_handshake += 1
                    warn_sparsely(
                        log,
                        allow.refused_handshake,
                        "a CURVE handshake on %s failed: a consumer without "
                        "keys or with another producer's public key (%d so far)",
                        event["endpoint"].decode(errors="replace"),
                        allow.refused_handshake,
                    )
                continue
            _, endpoint, why = role
            with self.lock:
                state = _CONNECTION_STATES.get(int(event["event"]))
                if state is not None:
                    self.connections[endpoint] = state
                    continue
                if failed:
                    self.refusals[endpoint], log_now = count_refusal(
                        event["event"], why, self.refusals.get(endpoint, (None, 0))
                    )
                    if log_now:
                        log.warning("%s", self.refusals[endpoint][0])
                elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.refusals.pop(endpoint, None)


_GUARDS: dict[int, ContextGuard] = {}  # id(context) -> its guard
_GUARDS_LOCK = threading.Lock()


@overload
def context_guard(ctx: zmq.Context, create: Literal[True] = ...) -> ContextGuard: ...
@overload
def context_guard(ctx: zmq.Context, create: bool) -> ContextGuard | None: ...


def context_guard(ctx: zmq.Context, create: bool = True) -> ContextGuard | None:
    """The guard of ``ctx``, started on first use (``create``); ``None`` if it has none and ``create`` is false."""
    with _GUARDS_LOCK:
        guard = _GUARDS.get(id(ctx))
        if guard is None and create:
            guard = _GUARDS[id(ctx)] = ContextGuard(ctx)
        return guard


def reload_allow_lists() -> None:
    """Ask every allow-list of this process to re-read its directory (safe in a signal handler: it sets flags)."""
    for guard in list(_GUARDS.values()):
        for allow in list(guard.domains.values()):
            allow.reload_requested = True
