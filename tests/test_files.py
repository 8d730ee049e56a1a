"""Outputs and checkpoints under the faults a batch system and a user bring: pre-emption, kills, resubmission,
a full disk, damaged or poisoned checkpoints, a damaged payload store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from files_helpers import PXDBG, frames_equal, parametric_frames, pxdbg, spool_of, write_digits_file
from pxdbg.models import CheckpointError, load, load_spec, resnet
from pxdbg.shared import payloads
from pxdbg.shared.digitsfile import DigitsFile, DigitsFileError, DigitsWriter
from pxdbg.shared.spec import ProducerSpec

pytestmark = pytest.mark.timeout(240)


def start_and_wait_for_events(args, out: Path, at_least: int) -> subprocess.Popen:
    """Start a pxdbg command writing ``out`` and return once its spool holds ``at_least`` events."""
    proc = subprocess.Popen([*PXDBG, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    counts = spool_of(out) / "counts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if counts.exists() and counts.stat().st_size >= 8 * at_least:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no events were written within 120 s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The fault-free output the interrupted runs must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    pxdbg("generate", "--events", "300", "--seed", "41", "--first-frame", "3", "--out", str(out), "-q")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_generate_keeps_a_valid_partial_file_and_resume_completes_it(tmp_path, reference, sig):
    out = tmp_path / "out.npz"
    args = ["generate", "--events", "300", "--seed", "41", "--first-frame", "3", "--out", str(out), "--batch", "1"]
    proc = start_and_wait_for_events(args, out, 20)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "stopped by" in line]
    assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "--resume" in lines[0]
    partial = DigitsFile(out)
    assert 20 <= partial.n_events < 300 and partial.meta["complete"] is False
    assert not spool_of(out).exists()
    assert all(x == y for x, y in zip(partial, DigitsFile(reference))), "the partial file holds the first events"

    # the same command with --resume (seed and first frame may be left out: they come from the file)
    resumed = pxdbg("generate", "--events", "300", "--out", str(out), "--resume", "-q")
    assert "resumed" in resumed.stdout
    done = DigitsFile(out)
    assert done.meta["complete"] is True and done.meta["seed"] == 41 and done.meta["first_frame"] == 3
    assert frames_equal(done, DigitsFile(reference))


@pytest.mark.slow
def test_a_killed_run_leaves_a_spool_that_resume_recovers(tmp_path, reference):
    out = tmp_path / "run.npz"
    args = [
        "run",
        "--workers",
        "1",
        "--events",
        "300",
        "--seed",
        "41",
        "--first-frame",
        "3",
        "--prefetch",
        "4",
        "--out",
        str(out),
        "-q",
    ]
    proc = start_and_wait_for_events(args, out, 30)
    proc.kill()  # no handler runs: the spool is all there is
    proc.communicate(timeout=30)
    assert spool_of(out).is_dir() and not out.exists()

    again = pxdbg(*args, check=False)
    assert again.returncode == 2 and "interrupted run" in again.stderr and "--resume" in again.stderr
    assert "Traceback" not in again.stderr

    wrong = pxdbg(
        "run",
        "--workers",
        "1",
        "--events",
        "300",
        "--seed",
        "42",
        "--first-frame",
        "3",
        "--out",
        str(out),
        "--resume",
        check=False,
    )
    assert wrong.returncode == 2 and "another stream" in wrong.stderr

    pxdbg("run", "--workers", "1", "--events", "300", "--out", str(out), "--resume", "-q")
    done = DigitsFile(out)
    assert done.meta["complete"] is True and not spool_of(out).exists()
    assert frames_equal(done, DigitsFile(reference))


@pytest.mark.slow
def test_a_stopped_run_keeps_its_events_and_its_workers_are_gone(tmp_path, reference):
    out = tmp_path / "run.npz"
    args = ["run", "--workers", "2", "--events", "300", "--seed", "41", "--first-frame", "3", "--out", str(out)]
    proc = start_and_wait_for_events(args, out, 10)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    partial = DigitsFile(out)
    assert partial.meta["complete"] is False and partial.n_events >= 10
    pxdbg("run", "--workers", "2", "--events", "300", "--out", str(out), "--resume", "-q")
    assert frames_equal(DigitsFile(out), DigitsFile(reference))


def test_writer_recovery_takes_only_whole_events(tmp_path, frame_factory):
    rng = np.random.default_rng(5)
    frames = [frame_factory(rng, 0.001)[0] for _ in range(4)]
    out = tmp_path / "w.npz"
    meta = {"model": "m", "checkpoint_sha256": "0" * 64, "precision": "fp32", "seed": 1, "first_frame": 0}
    np.savez(
        tmp_path / "frames.npz",
        **{f"{k}{i}": getattr(f, k) for i, f in enumerate(frames[:3]) for k in ("sensor", "u", "v", "charge")},
    )
    # a process that writes three events and dies without any clean-up, as under SIGKILL
    code = (
        "import json, os, sys, numpy as np\n"
        "from pxdbg.shared.digitsfile import DigitsWriter\n"
        "from pxdbg.shared.frame import SparseFrame\n"
        "d = np.load(sys.argv[2])\n"
        "w = DigitsWriter(sys.argv[1], json.loads(sys.argv[3]))\n"
        "for i in range(3):\n"
        "    w.append(SparseFrame(*(d[f'{k}{i}'] for k in ('sensor', 'u', 'v', 'charge'))))\n"
        "os._exit(0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp_path / "frames.npz"), json.dumps(meta)], timeout=60, check=True
    )
    with open(spool_of(out) / "v", "ab") as torn:  # and a torn fourth event: bytes of one column only
        torn.write(b"\x01\x02\x03")
    with pytest.raises(DigitsFileError, match="interrupted run"):
        DigitsWriter(out, meta)
    with pytest.raises(DigitsFileError, match="another stream"):
        DigitsWriter(out, {**meta, "seed": 2}, resume=True)
    r = DigitsWriter(out, meta, resume=True)
    assert r.n_events == 3
    r.append(frames[3])
    r.close()
    back = DigitsFile(out)
    assert back.n_events == 4 and all(x == y for x, y in zip(back, frames))


def _unmount(path: Path) -> None:
    """Unmount a test's tmpfs; lazily, so a file a failed test left open cannot keep it mounted."""
    subprocess.run(["umount", "-l", str(path)], timeout=30, check=False)


def _tmpfs(path: Path, size: str):
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {proc.stderr.strip()}")
        pytest.skip(f"a small tmpfs is needed for the disk-full test (root): {proc.stderr.strip()}")


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_loses_nothing(tmp_path, reference):
    disk = tmp_path / "small"
    _tmpfs(disk, "2m")
    try:
        out = disk / "full.npz"
        proc = pxdbg(
            "generate", "--events", "300", "--seed", "41", "--first-frame", "3", "--out", str(out), "-q", check=False
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        message = [line for line in proc.stderr.splitlines() if line.startswith("pxdbg generate:")]
        assert len(message) == 1 and str(out) in message[0] and "No space left" in message[0]
        assert not out.exists() or DigitsFile(out).meta["complete"] is False
    finally:
        _unmount(disk)


def test_checkpoints_with_nan_values_are_refused(tmp_path):
    par = load("parametric")
    state = {k: v.clone() for k, v in torch.load(par.checkpoint_path, weights_only=True).items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[0] = float("nan")
    bad = tmp_path / "nan-parametric.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=rf"{bad}.*NaN or infinite.*{name}"):
        load("parametric", bad)

    net = resnet.Model()
    state = net.state_dict()
    state["conv.weight"][0, 0, 0, 0] = float("inf")
    bad = tmp_path / "inf-resnet.pt"
    torch.save(state, bad)
    proc = pxdbg(
        "generate",
        "--model",
        "resnet",
        "--checkpoint",
        str(bad),
        "--events",
        "1",
        "--out",
        str(tmp_path / "x.npz"),
        check=False,
    )
    assert proc.returncode == 2 and "conv.weight" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_checkpoint_that_generates_nothing_is_refused(tmp_path):
    net = resnet.Model()
    state = net.state_dict()
    state["conv.weight"].zero_()
    state["conv.bias"].fill_(-50.0)  # tanh(-50) = -1: every pixel below threshold
    ckpt = tmp_path / "empty-resnet.pt"
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="generates empty frames"):
        load_spec(ProducerSpec(model="resnet", checkpoint=str(ckpt)))


def test_a_text_file_or_a_damaged_store_entry_is_one_clear_line(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    proc = pxdbg("generate", "--checkpoint", str(text), "--events", "1", "--out", str(tmp_path / "x.npz"), check=False)
    assert proc.returncode == 2 and "not a PyTorch file" in proc.stderr and "Traceback" not in proc.stderr

    store = tmp_path / "store"
    store.mkdir()
    (store / "index.json").write_text(
        json.dumps(
            {
                "format": "pxdbg-payloads-1",
                "globaltags": {"PXDBackgroundGenerator": {"PXDBackgroundGenerator_parametric": {"sha256": "0" * 64}}},
            }
        )
    )
    env = {**os.environ, payloads.ENV_VAR: str(store)}
    proc = pxdbg("generate", "--events", "1", "--out", str(tmp_path / "y.npz"), env=env, check=False)
    assert proc.returncode == 2 and "malformed entry" in proc.stderr and "Traceback" not in proc.stderr


def test_an_assembly_cut_short_keeps_every_column_and_resume_puts_them_back(tmp_path, monkeypatch):
    """The columns move into the .npz one at a time and leave the spool; a failure half-way (a full disk) must
    not lose the ones already moved."""
    import errno

    from pxdbg.shared import digitswriter

    frames = parametric_frames(3)
    meta = {"model": "parametric", "checkpoint_sha256": "0" * 64, "precision": "fp32", "seed": 77, "first_frame": 0}
    out = tmp_path / "cut.npz"
    w = DigitsWriter(out, meta)
    for f in frames:
        w.append(f)
    real, calls = digitswriter._write_column, []

    def full_at_the_third_column(zf, name, dtype, n, spool, compress):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(zf, name, dtype, n, spool, compress)

    monkeypatch.setattr(digitswriter, "_write_column", full_at_the_third_column)
    with pytest.raises(DigitsFileError, match=r"No space left on device while writing .*cut\.npz.*--resume"):
        w.close()
    monkeypatch.setattr(digitswriter, "_write_column", real)
    spool = spool_of(out)
    moved = json.loads((spool / "moved.json").read_text())["columns"]
    assert sorted(moved) == sorted(calls[:2]) and not any((spool / c).exists() for c in moved)
    assert not out.exists() and (tmp_path / "cut.npz.part").exists()

    r = DigitsWriter(out, meta, resume=True)
    assert r.n_events == 3 and not (tmp_path / "cut.npz.part").exists()
    r.close()
    back = DigitsFile(out)
    assert back.n_events == 3 and all(a == b for a, b in zip(back, frames)) and not spool.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("compress", "room"), [(False, 1.6), (True, 1.8)])
def test_writing_the_output_needs_one_column_more_not_twice_the_disk(tmp_path, compress, room):
    """Uncompressed, the spool and the output's largest column fit, twice the output not. Compressed, the spool
    holds the raw columns and their compressed blocks (1.35x raw) until the output is assembled."""
    frames = parametric_frames(20)
    size = sum(f.n_digits for f in frames) * 5  # sensor, u, charge 1 byte, v 2 bytes per digit
    disk = tmp_path / "small"
    _tmpfs(disk, f"{int(room * size / 1024)}k")
    try:
        out = disk / "tight.npz"
        with DigitsWriter(out, {"seed": 77}, compress=compress) as w:
            for f in frames:
                w.append(f)
        back = DigitsFile(out)
        assert back.n_events == 20 and all(a == b for a, b in zip(back, frames))
        print(f"output {out.stat().st_size / 1e6:.2f} MB written on a {room * size / 1e6:.2f} MB disk")
    finally:
        _unmount(disk)


def test_join_assembles_the_parts_of_one_stream(tmp_path):
    ref, parts = tmp_path / "ref.npz", []
    pxdbg("generate", "--events", "24", "--seed", "5", "--first-frame", "2", "--out", str(ref), "-q")
    for first in (2, 10, 18):  # the parts of a chunked consumer job
        part = tmp_path / f"part-{first}.npz"
        pxdbg("generate", "--events", "8", "--seed", "5", "--first-frame", str(first), "--out", str(part), "-q")
        parts.append(part)
    other = tmp_path / "other.npz"
    pxdbg("generate", "--events", "8", "--seed", "6", "--first-frame", "26", "--out", str(other), "-q")

    gap = pxdbg("join", str(tmp_path / "x.npz"), str(parts[0]), str(parts[2]), check=False)
    assert gap.returncode == 2 and "frame 10 comes next: a gap" in gap.stderr and "Traceback" not in gap.stderr
    mixed = pxdbg("join", str(tmp_path / "x.npz"), *map(str, parts), str(other), check=False)
    assert mixed.returncode == 2 and "not of the stream" in mixed.stderr
    assert not (tmp_path / "x.npz").exists() and all(p.exists() for p in parts), "a refused join touches nothing"

    out = tmp_path / "joined.npz"
    done = pxdbg("join", str(out), str(parts[2]), str(parts[0]), str(parts[1]), "--remove-parts")
    assert "wrote 24 events" in done.stdout
    joined = DigitsFile(out)
    assert joined.meta["first_frame"] == 2 and joined.meta["complete"] is True
    assert frames_equal(joined, DigitsFile(ref))
    assert not any(p.exists() for p in parts), "--remove-parts deletes each part once it is in the output"


def test_outputs_are_not_overwritten_without_force(tmp_path):
    out = tmp_path / "o.npz"
    pxdbg("generate", "--events", "2", "--seed", "3", "--out", str(out), "-q")
    before = out.read_bytes()
    for args in (
        ["generate", "--events", "2", "--seed", "4", "--out", str(out)],
        ["run", "--connect", "tcp://127.0.0.1:1", "--events", "2", "--out", str(out)],
        ["join", str(out), str(write_digits_file(tmp_path / "p.npz"))],
    ):
        proc = pxdbg(*args, check=False)
        assert proc.returncode == 2 and "exists" in proc.stderr and "--force" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and out.read_bytes() == before
    # --resume of the finished file, seed not given: the cause is that it is complete, not another seed
    proc = pxdbg("generate", "--events", "2", "--out", str(out), "--resume", check=False)
    assert proc.returncode == 2 and "is complete" in proc.stderr and "another stream" not in proc.stderr
    pxdbg("generate", "--events", "2", "--seed", "4", "--out", str(out), "--force", "-q")
    assert DigitsFile(out).meta["seed"] == 4


CONSUMERS_SBATCH = Path(__file__).resolve().parent.parent / "examples" / "slurm" / "consumers.sbatch"


def _consumer_task(tmp_path: Path, endpoint: str, env: dict) -> subprocess.CompletedProcess:
    """examples/slurm/consumers.sbatch run as Slurm would run array task 7 (6 events in parts of 3)."""
    task_env = {
        **env,
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURMD_NODENAME": "node4",
        "PXDBG_ENDPOINTS": endpoint,
        "PXDBG_OUT": str(tmp_path / "out"),
        "PXDBG_EVENTS": "6",
        "PXDBG_CHUNK": "3",
        "PXDBG_SEED": "40",
        "PXDBG": f"{sys.executable} -m pxdbg",
        "PXDBG_RUN_ARGS": "-q",
    }
    return subprocess.run(
        ["bash", str(CONSUMERS_SBATCH)], capture_output=True, text=True, timeout=180, env=task_env, cwd=tmp_path
    )


@pytest.mark.parametrize("summary", ["printed", "lost"])
def test_a_consumer_task_killed_between_a_part_and_its_rename_recovers_on_resubmission(tmp_path, python_env, summary):
    """A kill after ``pxdbg run`` finished a part but before the script renamed it leaves a complete
    part.partial.npz: the resubmitted task renames it (``--resume`` of a complete file would fail), then goes on."""
    from ops_helpers import producer_process

    with producer_process(tmp_path / "producer.log", python_env, metrics=False) as (endpoint, _, _):
        first = _consumer_task(tmp_path, endpoint, python_env)
        assert first.returncode == 0, first.stderr
        task = tmp_path / "out" / "task-00007"
        parts = [task / "part-000000000", task / "part-000000003"]
        whole = [DigitsFile(p.with_suffix(".npz")) for p in parts]
        assert [f.n_events for f in whole] == [3, 3] and all(f.meta["seed"] == 47 for f in whole)
        summaries = [json.loads(p.with_suffix(".json").read_text()) for p in parts]

        # the state a kill leaves after the first part's `pxdbg run` ended, before either rename
        parts[0].with_suffix(".npz").rename(f"{parts[0]}.partial.npz")
        parts[0].with_suffix(".json").rename(f"{parts[0]}.json.tmp")
        if summary == "lost":  # killed after the output was closed but before pxdbg printed its summary
            Path(f"{parts[0]}.json.tmp").write_text("")
        parts[1].with_suffix(".npz").unlink()  # and the second part not begun
        parts[1].with_suffix(".json").unlink()

        again = _consumer_task(tmp_path, endpoint, python_env)
    assert again.returncode == 0, again.stderr
    assert "was complete when the task was killed; renaming it" in again.stdout and "Traceback" not in again.stderr
    assert sorted(p.name for p in task.iterdir()) == sorted(
        ["part-000000000.npz", "part-000000003.npz", "part-000000003.json"]
        + (["part-000000000.json"] if summary == "printed" else [])
    )
    for part, before in zip(parts, whole):
        assert frames_equal(DigitsFile(part.with_suffix(".npz")), before)
    if summary == "printed":
        assert json.loads(parts[0].with_suffix(".json").read_text()) == summaries[0]
