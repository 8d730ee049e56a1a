"""A real ``pxdbg produce`` process on the loopback, for the tests of what operators see (metrics, status)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from pipeline_helpers import wait_until

PXDBG = [sys.executable, "-m", "pxdbg"]
PROM = Path(__file__).resolve().parent.parent / "examples" / "prometheus"


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


def missing_tool(why: str) -> NoReturn:
    """A tool the test needs is not installed: a skip with ``why``, or a failure under CI, which installs it."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def promtool() -> str:
    """The promtool command; a skip with the reason where it is missing, a failure under CI (CI installs it)."""
    found = shutil.which("promtool")
    if found is None:
        missing_tool("promtool not installed (apt-get install prometheus, or bash tools/farm-deps.sh as root)")
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (recording rules' names are level:metric:operation)."""
    names = set(re.findall(r"\b(pxdbg_[a-z0-9_]+|[a-z]+:pxdbg_[a-z0-9_]+:[a-z0-9_]+|up)\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def exported_families(tmp_path, python_env) -> set[str]:
    """Families a fresh real producer exports, those `pxdbg farm jobs` writes, and the CUDA-only GPU family."""
    from prometheus_client.parser import text_string_to_metric_families

    from pxdbg.consumer import summaries

    with producer_process(tmp_path / "producer.log", python_env) as (_, metrics_port, _proc):
        status, text = http_get(metrics_port, "/metrics")
    assert status == 200, text
    text += summaries.prometheus_text(summaries.CampaignTotals())
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples} | {family.name}
    return names | {"pxdbg_producer_gpu_memory_bytes", "up"}


def rule_exprs() -> tuple[set[str], list[str]]:
    groups = yaml.safe_load((PROM / "pxdbg-rules.yml").read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    return recorded, [r["expr"] for g in groups for r in g["rules"]]
