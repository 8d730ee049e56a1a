"""CURVE key files: writing a key pair, reading public and secret keys, and where a process finds its files.

Keys are ZeroMQ certificate files (``NAME.key`` public, ``NAME.key_secret`` public + secret), written by
:func:`new_key_pair` (``pxdbg keys new``) and readable by ``zmq.auth.load_certificate`` and other ZeroMQ tools.
Key material never travels in argv: options and environment variables (:data:`ENV_VARS`) name files. A secret
key file that other users can read is refused; a file larger than a certificate is never read.
"""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from pxdbg.shared.errors import ConfigError

#: Environment variables naming key files, read when the matching TransportOptions field is ``None``.
ENV_VARS = {
    "curve_server_secret": "PXDBG_CURVE_SERVER_SECRET",  # producer: its NAME.key_secret
    "curve_allow_dir": "PXDBG_CURVE_ALLOW_DIR",  # producer: directory of consumers' NAME.key files
    "curve_client_secret": "PXDBG_CURVE_CLIENT_SECRET",  # consumer: its NAME.key_secret
    "curve_server_public": "PXDBG_CURVE_SERVER_PUBLIC",  # consumer: the producer's NAME.key
}
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
#: Largest key file read, bytes (a ZeroMQ certificate has about 300).
MAX_KEY_FILE_BYTES = 64 * 1024


class KeyFileError(ConfigError):
    """A key file or allow-list directory is missing, malformed or readable by other users."""


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


def resolved(opts, environ=None) -> dict[str, str | None]:
    """The four key-file settings of ``opts`` (TransportOptions or None), unset ones from the environment."""
    environ = os.environ if environ is None else environ
    return {
        name: (getattr(opts, name, None) if getattr(opts, name, None) is not None else environ.get(var) or None)
        for name, var in ENV_VARS.items()
    }
