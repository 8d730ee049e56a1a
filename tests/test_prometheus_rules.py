"""The shipped Prometheus rules (examples/prometheus/): checked and unit-tested by promtool (Debian's `prometheus`
package; tools/farm-deps.sh installs it), shown to fail when a rule is broken, and read for every metric they use,
which must be a family a real producer or `pxdbg farm jobs` exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ops_helpers import PROM, exported_families, metric_names, missing_tool, promtool, rule_exprs

pytestmark = pytest.mark.timeout(120)


def run(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_rules_check():
    proc = run("check", "rules", "pxdbg-rules.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 14 rules found" in proc.stdout


def test_rules_unit_tests_fire_the_alerts():
    """pxdbg-rules.test.yml feeds series in which each alert must fire (stalled, down, refusals, pending
    growing, GPU memory, consumer waits) and must not fire earlier or for the healthy producer beside it."""
    proc = run("test", "rules", "pxdbg-rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    tests = yaml.safe_load((PROM / "pxdbg-rules.test.yml").read_text())["tests"]
    fired = {t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if t["exp_alerts"]}
    rules = yaml.safe_load((PROM / "pxdbg-rules.yml").read_text())["groups"]
    alerts = {r["alert"] for g in rules for r in g["rules"] if "alert" in r}
    assert fired == alerts, "every alert has a test in which it fires"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "for: 5m\n        labels:\n          severity: critical",
            "for: 30m\n        labels:\n          severity: critical",
        ),
        (
            "instance:pxdbg_producer_refused_auth:increase10m > 20",
            "instance:pxdbg_producer_refused_auth:increase10m > 80",
        ),
        ('up{job=~".*pxdbg.*"} == 0', 'up{job=~".*pxdbg.*"} == 2'),
    ],
)
def test_a_broken_rule_fails_its_unit_test(tmp_path, old, new):
    rules = (PROM / "pxdbg-rules.yml").read_text()
    assert old in rules
    (tmp_path / "pxdbg-rules.yml").write_text(rules.replace(old, new))
    shutil.copy(PROM / "pxdbg-rules.test.yml", tmp_path)
    proc = run("test", "rules", "pxdbg-rules.test.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_rules_read_only_exported_metrics(tmp_path, python_env):
    exported = exported_families(tmp_path, python_env)
    recorded, exprs = rule_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    assert {"pxdbg_producer_frames_sent_total", "pxdbg_consumer_job_wait_p99_seconds", "up"} <= used
    assert used - exported - recorded == set()


@pytest.mark.timeout(180)
def test_a_real_prometheus_fires_producer_down(tmp_path, python_env):
    """A real Prometheus (loopback only, 1 s scrapes, the shipped rules with their `for:` durations cut to 0 s
    and nothing else changed) scrapes a real producer, records its rates, and fires PxdbgProducerDown once the
    producer is stopped."""
    import json
    import urllib.request

    from ops_helpers import free_port, producer_process

    from pipeline_helpers import wait_until

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        promtool()  # the same package: skip or fail with its reason
        missing_tool("prometheus not installed (apt-get install prometheus, or tools/farm-deps.sh as root)")
    rules = re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", (PROM / "pxdbg-rules.yml").read_text(), flags=re.M)
    (tmp_path / "rules.yml").write_text(rules)
    web = free_port()

    def api(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/{path}", timeout=5) as resp:
            return json.loads(resp.read())["data"]

    def firing() -> list[dict]:
        try:
            return [a for a in api("alerts")["alerts"] if a["state"] == "firing"]
        except OSError:
            return []

    with producer_process(tmp_path / "producer.log", python_env) as (_, metrics_port, producer):
        target = f"127.0.0.1:{metrics_port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [{"job_name": "pxdbg-producer", "static_configs": [{"targets": [target]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        with open(tmp_path / "prometheus.log", "wb") as log:
            server = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:

            def up() -> list:
                try:
                    return api("query?query=up")["result"]
                except OSError:
                    return []

            assert wait_until(lambda: any(r["value"][1] == "1" for r in up()), 60), (
                tmp_path / "prometheus.log"
            ).read_text()
            assert firing() == []
            producer.terminate()
            producer.wait(timeout=30)
            assert wait_until(lambda: firing(), 60), (tmp_path / "prometheus.log").read_text()
            (alert,) = firing()
            assert alert["labels"]["alertname"] == "PxdbgProducerDown" and alert["labels"]["instance"] == target
            assert alert["annotations"]["summary"] == f"pxdbg producer {target} is not scraped"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
