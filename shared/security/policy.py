"""Who may connect, decided without sockets or threads: the allow-list, the ZAP answer, the refusal count.

Like ``zmq.auth.base`` (the policy, apart from the thread that runs it, :mod:`.guard`):

- :class:`AllowList`: the consumer public keys a producer admits, every ``*.key`` file of a directory, re-read
  when the files change; a malformed file is skipped with one warning per reload, never a crash;
- :func:`zap_reply`: the answer to one ZAP request (RFC 27): admit a CURVE client whose key is listed;
- :func:`count_refusal`: how a consumer judges its failed handshakes (a final refusal at once, a lost
  handshake only when it repeats, since a producer dying mid-handshake looks the same once);
- :func:`check_private_ipc`: an ``ipc://`` endpoint without CURVE must sit in a directory only this user enters.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

import zmq
from zmq.utils import z85

from pxdbg.shared.errors import ConfigError
from pxdbg.shared.security.keys import MAX_KEY_FILE_BYTES, PUBLIC_SUFFIX, KeyFileError, load_public
from pxdbg.shared.sparselog import warn_sparsely

log = logging.getLogger("pxdbg.security")

#: Handshakes in a row lost without a reason (EVENT_HANDSHAKE_FAILED_NO_DETAIL) that a consumer takes for a refusal.
CONFIRMING_FAILURES = 2
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


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


def zap_reply(msg: list[bytes], domains: Mapping[str, AllowList]) -> list[bytes]:
    """The reply to one ZAP request ``msg`` (RFC 27): ``200`` for a CURVE client whose key is in the allow-list
    of the request's domain (``domains``: ZAP domain -> allow-list), ``400`` for any other, ``500`` for a request
    too short to be one. Counts the admitted and refused on the allow-list."""
    if len(msg) < 6:
        log.error("malformed ZAP request with %d frames", len(msg))
        return [b"1.0", b"", b"500", b"malformed request", b"", b""]
    version, request_id, domain, address, _identity, mechanism = msg[:6]
    allow = domains.get(domain.decode(errors="replace"))
    key = msg[6] if mechanism == b"CURVE" and len(msg) > 6 else None
    refused = [version, request_id, b"400", b"key not in the allow-list", b"", b""]
    if allow is None:  # a domain no socket of ours set: nothing to count
        return refused
    name = allow.keys.get(key) if key is not None else None
    if name is not None:
        allow.admitted += 1
        return [version, request_id, b"200", b"OK", name.encode(), b""]
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
    return refused


def count_refusal(
    event: int, why: Mapping[str, str], before: tuple[str | None, int] = (None, 0)
) -> tuple[tuple[str, int], bool]:
    """A consumer's failed handshake (monitor ``event``) on top of the endpoint's ``before`` = (reason, failures
    in a row): the new (reason, count) and whether to log the reason now. ``why`` holds the texts for an
    ``"auth"`` refusal (a ZAP "no") and any other ``"handshake"`` failure.

    AUTH and PROTOCOL (e.g. a mechanism mismatch) are final: libzmq gives up on the connection, so the count is
    :data:`CONFIRMING_FAILURES` at once. NO_DETAIL is a connection lost during the handshake, which a producer
    dying at that moment also causes; libzmq reconnects, and a second failure in a row confirms it. The reason
    is logged once when it is confirmed, and again only if it changes."""
    reason = why["auth" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake"]
    previous, count = before
    final = event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    count = CONFIRMING_FAILURES if final else (count + 1 if previous == reason else 1)
    log_now = count >= CONFIRMING_FAILURES and (previous != reason or count == CONFIRMING_FAILURES)
    return (reason, count), log_now
