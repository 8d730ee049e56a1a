"""The basf2 module under basf2's processing model: -p 0/1/4 (fork after initialize), C++ modules that hold the
GIL, event-keyed frames. Each job is a steering file (tests/standin_job.py) run as its own process on the basf2
stand-in (tests/standin, written from basf2's source: pEventProcessor.cc, EventInfoSetterModule.cc, ...)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_helpers import producers
from pxdbg import models
from pxdbg.shared.geometry import VXD_IDS
from pxdbg.shared.seeding import event_index, event_stream_seed

pytestmark = pytest.mark.timeout(600)
TESTS = Path(__file__).resolve().parent
STANDIN = TESTS / "standin"
SEED = 2026
#: experiment 0, run 1 with 4 events, run 2 with 3 (a run change: one misprediction)
KEYS = [(0, 1, e) for e in range(1, 5)] + [(0, 2, e) for e in range(1, 4)]
LOST = re.compile(r"lost|re-issu|silent for|quarantin", re.IGNORECASE)


@pytest.fixture(scope="module")
def bgfile(tmp_path_factory):
    """An overlay file as BGOverlayInput reads it, written by real ROOT in a process of its own."""
    path = tmp_path_factory.mktemp("bg") / "overlay.root"
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import belle2_root; "
        "belle2_root.write_background_file(sys.argv[2], np.array([[8480, 1, 100, 200]], np.uint16), events=4)"
    )
    subprocess.run([sys.executable, "-c", code, str(STANDIN), str(path)], check=True, timeout=180, capture_output=True)
    return path


def expected(keys, seed: int = SEED, model=None) -> list[np.ndarray]:
    """What `pxdbg generate --seed S --exp E --run R --event N` gives: frames of the event-keyed stream."""
    model = model or models.load("parametric")
    frames = model.frames(event_stream_seed(seed), [event_index(*k) for k in keys])
    return [np.stack([VXD_IDS[f.sensor], f.u, f.v, f.charge], axis=1).astype(np.uint16) for f in frames]


def leftovers(tmp: Path) -> list[str]:
    """Processes whose command line names the job's private temporary directory (prefetch process, producers)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp) in cmd:
            found.append(f"{pid}: {cmd[:200]}")
    return found


def run_job(tmp_path: Path, bgfile: Path, *args: str, timeout: float = 400) -> dict:
    """Run one job; check it ended cleanly and left no process behind; return its events and log."""
    job_tmp = tmp_path / "tmp"
    job_tmp.mkdir(exist_ok=True)
    out, log = tmp_path / "events.npz", tmp_path / "basf2.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
        "TMPDIR": str(job_tmp),  # the prefetch process's and the producers' directories go here
    }
    env.pop("BASF2_STANDIN_NPROCESSES", None)
    cmd = [sys.executable, str(TESTS / "standin_job.py"), str(out), str(log), "--bgfile", str(bgfile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, (proc.stderr[-4000:], text[-4000:])
    deadline = time.monotonic() + 15
    while leftovers(job_tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(job_tmp), leftovers(job_tmp)
    assert not list(job_tmp.iterdir()), "a private directory was left behind"
    with np.load(out) as f:
        keys = [tuple(k) for k in f["keys"].tolist()]
        digits = [f[f"digits{i}"] for i in range(len(keys))]
        roles = json.loads(str(f["roles"]))
    return {"keys": keys, "digits": digits, "roles": roles, "log": text, "stderr": proc.stderr}


def assert_event_keyed(job: dict, keys=KEYS, **kw) -> None:
    assert job["keys"] == keys
    for key, got, want in zip(keys, job["digits"], expected(keys, **kw)):
        np.testing.assert_array_equal(got, want, err_msg=f"event {key}")
    errors = [line for line in job["log"].splitlines() if "[ERROR]" in line or "[FATAL]" in line]
    assert not errors, errors


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    with producers(tmp_path_factory.mktemp("farm")) as p:
        yield p.start("farm")


@pytest.mark.parametrize("nproc", [0, 1, 4])
@pytest.mark.parametrize("source", ["in-process", "workers", "farm"])
def test_every_event_gets_its_own_background_whatever_the_process_count(tmp_path, bgfile, farm, source, nproc):
    """-p 0, 1, 4 with local workers, a farm endpoint and in-process generation: each event (exp, run, evt) gets
    the frames `pxdbg generate --exp --run --event` gives, so every run equals the -p 0 run; the module runs in
    basf2's input process under -p N (it is not parallel-processing certified) and nothing is left running."""
    job = run_job(tmp_path, bgfile, "--source", f"farm:{farm}" if source == "farm" else source, "--nproc", str(nproc))
    assert_event_keyed(job)
    assert all(r == (["init"] if nproc == 0 else ["input"]) for r in job["roles"]), job["roles"]
    if source != "in-process":
        summary = [line for line in job["log"].splitlines() if "events in process" in line]
        assert len(summary) == 1 and "1 mispredicted event(s)" in summary[0], summary  # the new run, once


def test_a_job_that_skips_events_gets_the_same_backgrounds(tmp_path, bgfile):
    """skipNEvents=3 (across the run boundary later): the events it processes have the backgrounds a full job
    gives them; a production split by skipNEvents with one seed stays disjoint and consistent."""
    job = run_job(tmp_path, bgfile, "--source", "workers", "--nproc", "2", "--skip", "3")
    assert_event_keyed(job, keys=KEYS[3:])


def test_generate_regenerates_one_event(tmp_path):
    out = tmp_path / "one.npz"
    subprocess.run(
        [sys.executable, "-m", "pxdbg", "generate", "--model", "parametric", "--seed", str(SEED), "--exp", "0",
         "--run", "2", "--event", "2", "--events", "2", "--out", str(out), "-q"],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    from pxdbg.shared.digitsfile import DigitsFile

    f = DigitsFile(out)
    assert f.n_events == 2 and f.meta["event_keyed"] == {"seed": SEED, "experiment": 0, "run": 2, "event": 2}
    for i, want in enumerate(expected([(0, 2, 2), (0, 2, 3)])):
        frame = f.frame(i)
        np.testing.assert_array_equal(np.stack([VXD_IDS[frame.sensor], frame.u, frame.v, frame.charge], 1), want)


def _waits(log: str) -> tuple[float, float]:
    (line,) = [line for line in log.splitlines() if "events in process" in line]
    p50, p99 = re.search(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms", line).groups()
    return float(p50), float(p99)


# real time (seconds of GIL held per event), and a loaded machine can delay a heartbeat past its verdict
@pytest.mark.slow
@pytest.mark.parametrize(("gil_s", "nproc"), [(6, 0), (6, 2), (40, 0)], ids=["6s-p0", "6s-p2", "40s-p0"])
def test_cpp_modules_holding_the_gil_cost_no_loss(tmp_path, bgfile, farm, gil_s, nproc):
    """FullSim's stand-in holds the GIL for ``gil_s`` seconds per event in the process that runs it (the same as
    the module's with -p 0): no producer is judged lost, no frame re-issued, the frames are right, and the
    module's wait for a warm frame stays far below a millisecond's order."""
    events = "3,1" if gil_s < 30 else "2,1"
    keys = [*[k for k in KEYS if k[1] == 1][: int(events[0])], (0, 2, 1)]
    job = run_job(tmp_path, bgfile, "--source", f"farm:{farm}", "--nproc", str(nproc), "--gil", str(gil_s),
                  "--events", events, timeout=600)  # fmt: skip
    assert_event_keyed(job, keys=keys)
    noise = [line for line in job["log"].splitlines() if LOST.search(line)]
    assert not noise, noise
    p50, p99 = _waits(job["log"])
    print(f"\nGIL held {gil_s} s per event, -p {nproc}: the module's wait p50 {p50:.2f} ms, p99 {p99:.2f} ms")


@pytest.mark.slow
def test_in_process_gan_after_the_fork_with_two_threads(tmp_path, bgfile):
    """In-process GAN generation in basf2's forked input process with nintra=2 (it hung when the parent had
    started torch's thread pool before the fork): the frames equal in-process generation here."""
    import torch

    from pxdbg.models import resnet

    ckpt = tmp_path / "resnet.pt"
    torch.manual_seed(0)
    torch.save(resnet.Model().state_dict(), ckpt)
    job = run_job(tmp_path, bgfile, "--source", "in-process", "--nproc", "2", "--model", "resnet",
                  "--checkpoint", str(ckpt), "--nintra", "2", "--events", "1,1")  # fmt: skip
    keys = [(0, 1, 1), (0, 2, 1)]
    assert_event_keyed(job, keys=keys, model=models.load("resnet", str(ckpt)))
