"""The CURVE command-line options of ``pxdbg produce`` and ``pxdbg run``, and the TransportOptions they give.

Options name key files only (key material never travels in argv); an option not given falls back to its
environment variable (:data:`~.keys.ENV_VARS`) when the socket is set up, not here.
"""

from __future__ import annotations

from pxdbg.shared.security.keys import ENV_VARS, PUBLIC_SUFFIX, SECRET_SUFFIX


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
