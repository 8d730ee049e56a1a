"""A real ``pxdbg produce`` process on the loopback, for the tests of what operators see (metrics, status)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pipeline_helpers import wait_until

PXDBG = [sys.executable, "-m", "pxdbg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on the loopback; status 0 while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@contextlib.contextmanager
def producer_process(log_path: Path, env: dict, *extra: str, metrics: bool = True, ready_timeout: float = 90):
    """Yield ``(endpoint, metrics_port, process)`` of a parametric producer on the loopback, ready to serve;
    terminate it (then kill, bounded) on the way out."""
    port, metrics_port = free_port(), free_port()
    args = [*PXDBG, "produce", "--bind", f"tcp://127.0.0.1:{port}", *extra]
    if metrics:
        args += ["--metrics-port", str(metrics_port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:

        def up_or_gone() -> bool:
            if proc.poll() is not None:
                return True
            return http_get(metrics_port, "/readyz")[0] == 200 if metrics else b"serving" in log_path.read_bytes()

        up = wait_until(up_or_gone, ready_timeout)
        assert up and proc.poll() is None, log_path.read_text()
        yield f"tcp://127.0.0.1:{port}", metrics_port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
