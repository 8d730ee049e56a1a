"""The job's prefetch process (pxdbg.consumer.prefetch): real subprocesses, ipc sockets and local producers.

What it is for: frames keep arriving while the process that uses them holds the GIL (basf2's C++ modules do,
for seconds per event), and the process that handles events may be a fork of the one that started it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline_helpers import producers
from pxdbg import models
from pxdbg.consumer.errors import NoProducerError
from pxdbg.consumer.prefetch import PrefetchConfig, PrefetchError, PrefetchProcess, _alive
from pxdbg.shared.seeding import event_index, event_stream_seed
from pxdbg.shared.spec import ProducerSpec

pytestmark = pytest.mark.timeout(180)
SPEC = ProducerSpec(model="parametric")


def want(seed: int, indices) -> list:
    return models.load("parametric").frames(seed, list(indices))


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10)
    return [int(x) for x in out.stdout.split()]


def hold_gil(seconds: int) -> None:
    """What basf2's C++ modules do: a C call that keeps the GIL (ctypes.PyDLL does not release it)."""
    ctypes.PyDLL(None).sleep(seconds)


@pytest.fixture
def prefetch():
    started = []

    def start(config: PrefetchConfig) -> PrefetchProcess:
        p = PrefetchProcess(config)
        started.append(p)
        return p

    yield start
    for p in started:
        pid = p.pid
        p.close()
        assert wait_gone(pid), "the prefetch process outlived its close()"


def test_frames_by_index_with_mispredictions_counted(prefetch):
    """Consecutive indices are prefetched; a jump (a new run) costs one restart and is counted; the frames are
    those of the stream whatever the order asked."""
    p = prefetch(PrefetchConfig(spec=SPEC, seed=11, workers=1, prefetch=4))
    conn = p.connect()
    try:
        asked = [0, 1, 2, 3, 40, 41, 42, 5]
        got = [conn.get(i) for i in asked]
        assert all(g == w for g, w in zip(got, want(11, asked)))
        assert conn.mispredicted == 2  # 40 after 3, 5 after 42
    finally:
        conn.close()


def test_event_keyed_stream_equals_in_process_generation(prefetch):
    seed = event_stream_seed(2026)
    keys = [event_index(0, 1, e) for e in (1, 2, 3)] + [event_index(0, 2, 1)]
    p = prefetch(PrefetchConfig(spec=SPEC, seed=seed, workers=2, prefetch=3))
    conn = p.connect()
    try:
        assert all(conn.get(k) == w for k, w in zip(keys, want(seed, keys)))
    finally:
        conn.close()


@pytest.mark.slow  # holds the GIL for 6 or 40 s per event, in real time
@pytest.mark.parametrize("hold_s", [6, 40])
def test_frames_arrive_while_the_gil_is_held(prefetch, hold_s, caplog, tmp_path):
    """The consumer's process holds the GIL for ``hold_s`` seconds before each of its events (as Geant4 inside
    basf2): the frames of the next events arrive meanwhile, nothing is judged lost or re-issued, and a warm event
    takes a frame that is already in memory. The producer is a farm endpoint (a real producer process), so the
    producer's own view of the consumer is exercised as well."""
    with producers(tmp_path) as farm:
        ep = farm.start("p0")
        p = prefetch(PrefetchConfig(spec=SPEC, seed=5, endpoints=[ep], prefetch=4, heartbeat_timeout=2.0))
        conn = p.connect()
        try:
            conn.get(0)  # warm: connected, the window full
            waits = []
            with caplog.at_level(logging.INFO, logger="pxdbg"):
                for i in range(1, 4 if hold_s < 30 else 3):
                    hold_gil(hold_s)
                    t0 = time.perf_counter()
                    frame = conn.get(i)
                    waits.append(time.perf_counter() - t0)
                    assert frame == want(5, [i])[0]
        finally:
            conn.close()
    relayed = [r.getMessage() for r in caplog.records if r.name == "pxdbg.prefetch"]
    print(f"\nGIL held {hold_s} s per event: waits {', '.join(f'{1e3 * w:.2f} ms' for w in waits)}")
    assert not any("lost" in m or "re-issu" in m or "silent" in m for m in relayed), relayed
    assert max(waits) < 1.0, waits  # a bound far above the ~1 ms measured: what matters is no reconnect


def test_logs_of_the_prefetch_process_reach_the_connection(prefetch, caplog):
    """A farm endpoint nobody serves: the client's warning about it is relayed, then its error is raised here
    with its own type."""
    p = prefetch(PrefetchConfig(spec=SPEC, seed=1, endpoints=["tcp://127.0.0.1:9"], connect_timeout=1.5))
    conn = p.connect()
    try:
        with caplog.at_level(logging.INFO, logger="pxdbg"), pytest.raises(NoProducerError):
            conn.get(0)
    finally:
        conn.close()


def test_a_forked_child_uses_it_and_its_close_stops_nothing(prefetch):
    """basf2 -p N: started in the parent, used by a forked child; the child's close() leaves it running, only
    the starter stops it."""
    p = prefetch(PrefetchConfig(spec=SPEC, seed=3, workers=1, prefetch=2))
    expected = want(3, [7])[0]  # computed before the fork: the child does only what basf2's child would
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh connection, then the clean-up a child would do
        code = 1
        try:
            os.close(r)
            conn = p.connect()
            ok = conn.get(7) == expected
            conn_pid = conn.pid
            p.close()  # not the starter: must do nothing
            os.write(w, b"ok" if ok and conn_pid == os.getpid() else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read()  # the child writes, then exits (closing its end) within the test's timeout
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and said == b"ok"
    assert p.process is not None and p.process.poll() is None and p.dir.is_dir()
    worker_dir = p.dir
    conn = p.connect()  # the parent (or another process) still gets frames
    try:
        assert conn.get(8) == want(3, [8])[0]
    finally:
        conn.close()
    p.close()
    assert not worker_dir.exists()


def test_it_stops_when_its_last_connection_says_bye(prefetch):
    p = prefetch(PrefetchConfig(spec=SPEC, seed=3, workers=1, prefetch=2))
    conn = p.connect()
    conn.get(0)
    workers = children_of(p.pid)
    assert workers, "the local producer should be a child of the prefetch process"
    conn.close()
    assert wait_gone(p.pid), "the prefetch process kept running after its only connection closed"
    assert all(wait_gone(w) for w in workers)


def test_it_and_its_workers_stop_when_the_job_dies(tmp_path):
    """The job is SIGKILLed (a node failure, the OOM killer): the prefetch process and its local producers exit
    by themselves."""
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time\n"
        "from pxdbg.consumer.prefetch import PrefetchConfig, PrefetchProcess\n"
        "from pxdbg.shared.spec import ProducerSpec\n"
        "p = PrefetchProcess(PrefetchConfig(spec=ProducerSpec(model='parametric'), seed=1, workers=1))\n"
        "c = p.connect(); c.get(0)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        server = int(job.stdout.readline())
        workers = children_of(server)
        assert workers
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)
        assert wait_gone(server), "the prefetch process outlived its job"
        assert all(wait_gone(w) for w in workers), "a local producer outlived the prefetch process"
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=10)
        job.stdout.close()


def test_a_dead_prefetch_process_is_a_clear_error(prefetch):
    p = prefetch(PrefetchConfig(spec=SPEC, seed=3, workers=1, prefetch=2))
    conn = p.connect()
    try:
        conn.get(0)
        p.process.kill()
        p.process.wait(timeout=10)
        with pytest.raises(PrefetchError, match="exited"):
            for i in range(1, 50):  # the frames already received may still be handed out
                conn.get(i)
    finally:
        conn.close()


def test_a_bad_setting_fails_in_the_job_before_any_process_starts():
    """The prefetch process's client settings are checked where the config is made (basf2's initialize), in
    one line, not later in a process whose stderr nobody reads."""
    from pxdbg.shared.errors import ConfigError

    with pytest.raises(ConfigError, match="heartbeat_timeout must be a positive number"):
        PrefetchConfig(spec=SPEC, seed=1, workers=1, heartbeat_timeout=0)
    with pytest.raises(ConfigError, match="prefetch must be in"):
        PrefetchConfig(spec=SPEC, seed=1, endpoints=["tcp://127.0.0.1:9"], prefetch=0)
    config = PrefetchConfig(spec=SPEC, seed=1, workers=1, prefetch=4, frame_timeout=7.0)
    assert PrefetchConfig.from_json(config.to_json()) == config
    opts = config.client_options(first_frame=40)
    assert (opts.first_frame, opts.prefetch, opts.frame_timeout, opts.spec) == (40, 4, 7.0, SPEC)
