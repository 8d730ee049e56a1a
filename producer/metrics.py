"""The producer's HTTP port for the people who run the farm: Prometheus metrics, liveness and readiness.

``GET /metrics``: the producer's numbers in the Prometheus text format, read from ``source.snapshot()`` at
scrape time by :class:`SnapshotCollector` (nothing is counted twice, nothing is kept here).
``GET /healthz`` (liveness): 200 while generation progresses or the producer is idle; 503 when frames are pending
and no batch has finished for ``stall_s`` seconds (a stuck GPU or a dead generation thread: restart it).
``GET /readyz`` (readiness): 200 once the model is loaded and warmed up and the producer takes requests; 503
before that and while it drains after SIGTERM.

``source`` is anything with a ``snapshot() -> dict`` of the documented shape (``ProducerServer``). No label takes
values from the network: every label value comes from this module or is a single per-process value (identity,
device, host), so the number of series is bounded.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pxdbg.producer.stats import COUNTER_HELP
from pxdbg.shared.errors import ConfigError, require

log = logging.getLogger("pxdbg.producer")

PREFIX = "pxdbg_producer"
#: Seconds without a finished batch, while frames are pending, after which /healthz says 503.
DEFAULT_STALL_S = 120.0
#: Snapshot numbers that are levels, not counts: exported as gauges without ``_total``.
GAUGE_COUNTERS = {"allow_list_keys": "Consumer keys in the CURVE allow-list."}
HISTOGRAM_HELP = {
    "model_seconds": ("model_seconds", "Seconds per model call (one batch)."),
    "post_seconds": ("post_processing_seconds", "Seconds per batch spent encoding frames for the wire."),
    "batch_size": ("batch_size", "Frames per model call."),
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def default_host(binds: list[str]) -> str:
    """The metrics port's address for a producer bound to ``binds``: the host of the first tcp endpoint (``*``:
    every interface), else the loopback (an ipc-only producer serves this machine), so the metrics port is never
    more exposed than the frames."""
    for endpoint in binds:
        scheme, _, rest = endpoint.partition("://")
        if scheme == "tcp":
            host = rest.rpartition(":")[0]
            if host == "*":
                return "0.0.0.0"
            return host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return "127.0.0.1"


def _gpu_memory(device: str) -> dict[str, float]:
    """Bytes of GPU memory (allocated and reserved by torch; free and total on the card) on a CUDA device."""
    torch = sys.modules.get("torch")  # a producer on CUDA has imported it; never import it here
    if torch is None or not str(device).startswith("cuda") or not torch.cuda.is_initialized():
        return {}
    dev = torch.device(device)
    free, total = torch.cuda.mem_get_info(dev)
    return {
        "allocated": float(torch.cuda.memory_allocated(dev)),
        "reserved": float(torch.cuda.memory_reserved(dev)),
        "free": float(free),
        "total": float(total),
    }


class SnapshotCollector:
    """A Prometheus collector that turns one ``source.snapshot()`` per scrape into metric families."""

    def __init__(self, source) -> None:
        self.source = source

    def describe(self):
        return []  # families depend on the snapshot; an empty describe keeps registration from scraping early

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        snap = self.source.snapshot()
        yield InfoMetricFamily(
            f"{PREFIX}",
            "What this producer serves and where it runs.",
            value={
                "identity": str(snap.get("identity", "")),
                "device": str(snap.get("device", "")),
                "host": str(snap.get("host", "")),
                "pid": str(snap.get("pid", "")),
            },
        )
        for name, help_text in (
            ("consumers", "Consumers connected."),
            ("pending", "Frames requested and not yet generated."),
            ("uptime_s", "Seconds since the producer started."),
            ("last_progress_s", "Seconds since a batch last finished (or since the start)."),
        ):
            if name in snap:
                metric = {"uptime_s": "uptime_seconds", "last_progress_s": "seconds_since_progress"}.get(name, name)
                yield GaugeMetricFamily(f"{PREFIX}_{metric}", help_text, value=float(snap[name]))
        yield GaugeMetricFamily(
            f"{PREFIX}_ready",
            "1 once the model is loaded and warmed up and requests are taken.",
            value=1.0 if snap.get("ready") else 0.0,
        )
        counters = dict(snap.get("counters", {}))
        for name in COUNTER_HELP:  # every family from the first scrape, whatever the snapshot holds yet
            counters.setdefault(name, 0)
        for name, help_text in GAUGE_COUNTERS.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=float(counters.pop(name, 0)))
        for name, value in sorted(counters.items()):
            if not _NAME.match(name):  # names come from the producer's code; a strange one is a bug, not a series
                log.debug("metrics: skipping counter %r", name)
                continue
            help_text = COUNTER_HELP.get(name, f"Producer counter {name.replace('_', ' ')}.")
            yield CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=float(value))
        for key, hist in sorted(snap.get("histograms", {}).items()):
            metric, help_text = HISTOGRAM_HELP.get(key, (key, f"Producer histogram {key.replace('_', ' ')}."))
            if _NAME.match(metric):
                yield HistogramMetricFamily(
                    f"{PREFIX}_{metric}", help_text, buckets=_buckets(hist), sum_value=float(hist["sum"])
                )
        memory = _gpu_memory(str(snap.get("device", "")))
        if memory:
            gpu = GaugeMetricFamily(
                f"{PREFIX}_gpu_memory_bytes",
                "GPU memory: torch's allocated and reserved bytes, and the card's free and total bytes.",
                labels=["kind"],
            )
            for kind, value in memory.items():
                gpu.add_metric([kind], value)
            yield gpu


def _buckets(hist: dict) -> list[tuple[str, float]]:
    """Prometheus ``(le, cumulative count)`` pairs from a snapshot histogram (its last count is +Inf)."""
    bounds, counts = [float(b) for b in hist["buckets"]], [float(c) for c in hist["counts"]]
    if bounds and math.isinf(bounds[-1]):
        bounds = bounds[:-1]
    if len(counts) != len(bounds) + 1:
        raise ValueError(
            f"a snapshot histogram needs one count per bucket plus +Inf: {len(bounds)} buckets, {len(counts)} counts"
        )
    return [*((repr(b), c) for b, c in zip(bounds, counts)), ("+Inf", counts[-1])]


def health(snap: dict, stall_s: float = DEFAULT_STALL_S) -> tuple[bool, str]:
    """Liveness from a snapshot: (alive, one line saying why)."""
    pending, since = int(snap.get("pending", 0)), float(snap.get("last_progress_s", 0.0))
    if not snap.get("ready"):
        return True, "starting or draining"
    if pending == 0:
        return True, "idle" if since > 1.0 else "generating"
    if since <= stall_s:
        return True, f"generating: {pending} frames pending, last batch {since:.1f} s ago"
    return False, f"stalled: {pending} frames pending and no batch finished for {since:.0f} s (limit {stall_s:.0f} s)"


def readiness(snap: dict) -> tuple[bool, str]:
    """Readiness from a snapshot: (ready, one line)."""
    if snap.get("ready"):
        return True, f"ready: serving {snap.get('identity', '?')} on {snap.get('device', '?')}"
    return False, "not ready: loading or warming up the model, or draining after SIGTERM"


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (port 0: any free port), in a daemon thread.

    Use as a context manager, or call :meth:`close` (it stops the thread within ``timeout`` seconds).
    """

    def __init__(self, source, port: int, host: str = "0.0.0.0", stall_s: float = DEFAULT_STALL_S) -> None:
        prometheus_client = require("prometheus_client", "metrics", "the producer's metrics port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"the metrics port must be 0..65535, got {port!r}")
        self.source, self.stall_s = source, stall_s
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(source))
        self.registry.register(prometheus_client.ProcessCollector(registry=None))
        self._encoder = prometheus_client.exposition.choose_encoder
        handler = type("Handler", (_Handler,), {"owner": self})
        server_class = _IPv6HTTPServer if ":" in host else ThreadingHTTPServer
        try:
            self.httpd = server_class((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}; choose another --metrics-port") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="pxdbg-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, self.port)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout)
        self.httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    owner: MetricsServer
    timeout = 10  # seconds a slow client may hold a handler thread

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encode, content_type = self.owner._encoder(self.headers.get("Accept"))
                return self._reply(200, encode(self.owner.registry), content_type)
            if path in ("/healthz", "/readyz"):
                snap = self.owner.source.snapshot()
                ok, text = health(snap, self.owner.stall_s) if path == "/healthz" else readiness(snap)
                return self._reply(200 if ok else 503, (text + "\n").encode())
            return self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")
        except Exception as exc:  # the producer must not die of a scrape; the prober sees a 500
            log.exception("metrics endpoint %s failed", path)
            return self._reply(500, f"internal error: {exc!r}\n".encode())

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # scrapes every few seconds would flood the log
        log.debug("metrics http: " + fmt, *args)
