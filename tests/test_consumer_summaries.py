"""`pxdbg farm jobs`: the per-job JSON summaries of real `pxdbg run --json` jobs summed into totals and a
Prometheus text file, with hostile files (a FIFO, a link out of the tree, NaN, deep nesting, huge) beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from ops_helpers import PXDBG, producer_process
from prometheus_client.parser import text_string_to_metric_families

from pxdbg.consumer import summaries

pytestmark = pytest.mark.timeout(180)


def run_job(endpoint: str, seed: int, out, env) -> dict:
    proc = subprocess.run(
        [*PXDBG, "run", "--connect", endpoint, "--events", "20", "--seed", str(seed), "--json", "-q"],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proc.stdout)
    return json.loads(proc.stdout)


def families(text: str) -> dict[str, dict]:
    return {
        f.name: {(s.name, s.labels.get("le")): s.value for s in f.samples} for f in text_string_to_metric_families(text)
    }


def test_real_job_summaries_and_hostile_files(tmp_path, python_env):
    campaign = tmp_path / "campaign"
    with producer_process(tmp_path / "producer.log", python_env) as (endpoint, _, _proc):
        jobs = [
            run_job(endpoint, seed, campaign / f"task-{seed:05d}" / "part-000000000.json", python_env)
            for seed in (1, 2)
        ]
    bad = campaign / "task-99999"
    bad.mkdir()
    os.mkfifo(bad / "fifo.json")  # a plain open() would block forever
    (tmp_path / "outside.json").write_text(json.dumps(jobs[0]))
    (bad / "link.json").symlink_to(tmp_path / "outside.json")  # a link: not followed, not counted
    (bad / "nan.json").write_text(json.dumps({**jobs[0], "wait_ms_p99": float("nan")}))
    (bad / "names.json").write_text(json.dumps({**jobs[0], "counters": {"\x1b[31mred": 1}}))
    (bad / "deep.json").write_text("[" * 50_000)
    (bad / "huge.json").write_text(" " * (summaries.MAX_SUMMARY_BYTES + 1))
    (bad / "list.json").write_text("[1, 2]")

    prom = tmp_path / "pxdbg-consumers.prom"
    proc = subprocess.run(
        [*PXDBG, "farm", "jobs", str(campaign), "--prom", str(prom)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr and "\x1b" not in out
    assert out.startswith("jobs            2 summaries read in ") and "(6 files skipped)" in out
    for why in ("not a regular file", "wait_ms_p99 is not a non-negative number", "counters must map", "not JSON"):
        assert why in out, why
    assert f"larger than {summaries.MAX_SUMMARY_BYTES} bytes" in out and "not a JSON object" in out

    fams = families(prom.read_text())
    assert fams["pxdbg_consumer_jobs"][("pxdbg_consumer_jobs_total", None)] == 2
    assert fams["pxdbg_consumer_events"][("pxdbg_consumer_events_total", None)] == 40
    assert fams["pxdbg_consumer_summaries_skipped"][("pxdbg_consumer_summaries_skipped_total", None)] == 6
    received = sum(j["counters"].get("frames_received", 0) for j in jobs)
    assert fams["pxdbg_consumer_frames_received"][("pxdbg_consumer_frames_received_total", None)] == received >= 40
    for name in summaries.COUNTER_HELP:  # every declared family, at zero where no job counted it
        assert f"pxdbg_consumer_{name}" in fams, name
    p99 = fams["pxdbg_consumer_job_wait_p99_seconds"]
    assert p99[("pxdbg_consumer_job_wait_p99_seconds_count", None)] == 2
    assert p99[("pxdbg_consumer_job_wait_p99_seconds_sum", None)] == pytest.approx(
        sum(j["wait_ms_p99"] for j in jobs) / 1e3
    )
    if shutil.which("promtool"):  # Prometheus's own linter, where installed (tests/test_prometheus_rules.py needs it)
        check = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(), capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_no_summary_is_exit_1(tmp_path):
    proc = subprocess.run([*PXDBG, "farm", "jobs", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout.startswith("jobs            0 summaries read")


def test_counter_names_stay_bounded():
    totals = summaries.CampaignTotals()
    base = {"events": 1, "wall_s": 1.0, "wait_ms_total": 1.0, "wait_ms_p50": 0.1, "wait_ms_p99": 1.0}
    for i in range(100):
        summary = {**base, "counters": {f"name_{i}": 1}}
        assert summaries.check_summary(summary) is None
        totals.add(summary)
    assert len(totals.counters) == summaries.MAX_COUNTER_NAMES
    assert totals.skipped["counter names past the bound"] == 100 - (
        summaries.MAX_COUNTER_NAMES - len(summaries.COUNTER_HELP)
    )
