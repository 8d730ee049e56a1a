"""``pxdbg produce``: serve frames of one model to consumers (a producer of a farm, or a local worker)."""

from __future__ import annotations

import argparse
import signal
import threading

from pxdbg.cli.common import has_random_weights, log, positive, seconds
from pxdbg.shared import discovery, security, transport
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.spec import ProducerSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ProducerSpec.add_arguments(parser)
    parser.add_argument("--bind", required=True, action="append", help="endpoint, e.g. tcp://*:5555 (repeatable)")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--max-consumers",
        type=positive,
        default=256,
        help="most consumers served at once; others get an error saying so (default %(default)s)",
    )
    parser.add_argument(
        "--max-pending",
        type=positive,
        default=4096,
        help="most frames one consumer may ask for and not yet have (default %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds a SIGTERM may take to finish the batches in progress (default %(default)s)",
    )
    parser.add_argument(
        "--hello-timeout",
        type=seconds,
        default=10.0,
        help="seconds a consumer may hold a slot after its hello without asking for frames (default %(default)s)",
    )
    parser.add_argument(
        "--max-per-address",
        type=positive,
        help="most consumers from one network address at once (default: half of --max-consumers)",
    )
    parser.add_argument(
        "--register",
        metavar="DIR",
        help="register each tcp endpoint in this rendezvous directory (consumers: --connect dir:DIR)",
    )
    security.add_server_arguments(parser)
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics, /healthz and /readyz on this port (needs pxdbg[metrics])",
    )
    parser.add_argument(
        "--metrics-host",
        help="address of the metrics port (default: the host of the first tcp --bind, * meaning 0.0.0.0; "
        "127.0.0.1 for a producer bound to ipc only)",
    )


def run(args: argparse.Namespace) -> int:
    from pxdbg.models import load_spec
    from pxdbg.producer.server import ProducerServer

    spec = ProducerSpec.from_args(args)
    transport.check_binds(args.bind)  # before the model loads: a malformed or busy endpoint fails at once
    for ep in args.bind:
        _check_tcp_port_free(ep)
    # checked before the model loads: a bad --register fails at once
    registrar = discovery.Registrar(args.register, args.bind) if args.register else None
    threads = spec.threads or _default_producer_threads(spec)
    uses_torch = spec.info.is_gan or spec.device != "cpu"  # the parametric model on the CPU is numpy code
    if uses_torch:
        import torch

        torch.set_num_threads(threads)
    model = load_spec(spec)
    how = f"{threads} torch thread(s)" if uses_torch else "numpy (torch not loaded)"
    log.info("%s on %s with %s", model.identity, model.device, how)
    if has_random_weights(model):
        log.warning(
            "%s holds seeded random weights (pxdbg models init): its frames are no background", model.checkpoint_path
        )
    # A GAN on a CPU computes in fixed calls of a few images whatever the batch, so a batch of one event costs
    # nothing in throughput and delivers each frame as soon as it is made (an ieagan event takes ~10 s on a CPU).
    max_batch = spec.max_batch or (1 if model.is_gan and model.device.type == "cpu" else 8)
    server = ProducerServer(
        model,
        args.bind,
        max_batch=max_batch,
        parent_pid=args.parent_pid,
        max_consumers=args.max_consumers,
        max_pending=args.max_pending,
        grace=args.grace,
        hello_timeout=args.hello_timeout,
        max_per_address=args.max_per_address,
        transport_options=security.options_from_args(args),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.shutdown())  # drain; a second signal stops at once
    signal.signal(signal.SIGHUP, lambda *_: security.reload_allow_lists())
    metrics = None
    if args.metrics_port is not None:
        from pxdbg.producer.metrics import MetricsServer, default_host

        metrics = MetricsServer(server, args.metrics_port, host=args.metrics_host or default_host(args.bind))
    ready = threading.Event()
    if registrar is not None:  # entries appear once the sockets are bound, and go when the producer stops
        registrar.start_when(ready, str(model.identity), {"device": str(model.device)})
    try:
        server.serve(ready)
    finally:
        if registrar is not None:
            registrar.close()
        if metrics is not None:
            metrics.close()
    return 0


def _check_tcp_port_free(endpoint: str) -> None:
    """Refuse a tcp endpoint whose port another process listens on, before the model loads (and before the
    producer logs anything about a start it cannot finish)."""
    import errno
    import socket

    if not endpoint.startswith("tcp://"):
        return
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    host = "" if host == "*" else host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds: TIME_WAIT is no conflict
        probe.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot bind {endpoint}: the address is in use (another producer?); stop that one or choose "
                f"another port"
            ) from None
        # anything else (a name to resolve, an address not on this host) is for libzmq to report
    finally:
        probe.close()


def _default_producer_threads(spec: ProducerSpec) -> int:
    """Torch threads of a producer when ``--threads`` is not given: the engine's choice for a GAN on this
    device, one for the sparse models (they run numpy in one thread; scale those with processes)."""
    if not spec.info.is_gan:
        return 1
    try:
        from pxdbg.models.engine import recommended_threads
    except ImportError:
        return 1
    return recommended_threads(spec.info, spec.device)
