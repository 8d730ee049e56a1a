"""The resumable-output policy (:mod:`pxdbg.outputs`) on real digits files: refuse to overwrite, resume with the
stream an interrupted file was written with, keep a partial file when a job stops or fails, drop an empty one."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from pxdbg import models
from pxdbg.outputs import RunOutput, interruptible, parse_seed, refuse_overwrite, stream_start
from pxdbg.shared.digitsfile import DigitsFile, interrupted_meta
from pxdbg.shared.errors import ConfigError

META = {"model": "parametric", "checkpoint_sha256": "0" * 64, "precision": "fp32", "seed": 5, "first_frame": 3}


@pytest.fixture(scope="module")
def frames():
    return models.load("parametric").frames(5, range(3, 9))


def _write(path, frames, n: int, **kw) -> RunOutput:
    out = RunOutput(str(path), len(frames), dict(META), **kw)
    for frame in frames[:n]:
        out.append(frame)
    return out


def test_refuse_overwrite(tmp_path):
    path = tmp_path / "a.npz"
    refuse_overwrite(str(path), False)  # nothing there
    path.write_bytes(b"user data")
    with pytest.raises(ConfigError, match="exists; name a new file, or pass --force to replace it$"):
        refuse_overwrite(str(path), False)
    with pytest.raises(ConfigError, match="or continue a partial one with --resume"):
        refuse_overwrite(str(path), False, resumable=True)
    refuse_overwrite(str(path), True)
    assert path.read_bytes() == b"user data"  # the policy decides; it deletes nothing


def test_a_complete_output_and_what_is_refused(tmp_path, frames):
    path = tmp_path / "run.npz"
    with _write(path, frames, len(frames)) as out:
        pass
    assert out.stopped == 0 and out.done == len(frames)
    f = DigitsFile(path)
    assert f.n_events == len(frames) and f.meta.get("complete", True)
    assert np.array_equal(f.frame(2).to_dense(), frames[2].to_dense())
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="exists.*--force.*--resume"):
        RunOutput(str(path), 10, dict(META))
    with pytest.raises(ConfigError, match=r"must name a \.npz or \.root file"):
        RunOutput(str(tmp_path / "run.txt"), 10, dict(META))
    assert path.read_bytes() == before


def test_no_file_counts_events():
    with RunOutput(None, 3, dict(META)) as out:
        out.append(object())
    assert out.done == 1 and out.writer is None and out.stopped == 0


def test_interrupt_keeps_a_partial_file_that_resumes(tmp_path, frames):
    path, told = tmp_path / "run.npz", []
    with _write(path, frames, 4, notify=told.append) as out:
        raise KeyboardInterrupt
    assert out.stopped == 128 + signal.SIGINT
    assert told == [
        f"pxdbg: stopped by SIGINT after 4 of {len(frames)} events; {path} holds them (marked partial); "
        "continue with the same command and --resume"
    ]
    assert DigitsFile(path).n_events == 4 and interrupted_meta(path)["seed"] == 5

    # the stream the file was written with, unless the caller gives another
    assert stream_start(None, None, out=str(path), resume=True) == (5, False, 3)
    assert stream_start("9", 7, out=str(path), resume=True) == (9, False, 7)
    with pytest.raises(ConfigError, match="exists"):
        RunOutput(str(path), len(frames), dict(META))  # a partial file is data too
    with RunOutput(str(path), len(frames), dict(META), resume=True) as out:
        assert out.done == 4
        for frame in frames[4:]:
            out.append(frame)
    f = DigitsFile(path)
    assert f.n_events == len(frames) and f.meta.get("complete", True)
    assert all(np.array_equal(f.frame(i).to_dense(), fr.to_dense()) for i, fr in enumerate(frames))


def test_more_events_than_asked_is_refused(tmp_path, frames):
    path = tmp_path / "run.npz"
    with _write(path, frames, 4):
        raise KeyboardInterrupt
    with pytest.raises(ConfigError, match="already holds 4 events, more than --events 2"):
        RunOutput(str(path), 2, dict(META), resume=True)
    assert DigitsFile(path).n_events == 4 and interrupted_meta(path) is not None  # still there, still resumable


def test_sigterm_is_an_interruption(tmp_path, frames):
    path, told = tmp_path / "run.npz", []
    with interruptible(), _write(path, frames, 2, notify=told.append) as out:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        raise AssertionError("SIGTERM did not interrupt")
    assert out.stopped == 128 + signal.SIGTERM and told[0].startswith("pxdbg: stopped by SIGTERM after 2 of 6")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert DigitsFile(path).n_events == 2


def test_a_failure_keeps_the_events_and_the_error_goes_on(tmp_path, frames):
    path, told = tmp_path / "run.npz", []
    with pytest.raises(RuntimeError, match="model broke"), _write(path, frames, 3, notify=told.append):
        raise RuntimeError("model broke")
    assert told and told[0].startswith("pxdbg: the run failed after 3 of 6 events;")
    assert DigitsFile(path).n_events == 3 and interrupted_meta(path) is not None


def test_an_empty_output_is_dropped(tmp_path, frames):
    path, told = tmp_path / "run.npz", []
    with _write(path, frames, 0, notify=told.append) as out:
        raise KeyboardInterrupt
    assert out.stopped == 128 + signal.SIGINT and told == ["pxdbg: stopped by SIGINT after 0 of 6 events; "]
    assert not path.exists() and not any(tmp_path.iterdir())


def test_seeds_and_first_frames():
    seed, drawn = parse_seed(None)
    assert drawn and isinstance(seed, int)
    assert parse_seed("0x10") == (16, False)
    with pytest.raises(ConfigError, match="bad --seed 'ten'"):
        parse_seed("ten")
    assert stream_start("4", None) == (4, False, 0)
    assert stream_start("4", None, by_event=True) == (4, False, 0)
    with pytest.raises(ConfigError, match="--first-frame must be non-negative, got -1"):
        stream_start("4", -1)
