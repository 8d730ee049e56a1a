"""CURVE authentication and encryption of producer sockets, admitting only allow-listed consumer keys.

A producer holds a server key pair and a directory of consumers' public certificates (the allow-list); a
consumer holds a client key pair and the producer's public certificate. Split along ``zmq.auth``'s lines:

- :mod:`.keys`: key files (``pxdbg keys new``, reading them, the environment variables naming them);
- :mod:`.policy`: who may connect, with no socket or thread: the allow-list, the ZAP answer, how a consumer
  judges failed handshakes, private ipc directories;
- :mod:`.guard`: the one thread per zmq context that applies the policy (ZAP requests, socket monitors,
  allow-list reloads);
- :mod:`.sockets`: the entry points :func:`apply_server` and :func:`apply_client`, which
  :mod:`pxdbg.shared.transport` calls before a producer binds and a consumer connects;
- :mod:`.refusals`: what callers read back (why a producer refused this consumer, so the consumer says so at
  once instead of waiting for its connect timeout; a producer's allow-list numbers);
- :mod:`.arguments`: the command-line options.

Policy: CURVE protects producers with a tcp endpoint. ``ipc://`` endpoints of a producer without CURVE must
sit in a private directory (mode 0700, ours), where only this user can connect; :func:`apply_server` refuses
any other. A tcp producer without keys serves anyone who reaches it, and says so in its log. The names below
are the public API; import them from here. Torch-free (consumers import it).
"""

from __future__ import annotations

from pxdbg.shared.security.arguments import add_client_arguments, add_server_arguments, options_from_args
from pxdbg.shared.security.guard import ZAP_ENDPOINT, reload_allow_lists
from pxdbg.shared.security.keys import (
    ENV_VARS,
    MAX_KEY_FILE_BYTES,
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    KeyFileError,
    load_public,
    load_secret,
    new_key_pair,
    resolved,
)
from pxdbg.shared.security.policy import (
    CONFIRMING_FAILURES,
    AllowList,
    check_private_ipc,
    count_refusal,
    is_tcp,
    zap_reply,
)
from pxdbg.shared.security.refusals import (
    AuthenticationRefused,
    allow_list,
    connection_state,
    refusal,
    refused_endpoints,
)
from pxdbg.shared.security.sockets import apply_client, apply_server

__all__ = [
    "CONFIRMING_FAILURES",
    "ENV_VARS",
    "MAX_KEY_FILE_BYTES",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "ZAP_ENDPOINT",
    "AllowList",
    "AuthenticationRefused",
    "KeyFileError",
    "add_client_arguments",
    "add_server_arguments",
    "allow_list",
    "apply_client",
    "apply_server",
    "check_private_ipc",
    "connection_state",
    "count_refusal",
    "is_tcp",
    "load_public",
    "load_secret",
    "new_key_pair",
    "options_from_args",
    "refusal",
    "refused_endpoints",
    "reload_allow_lists",
    "resolved",
    "zap_reply",
]
