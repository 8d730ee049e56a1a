"""The two entry points: set up a producer's socket before it binds, a consumer's before it connects.

:mod:`pxdbg.shared.transport` calls :func:`apply_server` and :func:`apply_client`. CURVE protects producers with
a tcp endpoint; ``ipc://`` endpoints of a producer without CURVE must sit in a private directory
(:func:`~.policy.check_private_ipc`); a tcp producer without keys serves anyone who reaches it, and says so in
its log. A consumer's socket gets a monitor in every case, so a refusal is reported at once (:mod:`.refusals`).
"""

from __future__ import annotations

import logging
import os

import zmq

from pxdbg.shared.errors import ConfigError
from pxdbg.shared.security.guard import context_guard
from pxdbg.shared.security.keys import ENV_VARS, PUBLIC_SUFFIX, SECRET_SUFFIX, load_public, load_secret, resolved
from pxdbg.shared.security.policy import AllowList, check_private_ipc, is_tcp

log = logging.getLogger("pxdbg.security")


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
        context_guard(sock.context).add_server(sock, allow)
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
    and in every case a monitor that records a refused handshake for :func:`~.refusals.refusal`.
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
        assert server_file  # both or neither, checked above
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
    context_guard(sock.context).add_client(sock, endpoint, why)
