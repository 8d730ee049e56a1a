"""What CURVE costs per frame: one producer socket and one consumer socket on the loopback, plaintext and CURVE.

Run: ``python -m pxdbg.bench.curve [--frames N] [--json]`` (or ``python -m pxdbg.curve_cost``; ``pxdbg bench``
prints the same figures).
A ROUTER (set up by ``security.apply_server``) answers
requests with frames of a fixed size; a DEALER (``security.apply_client``) keeps ``window`` requests in flight,
as a consumer's credit window does, and times ``frames`` replies. Both set-ups run in the same process, one after
the other and then again in reverse order, and the median of the per-frame times is taken for each. Frame sizes:
a typical sparse frame (~69 k digits at 4 bytes) and a dense one (7.68 MB, the dense fallback). Figures are
printed, never asserted; ``measure`` returns them for ``pxdbg bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from pxdbg.bench.machine import cpu_name
from pxdbg.shared import security
from pxdbg.shared.spec import TransportOptions

SIZES = {"sparse frame (0.28 MB)": 69_000 * 4, "dense frame (7.68 MB)": 40 * 250 * 768}


def _serve(ctx: zmq.Context, sock: zmq.Socket, payload: bytes, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            if sock.poll(100):
                peer, _ = sock.recv_multipart()
                sock.send_multipart([peer, b"hdr", payload], copy=False)
    finally:
        sock.close(0)


def _time_once(
    opts_server: TransportOptions, opts_client: TransportOptions, size: int, frames: int, window: int
) -> float:
    """Seconds per frame, receiving ``frames`` frames of ``size`` bytes with ``window`` requests in flight."""
    sctx, cctx = zmq.Context(), zmq.Context()
    stop = threading.Event()
    server = sctx.socket(zmq.ROUTER)
    security.apply_server(server, opts_server, ["tcp://127.0.0.1:0"])
    server.bind("tcp://127.0.0.1:*")
    endpoint = server.last_endpoint.decode()
    thread = threading.Thread(target=_serve, args=(sctx, server, os.urandom(size), stop), daemon=True)
    thread.start()
    client = cctx.socket(zmq.DEALER)
    client.linger = 0
    try:
        security.apply_client(client, opts_client, endpoint)
        client.connect(endpoint)
        client.send(b"warm-up")
        if not client.poll(10_000):
            raise RuntimeError(f"no reply from the test producer: {security.refused_endpoints(cctx)}")
        client.recv_multipart(copy=False)
        t0 = time.perf_counter()
        sent = received = 0
        while received < frames:
            while sent < frames and sent - received < window:
                client.send(b"req")
                sent += 1
            if not client.poll(10_000):
                raise RuntimeError("the test producer stopped answering")
            client.recv_multipart(copy=False)
            received += 1
        return (time.perf_counter() - t0) / frames
    finally:
        client.close(0)
        stop.set()
        thread.join(10)
        cctx.term()
        sctx.term()


def measure(frames: int = 200, window: int = 8, sizes: dict[str, int] | None = None) -> dict:
    """Per-frame seconds, plaintext and CURVE, for each frame size; keys in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        keys, allow = Path(tmp) / "keys", Path(tmp) / "allow"
        allow.mkdir()
        _, server_secret = security.new_key_pair(keys, "producer")
        client_public, client_secret = security.new_key_pair(keys, "consumer")
        (allow / client_public.name).write_bytes(client_public.read_bytes())
        plain = (TransportOptions(), TransportOptions())
        curve = (
            TransportOptions(curve_server_secret=str(server_secret), curve_allow_dir=str(allow)),
            TransportOptions(curve_client_secret=str(client_secret), curve_server_public=str(keys / "producer.key")),
        )
        results = {}
        for name, size in (sizes or SIZES).items():
            n = max(20, frames if size < 1_000_000 else frames // 10)
            runs = {"plaintext": [], "curve": []}
            for order in (("plaintext", "curve"), ("curve", "plaintext"), ("plaintext", "curve")):
                for which in order:
                    opts = plain if which == "plaintext" else curve
                    runs[which].append(_time_once(*opts, size, n, window))
            p, c = statistics.median(runs["plaintext"]), statistics.median(runs["curve"])
            results[name] = {
                "bytes": size,
                "frames": n,
                "plaintext_s": p,
                "curve_s": c,
                "extra_s": c - p,
                "ratio": c / p,
                "curve_mb_per_s": size / c / 1e6,
                "plaintext_mb_per_s": size / p / 1e6,
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="sparse frames timed per run (dense: a tenth)")
    parser.add_argument("--window", type=int, default=8, help="requests in flight (a consumer's prefetch)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the plaintext run's warning is expected here
    results = measure(args.frames, args.window)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"CURVE cost per frame, tcp loopback, {args.window} requests in flight, on {cpu_name()}:")
    for name, r in results.items():
        print(
            f"  {name}: plaintext {1e3 * r['plaintext_s']:.3f} ms, CURVE {1e3 * r['curve_s']:.3f} ms per frame: "
            f"+{1e3 * r['extra_s']:.3f} ms ({r['ratio']:.2f}x; {r['curve_mb_per_s']:.0f} MB/s with CURVE, "
            f"{r['plaintext_mb_per_s']:.0f} MB/s without)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
