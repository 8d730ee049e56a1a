"""Where the producers are: endpoint strings, rendezvous directories and DNS names. Imports no torch.

An endpoint string is one or more comma-separated entries, mixable:

- ``tcp://host:port``, ``ipc:///path``: a fixed producer;
- ``dir:/path/to/rendezvous``: producers register a small JSON file there (:func:`register`, or
  ``pxdbg produce --register DIR``) and refresh it every ``interval`` seconds; an entry whose heartbeat is
  older than :data:`STALE_INTERVALS` intervals is stale and ignored, so a vanished producer drops out and one
  that joins mid-run is picked up at the next :meth:`Source.resolve`. The usual case on a batch system with a
  shared filesystem (heartbeats compare wall clocks: the hosts' clocks must agree within a second or so);
- ``dns://name:port``: every address ``getaddrinfo`` gives for the name (e.g. a Kubernetes headless service),
  re-resolved periodically.

:func:`parse` checks the text before any socket exists and raises :class:`~pxdbg.shared.errors.ConfigError`
with one line naming the bad entry. :meth:`Source.resolve` turns the entries into concrete ``tcp://`` /
``ipc://`` endpoints now; it takes bounded time and never raises for a transient failure (a missing or
unreadable directory, a DNS lookup that fails or hangs): it returns the last good list of that entry.

``python -m pxdbg.shared.discovery ENDPOINTS`` prints the endpoints a string resolves to, one per line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pxdbg.shared.errors import ConfigError
from pxdbg.shared.sparselog import warn_sparsely
from pxdbg.shared.validators import positive_seconds

log = logging.getLogger("pxdbg.discovery")

#: A rendezvous entry whose heartbeat is older than this many of its intervals is stale.
STALE_INTERVALS = 3
#: Default heartbeat interval of a registration, seconds.
REGISTER_INTERVAL = 2.0
#: How often a consumer re-reads a rendezvous directory / re-resolves a DNS name, seconds.
DIR_REFRESH = 1.0
DNS_REFRESH = 5.0
#: Longest a DNS lookup may block :meth:`Source.resolve`, seconds (the lookup goes on in the background).
DNS_TIMEOUT = 2.0
#: Most entry files read from one rendezvous directory per resolve (a bound on a runaway directory).
MAX_DIR_ENTRIES = 4096
#: Largest rendezvous entry file read, bytes.
MAX_ENTRY_BYTES = 64 * 1024
#: Bounds on an entry's heartbeat interval, seconds: a registration that claims ``interval: 1e308`` would
#: otherwise never go stale.
MIN_ENTRY_INTERVAL = 0.01
MAX_ENTRY_INTERVAL = 600.0
#: A heartbeat further in the future than this (clock skew between hosts), seconds, is a lie: stale.
MAX_CLOCK_SKEW = 60.0
SUFFIX = ".json"

_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>\*|[A-Za-z0-9_.\-]+)):(?P<port>[0-9]{1,5})$")
_FORMS = "tcp://host:port, ipc:///path, dir:/path/to/rendezvous or dns://name:port"


def _host_port(rest: str, entry: str) -> tuple[str, int]:
    m = _HOSTPORT.match(rest)
    if not m:
        raise ConfigError(f"endpoint {entry!r} is not of the form host:port after the scheme; give one of {_FORMS}")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ConfigError(f"endpoint {entry!r}: port {port} is not in 1..65535")
    host = m.group("v6") or m.group("host")
    if host in ("*", "0.0.0.0", "::"):
        raise ConfigError(f"endpoint {entry!r} names no host to connect to; give the producer's address")
    return host, port


def tcp_endpoint(host: str, port: int) -> str:
    """``tcp://host:port``, with IPv6 addresses in brackets."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class _Static:
    dynamic = False
    refresh = math.inf

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def resolve(self) -> list[str]:
        return [self.endpoint]

    def __repr__(self) -> str:
        return self.endpoint


class _Rendezvous:
    dynamic = True
    refresh = DIR_REFRESH

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.last: list[str] = []

    def resolve(self) -> list[str]:
        try:
            entries = read_directory(self.directory)
        except OSError as exc:  # not there yet, or the shared filesystem hiccups: keep what we had
            log.debug("rendezvous %s unreadable (%s); keeping %d endpoint(s)", self.directory, exc, len(self.last))
            return list(self.last)
        self.last = sorted({e["endpoint"] for e in entries if not e["stale"]})
        return list(self.last)

    def __repr__(self) -> str:
        return f"dir:{self.directory}"


class _Dns:
    dynamic = True
    refresh = DNS_REFRESH

    def __init__(self, name: str, port: int, timeout: float = DNS_TIMEOUT) -> None:
        self.name, self.port, self.timeout = name, port, timeout
        self.last: list[str] = []
        self._lock = threading.Lock()
        self._pending: threading.Thread | None = None
        self._result: list[str] | None = None
        self._failures = 0

    def _lookup(self) -> None:
        try:
            infos = socket.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
            found = sorted({tcp_endpoint(str(info[4][0]), self.port) for info in infos})
        except (OSError, UnicodeError) as exc:
            self._failures += 1
            warn_sparsely(
                log,
                self._failures,
                "DNS lookup of %s failed (%s, %d so far); keeping %d endpoint(s)",
                self.name,
                exc,
                self._failures,
                len(self.last),
                first=3,
                every=100,
            )
            found = None
        with self._lock:
            self._result = found

    def resolve(self) -> list[str]:
        with self._lock:
            if self._pending is None or not self._pending.is_alive():
                # one lookup at a time: a hanging resolver never piles up threads
                self._result = None
                self._pending = threading.Thread(target=self._lookup, name="pxdbg-dns", daemon=True)
                self._pending.start()
            pending = self._pending
        pending.join(self.timeout)
        with self._lock:
            if self._result is not None:
                self.last = self._result
                self._result = None
            return list(self.last)

    def __repr__(self) -> str:
        return f"dns://{self.name}:{self.port}"


@dataclass
class Source:
    """The producers an endpoint string names; :meth:`resolve` gives the concrete endpoints now."""

    text: str
    entries: list = field(repr=False)

    @property
    def dynamic(self) -> bool:
        """True when the set of producers may change (a rendezvous directory or a DNS name)."""
        return any(e.dynamic for e in self.entries)

    @property
    def refresh_interval(self) -> float:
        """Seconds between two :meth:`resolve` calls of a consumer (``inf`` for a static list)."""
        return min(e.refresh for e in self.entries)

    def resolve(self) -> list[str]:
        """Concrete ``tcp://``/``ipc://`` endpoints, in the order of the entries, each once."""
        out: list[str] = []
        for entry in self.entries:
            for ep in entry.resolve():
                if ep not in out:
                    out.append(ep)
        return out

    def __str__(self) -> str:
        return self.text


def _parse_entry(entry: str):
    if entry.startswith("tcp://"):
        host, port = _host_port(entry[len("tcp://") :], entry)
        return _Static(tcp_endpoint(host, port))
    if entry.startswith("ipc://"):
        path = entry[len("ipc://") :]
        if not path or "\0" in path:
            raise ConfigError(f"endpoint {entry!r} names no socket path; give ipc:///path/to/socket")
        return _Static(entry)
    if entry.startswith("dir:"):
        path = entry[len("dir:") :]
        if path.startswith("//"):  # dir:///abs/path, as an URL
            path = path[2:]
        if not path or "\0" in path:
            raise ConfigError(f"endpoint {entry!r} names no directory; give dir:/path/to/rendezvous")
        return _Rendezvous(os.path.abspath(os.path.expanduser(path)))
    if entry.startswith("dns://"):
        host, port = _host_port(entry[len("dns://") :], entry)
        return _Dns(host, port)
    raise ConfigError(f"endpoint {entry!r} has an unknown form; give one of {_FORMS}")


def parse(text_or_list) -> Source:
    """Check an endpoint string (or a list of them) and return its :class:`Source`; :class:`ConfigError` if bad."""
    if isinstance(text_or_list, Source):
        return text_or_list
    if isinstance(text_or_list, str):
        items = text_or_list.split(",")
    else:
        try:
            items = [part for item in text_or_list for part in str(item).split(",")]
        except TypeError:
            raise ConfigError(f"endpoints must be a string or a list of strings, got {text_or_list!r}") from None
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ConfigError("no producer endpoints given; give one of " + _FORMS)
    return Source(",".join(items), [_parse_entry(item) for item in items])


# -- the rendezvous directory ----------------------------------------------------------------------------
def entry_name(endpoint: str) -> str:
    """The file name under which ``endpoint`` registers (one file per endpoint)."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", endpoint.split("://", 1)[-1]).strip("_") + SUFFIX


def _open_entry(directory: str, de: os.DirEntry) -> bytes | None:
    """The bytes of one entry file, or None when it is not a small regular file inside ``directory``.

    Never blocks and never leaves the directory: a FIFO opened for reading would block until a writer comes
    (every consumer of the directory hung), a device or a huge file is no entry, and a link pointing out of the
    directory is refused (links inside it, as a kubelet-style atomic swap makes, are followed)."""
    path = de.path
    if de.is_symlink():
        target, inside = os.path.realpath(path), os.path.realpath(directory)
        if os.path.commonpath([target, inside]) != inside:
            return None
        path = target
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return None
        raw = os.read(fd, MAX_ENTRY_BYTES + 1)
    finally:
        os.close(fd)
    return raw if len(raw) <= MAX_ENTRY_BYTES else None


def read_directory(directory: str | os.PathLike, now: float | None = None) -> list[dict]:
    """The entries of a rendezvous directory, each with a ``stale`` flag; files that are not small regular JSON
    entries (FIFOs, devices, links out of the directory, huge or malformed files) are skipped.

    An entry's ``interval`` is clamped to [:data:`MIN_ENTRY_INTERVAL`, :data:`MAX_ENTRY_INTERVAL`] and a
    heartbeat more than :data:`MAX_CLOCK_SKEW` seconds in the future is stale, so no entry stays fresh forever.
    Raises :class:`OSError` if the directory itself cannot be listed.
    """
    now = time.time() if now is None else now
    directory = os.fspath(directory)
    out = []
    with os.scandir(directory) as it:
        for i, de in enumerate(it):
            if i >= MAX_DIR_ENTRIES:
                log.warning("rendezvous %s has more than %d files; reading the first only", directory, i)
                break
            if de.name.startswith(".") or not de.name.endswith(SUFFIX):
                continue
            try:
                raw = _open_entry(directory, de)
                if raw is None:
                    log.debug("skipping rendezvous file %s: not a small regular file in the directory", de.path)
                    continue
                entry = json.loads(raw)
                endpoint, beat, interval = entry["endpoint"], float(entry["heartbeat"]), float(entry["interval"])
                if not (math.isfinite(beat) and math.isfinite(interval)):
                    raise ValueError("heartbeat and interval must be finite")
                parsed = _parse_entry(endpoint)
            except (OSError, ValueError, TypeError, KeyError, ConfigError, RecursionError) as exc:
                log.debug("skipping rendezvous file %s: %s", de.path, type(exc).__name__)
                continue
            if not isinstance(parsed, _Static):
                continue
            interval = min(max(interval, MIN_ENTRY_INTERVAL), MAX_ENTRY_INTERVAL)
            entry["interval"] = interval
            entry["stale"] = not (-MAX_CLOCK_SKEW <= now - beat <= STALE_INTERVALS * interval)
            entry["age_s"] = now - beat
            out.append(entry)
    return out


class Registration:
    """A producer's entry in a rendezvous directory, kept fresh by a heartbeat thread until :meth:`close`."""

    def __init__(
        self,
        directory: str | os.PathLike,
        endpoint: str,
        identity: str,
        info: dict | None = None,
        interval: float = REGISTER_INTERVAL,
    ) -> None:
        positive_seconds("the heartbeat interval", interval)
        parsed = _parse_entry(endpoint)
        if not isinstance(parsed, _Static):
            raise ConfigError(f"a producer registers a concrete tcp:// or ipc:// endpoint, got {endpoint!r}")
        self.directory = Path(directory)
        self.endpoint = parsed.endpoint
        self.interval = float(interval)
        self.path = self.directory / entry_name(self.endpoint)
        self._record = {
            "endpoint": self.endpoint,
            "identity": identity,
            "info": dict(info or {}),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "interval": self.interval,
            "started": time.time(),
        }
        self._stop = threading.Event()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the rendezvous directory {self.directory}: {exc}") from None
        self.beat()  # visible when the constructor returns
        self._thread = threading.Thread(target=self._run, name="pxdbg-register", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """Write the entry with a fresh heartbeat, atomically (a reader never sees half a file)."""
        record = {**self._record, "heartbeat": time.time()}
        fd, tmp = tempfile.mkstemp(prefix="." + self.path.name + ".", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                failures = 0
            except OSError as exc:  # a shared filesystem hiccup: try again next interval
                failures += 1
                warn_sparsely(
                    log,
                    failures,
                    "cannot refresh rendezvous entry %s (%d so far): %s",
                    self.path,
                    failures,
                    exc,
                    first=3,
                    every=100,
                )

    def close(self) -> None:
        """Stop the heartbeat and remove the entry. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def advertised_endpoint(bind: str) -> str:
    """The endpoint consumers connect to for a producer's ``tcp://`` bind; a wildcard host becomes this host's name.

    :class:`ConfigError` for an endpoint that cannot be advertised (an ephemeral port, not ``tcp://``).
    """
    if not bind.startswith("tcp://"):
        raise ConfigError(f"only tcp:// endpoints are registered, got {bind!r}")
    rest = bind[len("tcp://") :]
    host, _, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0", "[::]", "::"):
        rest = f"{socket.getfqdn()}:{port}"
    return _parse_entry("tcp://" + rest).endpoint


def register(
    directory: str | os.PathLike,
    endpoint: str,
    identity: str,
    info: dict | None = None,
    interval: float = REGISTER_INTERVAL,
) -> Registration:
    """Register ``endpoint`` in a rendezvous directory; the entry stays fresh until the result is closed."""
    return Registration(directory, endpoint, identity, info, interval)


class Registrar:
    """A producer's registrations: every ``tcp://`` bind endpoint, registered once its sockets are bound.

    The constructor checks the endpoints and creates the directory (:class:`ConfigError` at once if it cannot),
    so a bad ``--register`` fails before a model loads.
    """

    def __init__(self, directory: str | os.PathLike, binds: list[str], interval: float = REGISTER_INTERVAL) -> None:
        self.directory = Path(directory)
        self.endpoints = [advertised_endpoint(ep) for ep in binds if ep.startswith("tcp://")]
        if not self.endpoints:
            raise ConfigError("registering needs a tcp:// bind endpoint that consumers on other hosts can reach")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the rendezvous directory {self.directory}: {exc}") from None
        self.interval = interval
        self.registrations: list[Registration] = []
        self._lock = threading.Lock()
        self._closed = False

    def start_when(
        self, ready: threading.Event, identity: str, info: dict | None = None, timeout: float = 600.0
    ) -> threading.Thread:
        """Register in a background thread as soon as ``ready`` is set (within ``timeout`` seconds)."""

        def run() -> None:
            if not ready.wait(timeout):
                log.error("not registered in %s: the producer did not become ready in %.0f s", self.directory, timeout)
                return
            with self._lock:
                for ep in self.endpoints:
                    if self._closed:
                        return
                    try:
                        self.registrations.append(register(self.directory, ep, identity, info, self.interval))
                    except (ConfigError, OSError) as exc:
                        log.error("cannot register %s in %s: %s", ep, self.directory, exc)
                        continue
                    log.info("registered %s in %s", ep, self.directory)

        thread = threading.Thread(target=run, name="pxdbg-register", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Remove every entry (consumers drop this producer at their next look). Idempotent."""
        with self._lock:
            self._closed = True
            for reg in self.registrations:
                reg.close()
            self.registrations.clear()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pxdbg.shared.discovery ENDPOINTS", file=sys.stderr)
        return 2
    try:
        source = parse(argv[0])
    except ConfigError as exc:
        print(f"pxdbg discovery: {exc}", file=sys.stderr)
        return 2
    for ep in source.resolve():
        print(ep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
