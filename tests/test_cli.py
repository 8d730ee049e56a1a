"""The pxdbg command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pxdbg.models import resnet
from pxdbg.shared.digitsfile import DigitsFile

pytestmark = pytest.mark.timeout(180)
PXDBG = [sys.executable, "-m", "pxdbg"]


def run(*args, check=True, **kw):
    proc = subprocess.run([*PXDBG, *args], capture_output=True, text=True, timeout=150, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"pxdbg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_generate_and_run_write_the_same_digits(tmp_path):
    gen = tmp_path / "gen.npz"
    piped = tmp_path / "run.npz"
    run("generate", "--events", "12", "--seed", "-77", "--first-frame", "5", "--out", str(gen), "-q")
    proc = run(
        "run",
        "--workers",
        "2",
        "--events",
        "12",
        "--seed",
        "-77",
        "--first-frame",
        "5",
        "--prefetch",
        "4",
        "--out",
        str(piped),
        "--json",
        "-q",
        "--work-ms",
        "2",
    )
    summary = json.loads(proc.stdout)
    assert summary["events"] == 12 and summary["max_in_flight"] <= 4
    assert summary["wire_bytes_per_digit"] < 4.0
    assert summary["counters"]["frames_received"] >= 12
    a, b = DigitsFile(gen), DigitsFile(piped)
    assert a.n_events == b.n_events == 12
    assert all(x == y for x, y in zip(a, b))
    assert a.meta["seed"] == b.meta["seed"] == -77 and a.meta["first_frame"] == 5
    assert a.meta["model"] == "parametric" and a.meta["checkpoint_sha256"] == b.meta["checkpoint_sha256"]


def test_run_prints_a_summary_and_a_random_seed_is_reported(tmp_path):
    proc = run("run", "--workers", "1", "--events", "5")
    assert "frames/s" in proc.stdout and "consumer wait" in proc.stdout and "bytes per digit" in proc.stdout
    assert "random: pass --seed to reproduce" in proc.stderr


def test_run_without_producers_fails_clearly(tmp_path):
    proc = run(
        "run",
        "--connect",
        f"ipc://{tmp_path}/none.sock",
        "--events",
        "3",
        "--connect-timeout",
        "1",
        "--out",
        str(tmp_path / "x.npz"),
        check=False,
    )
    assert proc.returncode == 1
    assert "no producer answered" in proc.stderr
    assert not (tmp_path / "x.npz").exists(), "no partial output file"


def test_models_and_payload_add(tmp_path):
    env_store = tmp_path / "store"
    import os

    env = {**os.environ, "PXDBG_PAYLOADS": str(env_store)}
    proc = run("models", env=env)
    assert "parametric  payload PXDBackgroundGenerator_parametric" in proc.stdout
    assert "resnet      no default payload" in proc.stdout
    ckpt = tmp_path / "r.pt"
    torch.save(resnet.Model().state_dict(), ckpt)
    bad = run("payload", "add", str(ckpt), "--model", "convnet", env=env, check=False)
    assert bad.returncode == 2 and "looks like a checkpoint of the model 'resnet'" in bad.stderr
    run("payload", "add", str(ckpt), "--model", "resnet", env=env)
    proc = run("models", env=env)
    assert f"resnet      payload PXDBackgroundGenerator_resnet [PXDBackgroundGenerator] -> {env_store}" in proc.stdout
    listing = run("payload", "list", env=env).stdout
    assert "PXDBackgroundGenerator_resnet" in listing and "PXDBackgroundGenerator_parametric" in listing


def test_bad_arguments_are_refused():
    proc = run("generate", "--model", "resnet", "--events", "1", "--out", "x.npz", check=False)
    assert proc.returncode == 2 and "no public weights for resnet" in proc.stderr
    proc = run("run", "--workers", "0", "--events", "1", check=False)
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    proc = run("generate", "--events", "1", "--seed", str(2**63), "--out", "x.npz", check=False)
    assert proc.returncode == 2 and "2**63" in proc.stderr
