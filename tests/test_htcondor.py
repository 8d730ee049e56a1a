"""The HTCondor recipe (examples/htcondor/), checked without a pool.

The PyPI `htcondor` wheel holds the Python bindings and their libraries but no daemons (`pip show -f htcondor |
grep -c condor_master` prints 0; Debian has no htcondor package here), so no personal pool can run. Instead:
the submit files are parsed and their macros expanded by HTCondor's own submit language (`htcondor2.Submit`),
as `condor_submit NAME.sub var=value` would; the ClassAd expressions parse with `classad2`; the commands the
wrapper scripts run parse with the real `pxdbg` parser and use the files the submit files transfer; and the two
wrapper scripts run for real, in scratch directories laid out as HTCondor's file transfer leaves them: a CURVE
producer registers in a rendezvous directory, a consumer job pulls its stream from it and leaves the summary that
`pxdbg farm jobs` reads.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_helpers import wait_until
from pxdbg.cli import build_parser
from pxdbg.shared import discovery

htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor (in the test extra)")
classad2 = pytest.importorskip("classad2")

REPO = Path(__file__).resolve().parent.parent
HDIR = REPO / "examples" / "htcondor"
PXDBG = f"{shlex.quote(sys.executable)} -m pxdbg"
pytestmark = pytest.mark.timeout(180)


def submit(name: str, **given: str):
    """The submit file as condor_submit reads it with ``var=value`` arguments (they precede the file)."""
    head = "".join(f"{k} = {v}\n" for k, v in given.items())
    return htcondor2.Submit(head + (HDIR / name).read_text())


def environment(sub) -> dict[str, str]:
    """HTCondor's quoted environment syntax: "NAME=value NAME='value with spaces'"."""
    text = sub.expand("environment")
    assert text.startswith('"') and text.endswith('"')
    return dict(word.split("=", 1) for word in shlex.split(text[1:-1]))


def transferred(sub) -> set[str]:
    """Names the input files have in the job's scratch directory."""
    return {Path(p.strip()).name for p in sub.expand("transfer_input_files").split(",")}


def exec_line(script: str) -> str:
    """The `exec $pxdbg ...` command of a wrapper script, continuation lines joined."""
    text = (HDIR / script).read_text().replace("\\\n", " ")
    (line,) = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("exec $pxdbg ")]
    return line


def parse_exec(script: str, values: dict[str, str]):
    line = exec_line(script).split(" > ")[0]
    line = re.sub(r"\$\{(\w+):-[^}]*\}|\$(\w+)|\"\$(\w+)\"", lambda m: values[next(g for g in m.groups() if g)], line)
    words = shlex.split(line)
    assert words[:2] == ["exec", "pxdbg"]
    return build_parser().parse_args(words[2:])


def test_producers_submit_file():
    sub = submit("producers.sub", rendezvous="/shared/pxdbg/test", producers="3")
    assert sub["executable"] == "producer.sh" and sub.expand("arguments") == "/shared/pxdbg/test"
    assert sub["request_gpus"] == "1" and sub["kill_sig"] == "SIGTERM"
    assert str(classad2.ExprTree(sub["require_gpus"])).startswith("Capability >= 8")
    env = environment(sub)
    args = parse_exec(
        "producer.sh",
        {"pxdbg": "pxdbg", "host": "10.0.0.1", "port": "5555", "rendezvous": "/shared/pxdbg/test", **env},
    )
    assert args.command == "produce" and args.device == "cuda" and args.register == "/shared/pxdbg/test"
    assert args.bind == ["tcp://10.0.0.1:5555"]
    files = transferred(sub)
    assert {args.curve_server_secret, args.curve_allow_dir, args.checkpoint} <= files
    assert sub.getQArgs() == "$(producers:2)"


def test_consumers_submit_file():
    producers = parse_exec(
        "producer.sh",
        {"pxdbg": "pxdbg", "host": "h", "port": "1", "rendezvous": "r", **environment(submit("producers.sub"))},
    )
    sub = submit("consumers.sub", rendezvous="/shared/pxdbg/test", sha256="ab" * 32, events="500")
    assert "request_gpus" not in sub, "consumers need no GPU"
    assert sub.expand("arguments") == "0"  # $(Process) of the first job
    env = environment(sub)
    assert env["PXDBG_ENDPOINTS"] == "dir:/shared/pxdbg/test" and env["PXDBG_EVENTS"] == "500"
    args = parse_exec("consumer.sh", {"pxdbg": "pxdbg", "seed": "8", **env})
    assert args.command == "run" and args.events == 500 and args.seed == "8" and args.json
    assert discovery.parse(args.connect).dynamic
    assert (args.model, args.precision) == (producers.model, producers.precision), "the frames the producers make"
    assert {args.curve_client_secret, args.curve_server_public} <= transferred(sub)
    assert "producer.key_secret" not in transferred(sub), "the producers' secret never travels with a consumer"
    remaps = dict(r.split(" = ") for r in sub.expand("transfer_output_remaps").strip('"').split("; "))
    assert remaps == {"digits.npz": "out/digits-0.npz", "summary.json": "out/summary-0.json"}
    assert set(sub["transfer_output_files"].replace(" ", "").split(",")) == set(remaps)
    assert exec_line("consumer.sh").endswith("> summary.json") and args.out == "digits.npz"


def test_wrapper_scripts_are_valid_shell():
    for script in ("producer.sh", "consumer.sh"):
        assert os.access(HDIR / script, os.X_OK), script
        proc = subprocess.run(["sh", "-n", str(HDIR / script)], capture_output=True, text=True, timeout=10)
        assert proc.returncode == 0, proc.stderr


def test_the_wrappers_run_a_producer_and_a_consumer_job(tmp_path, python_env):
    """producer.sh and consumer.sh for real, each in a scratch directory holding what HTCondor transfers."""
    keys = tmp_path / "keys"
    for name in ("producer", "alice"):
        subprocess.run([sys.executable, "-m", "pxdbg", "keys", "new", name, "--dir", str(keys)], check=True, timeout=60)
    rendezvous, producer_dir, consumer_dir = tmp_path / "rdv", tmp_path / "slot1", tmp_path / "slot2"
    (producer_dir / "allow").mkdir(parents=True)
    consumer_dir.mkdir()
    shutil.copy(keys / "producer.key_secret", producer_dir)
    shutil.copy(keys / "alice.key", producer_dir / "allow")
    shutil.copy(keys / "alice.key_secret", consumer_dir)
    shutil.copy(keys / "producer.key", consumer_dir)
    env = {**python_env, "PXDBG": PXDBG, "PXDBG_BIND_HOST": "127.0.0.1", "PXDBG_PRODUCE_ARGS": ""}
    with open(tmp_path / "producer.out", "wb") as log:
        producer = subprocess.Popen(
            ["sh", str(HDIR / "producer.sh"), str(rendezvous)], cwd=producer_dir, env=env, stdout=log, stderr=log
        )
    try:
        source = discovery.parse(f"dir:{rendezvous}")
        assert wait_until(lambda: source.resolve() or producer.poll() is not None, 90)
        assert producer.poll() is None, (tmp_path / "producer.out").read_text()
        job_env = {**python_env, "PXDBG": PXDBG, "PXDBG_ENDPOINTS": f"dir:{rendezvous}", "PXDBG_EVENTS": "12"}
        job = subprocess.run(
            ["sh", str(HDIR / "consumer.sh"), "4"], cwd=consumer_dir, env=job_env, capture_output=True, timeout=120
        )
        assert job.returncode == 0, job.stderr.decode()
    finally:
        producer.terminate()
        producer.wait(timeout=30)
    assert producer.returncode == 0 and not list(rendezvous.iterdir()), "drained and unregistered on SIGTERM"
    summary = json.loads((consumer_dir / "summary.json").read_text())
    assert summary["events"] == 12 and summary["seed"] == 5  # PXDBG_SEED 1 + index 4
    assert (consumer_dir / "digits.npz").stat().st_size > 0
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(consumer_dir / "summary.json", out / "summary-4.json")  # transfer_output_remaps
    jobs = subprocess.run(
        [sys.executable, "-m", "pxdbg", "farm", "jobs", str(out), "--pattern", "summary-*.json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert jobs.returncode == 0 and jobs.stdout.startswith("jobs            1 summaries read"), jobs.stdout
