"""The producer's metrics and health port, scraped over real HTTP on the loopback and parsed by prometheus_client."""

from __future__ import annotations

import copy
import socket
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pxdbg.producer.metrics import MetricsServer, health
from pxdbg.shared.errors import ConfigError, MissingDependencyError

pytestmark = pytest.mark.timeout(60)

SNAPSHOT = {
    "identity": "parametric@8f02cf77526a/fp32",
    "host": "gpu01",
    "pid": 4242,
    "device": "cpu",
    "endpoints": ["tcp://*:5555"],
    "uptime_s": 12.5,
    "ready": True,
    "last_progress_s": 0.25,
    "consumers": 3,
    "pending": 7,
    "counters": {
        "frames_generated": 120,
        "frames_sent": 117,
        "malformed_messages": 2,
        "refused_auth": 5,
        "requests_over_limit": 1,
        "sends_to_gone_consumer": 4,
    },
    "histograms": {
        "model_seconds": {"buckets": [0.01, 0.1, 1.0], "counts": [3, 10, 15, 15], "sum": 2.5, "count": 15},
        "post_seconds": {"buckets": [0.001, 0.01], "counts": [9, 15, 15], "sum": 0.06, "count": 15},
        "batch_size": {"buckets": [1, 2, 4, 8], "counts": [2, 5, 9, 15, 15], "sum": 120, "count": 15},
    },
}


class FakeProducer:
    """A stand-in with ProducerServer.snapshot()'s documented shape, changed by the test between scrapes."""

    def __init__(self) -> None:
        self.snap = copy.deepcopy(SNAPSHOT)
        self.fail = False

    def snapshot(self) -> dict:
        if self.fail:
            raise RuntimeError("snapshot broke")
        return copy.deepcopy(self.snap)


def get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int) -> dict:
    status, _, text = get(port, "/metrics")
    assert status == 200, text
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture
def served():
    fake = FakeProducer()
    with MetricsServer(fake, 0, host="127.0.0.1") as server:
        yield fake, server.port


def value(family, sample_name: str | None = None, **labels) -> float:
    found = [
        s.value
        for s in family.samples
        if (sample_name is None or s.name == sample_name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family.name, sample_name, labels, family.samples)
    return found[0]


def test_scrape_reads_the_snapshot_at_scrape_time(served):
    fake, port = served
    fams = scrape(port)
    assert value(fams["pxdbg_producer_frames_generated"], "pxdbg_producer_frames_generated_total") == 120
    assert value(fams["pxdbg_producer_frames_sent"], "pxdbg_producer_frames_sent_total") == 117
    assert value(fams["pxdbg_producer_malformed_messages"], "pxdbg_producer_malformed_messages_total") == 2
    assert value(fams["pxdbg_producer_refused_auth"], "pxdbg_producer_refused_auth_total") == 5
    assert value(fams["pxdbg_producer_sends_to_gone_consumer"], "pxdbg_producer_sends_to_gone_consumer_total") == 4
    assert value(fams["pxdbg_producer_consumers"]) == 3
    assert value(fams["pxdbg_producer_pending"]) == 7
    assert value(fams["pxdbg_producer_ready"]) == 1
    info = fams["pxdbg_producer_info"]  # an info metric: a gauge of 1 in the text format
    assert value(info, identity="parametric@8f02cf77526a/fp32", device="cpu", host="gpu01") == 1
    model = fams["pxdbg_producer_model_seconds"]
    assert model.type == "histogram"
    assert value(model, "pxdbg_producer_model_seconds_bucket", le="0.1") == 10
    assert value(model, "pxdbg_producer_model_seconds_bucket", le="+Inf") == 15
    assert value(model, "pxdbg_producer_model_seconds_count") == 15
    assert value(model, "pxdbg_producer_model_seconds_sum") == 2.5
    assert value(fams["pxdbg_producer_batch_size"], "pxdbg_producer_batch_size_bucket", le="4.0") == 9
    assert value(fams["pxdbg_producer_post_processing_seconds"], "pxdbg_producer_post_processing_seconds_sum") == 0.06
    assert "pxdbg_producer_gpu_memory_bytes" not in fams, "no GPU numbers for a CPU producer"

    fake.snap["counters"]["frames_sent"] = 500  # the next scrape sees the producer's numbers of that moment
    fake.snap["consumers"] = 0
    fams = scrape(port)
    assert value(fams["pxdbg_producer_frames_sent"], "pxdbg_producer_frames_sent_total") == 500
    assert value(fams["pxdbg_producer_consumers"]) == 0


def test_label_values_are_bounded(served):
    """Series do not multiply with traffic: more consumers and frames change values, never the set of series."""
    fake, port = served

    def series(fams):
        return {
            (s.name, tuple(sorted(s.labels.items())))
            for f in fams.values()
            for s in f.samples
            if not s.name.startswith("process_")
        }

    before = series(scrape(port))
    fake.snap["consumers"], fake.snap["pending"] = 4000, 90000
    for name in ("frames_generated", "frames_sent", "malformed_messages", "refused_auth"):
        fake.snap["counters"][name] *= 1000
    after = series(scrape(port))
    assert before == after
    labels = {k for _, items in after for k, _ in items}
    assert labels <= {"le", "identity", "device", "host", "pid"}, labels


def test_health_and_readiness(served):
    fake, port = served
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 200
    fake.snap["pending"], fake.snap["last_progress_s"] = 0, 900.0  # idle for a long time is alive
    status, _, text = get(port, "/healthz")
    assert (status, text.strip()) == (200, "idle")
    fake.snap["pending"] = 12  # pending work and no progress: stuck
    status, _, text = get(port, "/healthz")
    assert status == 503 and "stalled: 12 frames pending" in text
    fake.snap["ready"] = False  # loading, warming up or draining: not ready, but not to be restarted either
    assert get(port, "/readyz")[0] == 503
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/nothing")[0] == 404


def test_a_failing_snapshot_is_a_500_and_the_server_goes_on(served):
    fake, port = served
    fake.fail = True
    assert get(port, "/metrics")[0] == 500
    assert get(port, "/healthz")[0] == 500
    fake.fail = False
    assert get(port, "/metrics")[0] == 200


def test_openmetrics_when_asked(served):
    _, port = served
    status, content_type, text = get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_health_rule_is_a_pure_function():
    assert health({"ready": True, "pending": 3, "last_progress_s": 5.0}, stall_s=10) == (
        True,
        "generating: 3 frames pending, last batch 5.0 s ago",
    )
    assert not health({"ready": True, "pending": 3, "last_progress_s": 11.0}, stall_s=10)[0]


def test_port_in_use_and_missing_dependency(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot serve metrics on 127.0.0.1"):
            MetricsServer(FakeProducer(), taken.getsockname()[1], host="127.0.0.1")
    with pytest.raises(ConfigError, match="0..65535"):
        MetricsServer(FakeProducer(), 70000)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'pxdbg\[metrics\]'"):
        MetricsServer(FakeProducer(), 0)


def test_gpu_memory_family_on_cuda(monkeypatch):
    """The GPU family comes from torch.cuda at scrape time. No GPU here: a stand-in module with torch.cuda's four
    calls checks the family and its bounded 'kind' label; on a CUDA producer the real calls answer."""
    import types

    calls = {"memory_allocated": 1.0e9, "memory_reserved": 2.0e9}
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        mem_get_info=lambda dev: (5.0e10, 8.0e10),
        **{name: (lambda dev, v=v: v) for name, v in calls.items()},
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, device=lambda d: d))
    fake = FakeProducer()
    fake.snap["device"] = "cuda:0"
    with MetricsServer(fake, 0, host="127.0.0.1") as server:
        fams = scrape(server.port)
    gpu = fams["pxdbg_producer_gpu_memory_bytes"]
    assert {s.labels["kind"]: s.value for s in gpu.samples} == {
        "allocated": 1.0e9,
        "reserved": 2.0e9,
        "free": 5.0e10,
        "total": 8.0e10,
    }


def test_every_counter_the_producer_increments_is_declared():
    """Families exist from the first scrape only for declared names: read the producer's code (and the CURVE
    allow-list's counters) for every counter name and find each in COUNTER_HELP, so a new counter cannot be
    added without its help text and its zero."""
    import inspect
    import re
    from pathlib import Path

    from pxdbg.producer import stats
    from pxdbg.producer.metrics import GAUGE_COUNTERS
    from pxdbg.shared import security

    source = "".join(p.read_text() for p in Path(stats.__file__).parent.glob("*.py"))
    used = set(re.findall(r"""(?:\.count|_bad)\(\s*["']([a-z_]+)["']""", source))
    used |= set(re.findall(r'"([a-z_]+)":', inspect.getsource(security.AllowList.counters)))
    assert {"frames_sent", "requests_before_hello", "unexpected_messages", "refused_unknown_key"} <= used
    assert used - set(stats.COUNTER_HELP) - set(GAUGE_COUNTERS) == set()


def test_default_metrics_host_follows_the_frame_socket():
    from pxdbg.producer.metrics import default_host

    assert default_host(["tcp://127.0.0.1:5555"]) == "127.0.0.1"
    assert default_host(["tcp://*:5555"]) == "0.0.0.0"
    assert default_host(["ipc:///tmp/x.sock", "tcp://[::1]:5555"]) == "::1"
    assert default_host(["ipc:///tmp/x.sock"]) == "127.0.0.1"


@pytest.mark.timeout(120)
def test_a_fresh_producer_exports_every_family_at_zero(tmp_path, python_env):
    """A real `pxdbg produce` that nobody has talked to: every documented counter family is there at zero (so
    rate() sees the first event), with the gauges and histograms; its metrics port, given no --metrics-host,
    listens where the frames do (the loopback), not on every interface."""
    from ops_helpers import producer_process

    from pxdbg.producer.metrics import GAUGE_COUNTERS
    from pxdbg.producer.stats import COUNTER_HELP

    log_path = tmp_path / "producer.log"
    with producer_process(log_path, python_env) as (_, metrics_port, _proc):
        fams = scrape(metrics_port)
    for name in COUNTER_HELP:
        family = fams[f"pxdbg_producer_{name}"]
        assert family.type == "counter" and value(family, f"pxdbg_producer_{name}_total") == 0, name
    for name in (*GAUGE_COUNTERS, "consumers", "pending", "ready", "uptime_seconds", "seconds_since_progress"):
        assert fams[f"pxdbg_producer_{name}"].type == "gauge", name
    for name in ("model_seconds", "post_processing_seconds", "batch_size"):
        assert value(fams[f"pxdbg_producer_{name}"], f"pxdbg_producer_{name}_count") == 0
    assert value(fams["pxdbg_producer_ready"]) == 1
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in log_path.read_text()
