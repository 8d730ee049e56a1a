"""CURVE authentication and encryption of producer sockets, admitting only allow-listed consumer keys.

A producer holds a server key pair and a directory of consumers' public certificates (the allow-list); a
consumer holds a client key pair and the producer's public certificate. Keys are ZeroMQ certificate files
(``NAME.key`` public, ``NAME.key_secret`` public + secret), written by :func:`new_key_pair` (``pxdbg keys new``).
Key material never travels in argv: options and environment variables name files.

:mod:`pxdbg.shared.transport` calls :func:`apply_server` before a producer binds and :func:`apply_client` before
a consumer connects. Per zmq context, one thread (:class:`_ContextGuard`) answers ZAP requests (the
allow-list check) and reads socket monitors: on the producer it counts refused handshakes, on the consumer it
records why a producer refused this consumer, so the consumer says "producer X refused authentication"
instead of waiting for its connect timeout. The allow-list is re-read when its files change (checked every
second) and on :func:`reload_allow_lists` (``pxdbg produce`` calls it on SIGHUP).

Policy: CURVE protects producers with a tcp endpoint. ``ipc://`` endpoints of a producer without CURVE must
sit in a private directory (mode 0700, ours), where only this user can connect; :func:`apply_server` refuses
any other. A tcp producer without keys serves anyone who reaches it, and says so in its log.

Torch-free (consumers import it).
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.sparselog import warn_sparsely

log = logging.getLogger("pxdbg.security")

#: Environment variables naming key files, read when the matching TransportOptions field is ``None``.
ENV_VARS = {
    "curve_server_secret": "PXDBG_CURVE_SERVER_SECRET",  # producer: its NAME.key_secret
    "curve_allow_dir": "PXDBG_CURVE_ALLOW_DIR",  # producer: directory of consumers' NAME.key files
    "curve_client_secret": "PXDBG_CURVE_CLIENT_SECRET",  # consumer: its NAME.key_secret
    "curve_server_public": "PXDBG_CURVE_SERVER_PUBLIC",  # consumer: the producer's NAME.key
}
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
#: Seconds between checks of an allow-list directory for changed files.
RELOAD_CHECK_S = 1.0
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: Handshakes in a row lost without a reason (EVENT_HANDSHAKE_FAILED_NO_DETAIL) that a consumer takes for a refusal.
CONFIRMING_FAILURES = 2
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_MONITORED = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED
#: What a consumer's monitor also reads: how its connection attempts go (to say what a consumer waits for).
_CONNECTING = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_DELAYED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED


#: Largest key file read, bytes (a ZeroMQ certificate has about 300).
MAX_KEY_FILE_BYTES = 64 * 1024


class KeyFileError(ConfigError):
    """A key file or allow-list directory is missing, malformed or readable by other users."""


class AuthenticationRefused(PxdbgError, ConnectionRefusedError):
    """Every producer refused this consumer's CURVE handshake (unknown key, no key, or a server key mismatch)."""


# -- key files ---------------------------------------------------------------------------------------
_BANNER = """#   ****  Generated on {when} by pxdbg keys new  ****
#   ZeroMQ CURVE {what} Certificate
#   {advice}

metadata
    name = "{name}"
curve
    public-key = "{public}"
"""


def new_key_pair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, to hand out) and ``NAME.key_secret`` (mode 0600) into ``directory``.

    Returns both paths. Refuses to overwrite existing files. The files are ZeroMQ certificates, readable by
    ``zmq.auth.load_certificate`` and by other ZeroMQ tools.
    """
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ConfigError(f"a key name must be a plain file name such as 'producer1', got {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_key, secret_key = zmq.curve_keypair()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    paths = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} exists; choose another name or remove the old key pair first")
    texts = (
        _BANNER.format(
            when=when,
            what="Public",
            name=name,
            public=public_key.decode(),
            advice="Hand this file to the other side (a producer's allow-list, or its consumers).",
        ),
        _BANNER.format(
            when=when,
            what="**Secret**",
            name=name,
            public=public_key.decode(),
            advice="DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.",
        )
        + f'    secret-key = "{secret_key.decode()}"\n',
    )
    for path, text, mode in zip(paths, texts, (0o644, 0o600)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never a moment with looser bits
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    return paths


def load_public(path: str | os.PathLike) -> bytes:
    """The Z85 public key of a certificate file (public or secret)."""
    public, _ = _load(path)
    return public


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """The Z85 (public, secret) keys of a ``NAME.key_secret`` file that no other user can read."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key; give the NAME{SECRET_SUFFIX} file of the key pair")
    mode = os.stat(path).st_mode
    if mode & 0o007:
        raise KeyFileError(
            f"secret key file {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    return public, secret


def _load(path) -> tuple[bytes, bytes | None]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KeyFileError(f"no key file at {path}; write a key pair with 'pxdbg keys new NAME'")
    if os.stat(path).st_size > MAX_KEY_FILE_BYTES:  # a certificate is a few hundred bytes: never read a huge file
        raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes, so no ZeroMQ CURVE certificate")
    try:
        public, secret = zmq.auth.load_certificate(path)
        if public is None or len(z85.decode(public)) != 32 or (secret is not None and len(z85.decode(secret)) != 32):
            raise ValueError("no valid public-key line")
    except (ValueError, KeyError, UnicodeDecodeError) as exc:  # zmq.auth raises ValueError for a missing key
        raise KeyFileError(
            f"{path} is not a ZeroMQ CURVE certificate ({exc}); write one with 'pxdbg keys new NAME'"
        ) from None
    return public, secret


# -- options -----------------------------------------------------------------------------------------
def resolved(opts, environ=None) -> dict[str, str | None]:
    """The four key-file settings of ``opts`` (TransportOptions or None), unset ones from the environment."""
    environ = os.environ if environ is None else environ
    return {
        name: (getattr(opts, name, None) if getattr(opts, name, None) is not None else environ.get(var) or None)
        for name, var in ENV_VARS.items()
    }


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def check_private_ipc(endpoint: str) -> None:
    """Refuse an ``ipc://`` endpoint whose directory other users can enter (they could connect to it)."""
    path = endpoint[len("ipc://") :]
    if path.startswith("@"):
        raise ConfigError(
            f"{endpoint} is an abstract socket that every local user can reach; use ipc:///DIR/NAME "
            f"in a private directory (mkdir -m 700 DIR), or tcp with CURVE keys"
        )
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return  # bind says that the directory is missing
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ConfigError(
            f"{endpoint}: the socket directory {directory} is not private (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner uid {st.st_uid}), so other users could use this producer; put the socket in a directory only "
            f"you can enter (mkdir -m 700 DIR), or serve tcp with CURVE keys"
        )


# -- the per-context guard thread ----------------------------------------------------------------------
@dataclass
class AllowList:
    """The consumer public keys a producer admits: every ``*.key`` file of ``directory``."""

    directory: str
    keys: dict[bytes, str] = field(default_factory=dict)  # raw 32-byte key -> certificate file name
    refused_unknown_key: int = 0  # ZAP said no: a CURVE consumer whose key is not listed
    refused_handshake: int = 0  # the handshake failed: plaintext consumer, wrong server key, not ZeroMQ
    admitted: int = 0
    reloads: int = 0
    reload_requested: bool = False
    _signature: tuple = ()

    def __post_init__(self) -> None:
        if not os.path.isdir(self.directory):
            raise KeyFileError(
                f"no allow-list directory at {self.directory}; create it and copy the consumers' "
                f"NAME{PUBLIC_SUFFIX} files into it"
            )
        self.reload()

    @property
    def refused(self) -> int:
        return self.refused_unknown_key + self.refused_handshake

    def counters(self) -> dict[str, int]:
        """Numbers for the producer's snapshot: ``refused_auth`` is every refused handshake."""
        return {
            "refused_auth": self.refused,
            "refused_unknown_key": self.refused_unknown_key,
            "refused_handshake": self.refused_handshake,
            "allow_list_keys": len(self.keys),
            "allow_list_reloads": self.reloads,
        }

    def _scan(self) -> tuple:
        try:
            with os.scandir(self.directory) as it:
                return tuple(
                    sorted(
                        (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                        for e in it
                        if e.name.endswith(PUBLIC_SUFFIX) and e.is_file()
                    )
                )
        except OSError:
            return ("unreadable",)

    def reload(self) -> None:
        """Re-read the directory; a malformed file is skipped with a warning, the others still count."""
        signature = self._scan()
        keys: dict[bytes, str] = {}
        skipped: list[tuple[str, str]] = []
        for name, _, size in signature if signature != ("unreadable",) else ():
            if size > MAX_KEY_FILE_BYTES:
                skipped.append((name, f"larger than {MAX_KEY_FILE_BYTES} bytes"))
                continue
            try:
                keys[z85.decode(load_public(os.path.join(self.directory, name)))] = name
            except (KeyFileError, OSError) as exc:
                skipped.append((name, str(exc)))
        if skipped:  # one line per reload, however many junk files: a directory of 10,000 is no log flood
            name, why = skipped[0]
            log.warning(
                "allow-list %s: skipping %d file(s) that hold no CURVE public key (first: %s: %s)",
                self.directory,
                len(skipped),
                name[:200],
                why[:300],
            )
        if signature == ("unreadable",):
            log.error("allow-list directory %s is unreadable; admitting no consumer", self.directory)
        self.keys, self._signature = keys, signature
        self.reloads += 1
        log.info(
            "allow-list %s: %d consumer key(s)%s",
            self.directory,
            len(keys),
            "" if keys else "; every consumer is refused until a NAME.key file is added",
        )

    def reload_if_changed(self) -> None:
        if self.reload_requested or self._scan() != self._signature:
            self.reload_requested = False
            self.reload()


def _own_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A socket of the guard thread, not registered with ``ctx``: ``Context.destroy()`` closes the registered
    sockets from the calling thread, which would race with this thread; ours close here when ``term`` begins."""
    sock = zmq.Socket(ctx, kind)
    sock.linger = 0
    return sock


class _ContextGuard:
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

    def add_client(self, sock: zmq.Socket, endpoint: str, why_refused: dict[int, str]) -> None:
        with self.lock:
            self._monitors[self._monitor(sock, _MONITORED | _CONNECTING)] = ("client", endpoint, why_refused)

    def _monitor(self, sock: zmq.Socket, events: int = _MONITORED) -> zmq.Socket:
        addr = f"inproc://pxdbg-monitor-{id(self)}-{self._next()}"
        sock.monitor(addr, events)
        pair = _own_socket(self.ctx, zmq.PAIR)
        pair.connect(addr)
        return pair

    def _run(self) -> None:
        poller, polled = zmq.Poller(), ()
        next_check = 0.0
        try:
            while True:
                with self.lock:
                    current = ((self._zap,) if self._zap is not None else ()) + tuple(self._monitors)
                if current != polled:
                    poller, polled = zmq.Poller(), current
                    for s in current:
                        poller.register(s, zmq.POLLIN)
                events = dict(poller.poll(250))
                for s in events:
                    if s is self._zap:
                        self._answer(s)
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

    def _answer(self, zap: zmq.Socket) -> None:
        """One ZAP request (RFC 27): admit a CURVE client whose key is in its domain's allow-list."""
        msg = zap.recv_multipart()
        if len(msg) < 6:
            log.error("malformed ZAP request with %d frames", len(msg))
            return zap.send_multipart([b"1.0", b"", b"500", b"malformed request", b"", b""])
        version, request_id, domain, address, _identity, mechanism = msg[:6]
        allow = self.domains.get(domain.decode(errors="replace"))
        key = msg[6] if mechanism == b"CURVE" and len(msg) > 6 else None
        name = allow.keys.get(key) if allow is not None and key is not None else None
        if name is not None:
            allow.admitted += 1
            return zap.send_multipart([version, request_id, b"200", b"OK", name.encode(), b""])
        if allow is not None:
            allow.refused_unknown_key += 1
            warn_sparsely(
                log,
                allow.refused_unknown_key,
                "refused a consumer at %s: its public key %s is not in the allow-list %s (%d refused so far)",
                address.decode(errors="replace"),
                z85.encode(key).decode() if key and len(key) == 32 else "(none)",
                allow.directory,
                allow.refused_unknown_key,
            )
        zap.send_multipart([version, request_id, b"400", b"key not in the allow-list", b"", b""])

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
            failed = event["event"] & _HANDSHAKE_FAILED
            if role[0] == "server":
                allow = role[1]
                if failed and event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # ZAP refusals count in _answer
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
                state = _CONNECTION_STATES.get(event["event"])
                if state is not None:
                    self.connections[endpoint] = state
                    continue
                if failed:
                    # AUTH (a ZAP "no") and PROTOCOL (e.g. a mechanism mismatch) are final: libzmq gives up on
                    # the connection. NO_DETAIL is a connection lost during the handshake, which a producer dying
                    # at that moment also causes; libzmq reconnects, and a second failure in a row confirms it.
                    kind = event["event"]
                    reason = why["auth" if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake"]
                    before, count = self.refusals.get(endpoint, (None, 0))
                    final = kind != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    count = CONFIRMING_FAILURES if final else (count + 1 if before == reason else 1)
                    if count >= CONFIRMING_FAILURES and (before != reason or count == CONFIRMING_FAILURES):
                        log.warning("%s", reason)
                    self.refusals[endpoint] = (reason, count)
                elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.refusals.pop(endpoint, None)


_CONNECTION_STATES = {
    zmq.EVENT_CONNECTED: "connected",
    zmq.EVENT_CONNECT_DELAYED: "pending",  # a connect in progress: only its end says how it went
    zmq.EVENT_CONNECT_RETRIED: "failing",  # it ended at once (refused, unreachable), and libzmq tries again
    zmq.EVENT_DISCONNECTED: "failing",
}


_GUARDS: dict[int, _ContextGuard] = {}  # id(context) -> its guard; ZAP is one handler per context by design
_GUARDS_LOCK = threading.Lock()


def _guard(ctx: zmq.Context, create: bool = True) -> _ContextGuard | None:
    with _GUARDS_LOCK:
        guard = _GUARDS.get(id(ctx))
        if guard is None and create:
            guard = _GUARDS[id(ctx)] = _ContextGuard(ctx)
        return guard


# -- the two entry points ------------------------------------------------------------------------------
def apply_server(sock: zmq.Socket, opts, endpoints: list[str], environ=None) -> AllowList | None:
    """Set up a producer's socket before it binds ``endpoints``; return its allow-list (``None``: no CURVE).

    With ``curve_server_secret`` set (option or environment) and a tcp endpoint, the socket is a CURVE server
    admitting only the keys in ``curve_allow_dir`` (required). Without CURVE, ipc endpoints must be private
    (:func:`check_private_ipc`) and tcp endpoints are served in plaintext, with a warning.
    """
    keys = resolved(opts, environ)
    tcp = [ep for ep in endpoints if is_tcp(ep)]
    if keys["curve_server_secret"] and tcp:
        if not keys["curve_allow_dir"]:
            raise ConfigError(
                "a CURVE producer needs an allow-list: give --curve-allow-dir DIR (or "
                f"{ENV_VARS['curve_allow_dir']}), a directory of the consumers' NAME.key files"
            )
        public, secret = load_secret(keys["curve_server_secret"])
        allow = AllowList(os.fspath(keys["curve_allow_dir"]))
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        _guard(sock.context).add_server(sock, allow)
        log.info(
            "CURVE on %s: server key %s, admitting the %d key(s) in %s",
            ", ".join(endpoints),
            public.decode(),
            len(allow.keys),
            allow.directory,
        )
        return allow
    for ep in endpoints:
        if ep.startswith("ipc://"):
            check_private_ipc(ep)
    if tcp:
        log.warning(
            "serving %s without CURVE: anyone who reaches the port can use this producer; see 'pxdbg keys "
            "new' and --curve-server-secret / --curve-allow-dir",
            ", ".join(tcp),
        )
    return None


def apply_client(sock: zmq.Socket, opts, endpoint: str, environ=None) -> None:
    """Set up a consumer's socket before it connects to ``endpoint``.

    On tcp: a CURVE client when ``curve_client_secret`` and ``curve_server_public`` are set (both or neither),
    and in every case a monitor that records a refused handshake for :func:`refusal`.
    """
    keys = resolved(opts, environ)
    secret_file, server_file = keys["curve_client_secret"], keys["curve_server_public"]
    if bool(secret_file) != bool(server_file):
        have, lack = (
            ("--curve-client-secret", "--curve-server-public")
            if secret_file
            else ("--curve-server-public", "--curve-client-secret")
        )
        raise ConfigError(
            f"a CURVE consumer needs both key files: {have} is set, {lack} is not "
            f"(or set {ENV_VARS['curve_client_secret']} and {ENV_VARS['curve_server_public']})"
        )
    if not is_tcp(endpoint):
        return
    if secret_file:
        public, secret = load_secret(secret_file)
        sock.curve_serverkey = load_public(server_file)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        mine = (
            f"{os.fspath(secret_file)[: -len(SECRET_SUFFIX)]}{PUBLIC_SUFFIX}"
            if os.fspath(secret_file).endswith(SECRET_SUFFIX)
            else f"the public key of {secret_file}"
        )
        why = {
            "auth": f"producer {endpoint} refused authentication: its allow-list does not hold this consumer's "
            f"public key; add {mine} to the producer's allow-list directory",
            "handshake": f"producer {endpoint} refused authentication (the CURVE handshake failed): it does not "
            f"hold the secret key of {server_file} (another producer, or a man in the middle, which "
            f"this consumer does not trust), or it does not use CURVE, or it is no ZeroMQ peer",
        }
    else:
        why = {
            "auth": f"producer {endpoint} refused authentication: it admits no consumer without a key",
            "handshake": f"producer {endpoint} refused authentication: it requires CURVE keys; give this consumer "
            f"a key pair ('pxdbg keys new NAME', --curve-client-secret) and the producer's public key "
            f"(--curve-server-public), and add the consumer's NAME.key to the producer's allow-list (or the "
            f"endpoint is no ZeroMQ peer)",
        }
    _guard(sock.context).add_client(sock, endpoint, why)


# -- what producers and consumers read -------------------------------------------------------------------
def refusal(ctx: zmq.Context, endpoints: list[str]) -> str | None:
    """Why every one of ``endpoints`` refused this consumer's handshake; ``None`` while any has not refused.

    A consumer calls this while no producer has welcomed it, and fails with :class:`AuthenticationRefused`
    at once instead of waiting for its connect timeout.
    """
    guard = _guard(ctx, create=False)
    if guard is None or not endpoints:
        return None
    with guard.lock:
        found = [guard.refusals.get(ep, (None, 0)) for ep in endpoints]
    if any(count < CONFIRMING_FAILURES for _, count in found):
        return None
    return "; ".join(dict.fromkeys(reason for reason, _ in found))


def connection_state(ctx: zmq.Context, endpoint: str) -> str | None:
    """How a consumer's connection attempts to tcp ``endpoint`` go, as its socket monitor saw them:
    ``"connected"``, ``"failing"`` (each attempt fails at once), ``"pending"`` (no answer yet), or None (not
    monitored: not tcp, or no attempt seen yet)."""
    guard = _guard(ctx, create=False)
    if guard is None:
        return None
    with guard.lock:
        return guard.connections.get(endpoint)


def refused_endpoints(ctx: zmq.Context) -> dict[str, str]:
    """Endpoint -> why it refused this consumer, for every producer whose last handshake failed."""
    guard = _guard(ctx, create=False)
    if guard is None:
        return {}
    with guard.lock:
        return {ep: why for ep, (why, count) in guard.refusals.items() if count >= CONFIRMING_FAILURES}


def allow_list(sock: zmq.Socket) -> AllowList | None:
    """The allow-list of a producer socket set up by :func:`apply_server` (``None`` without CURVE).

    Call it in the thread that owns ``sock`` (it reads a socket option); the returned object's numbers may
    then be read from any thread.
    """
    guard = _guard(sock.context, create=False)
    if guard is None:
        return None
    domain = sock.zap_domain
    domain = domain.decode() if isinstance(domain, bytes) else domain
    with guard.lock:
        return guard.domains.get(domain)


def reload_allow_lists() -> None:
    """Ask every allow-list of this process to re-read its directory (safe in a signal handler: it sets flags)."""
    for guard in list(_GUARDS.values()):
        for allow in list(guard.domains.values()):
            allow.reload_requested = True


# -- command-line options ----------------------------------------------------------------------------------
def add_server_arguments(parser) -> None:
    """``pxdbg produce`` options: the producer's secret key file and its allow-list directory."""
    parser.add_argument(
        "--curve-server-secret",
        metavar="FILE",
        help=f"CURVE on tcp endpoints: this producer's NAME{SECRET_SUFFIX} file "
        f"(default ${ENV_VARS['curve_server_secret']})",
    )
    parser.add_argument(
        "--curve-allow-dir",
        metavar="DIR",
        help=f"admit only consumers whose NAME{PUBLIC_SUFFIX} is in DIR; re-read on change or "
        f"SIGHUP (default ${ENV_VARS['curve_allow_dir']})",
    )


def add_client_arguments(parser) -> None:
    """``pxdbg run`` options: the consumer's secret key file and the producers' public key."""
    parser.add_argument(
        "--curve-client-secret",
        metavar="FILE",
        help=f"CURVE to tcp producers: this consumer's NAME{SECRET_SUFFIX} file "
        f"(default ${ENV_VARS['curve_client_secret']})",
    )
    parser.add_argument(
        "--curve-server-public",
        metavar="FILE",
        help=f"the producers' NAME{PUBLIC_SUFFIX} file; a producer without its secret key is "
        f"refused (default ${ENV_VARS['curve_server_public']})",
    )


def options_from_args(args, base=None):
    """``base`` (default ``TransportOptions()``) with the CURVE options given on the command line."""
    from pxdbg.shared.spec import TransportOptions

    base = TransportOptions() if base is None else base
    given = {name: getattr(args, name) for name in ENV_VARS if getattr(args, name, None) is not None}
    return base.replace(**given) if given else base
