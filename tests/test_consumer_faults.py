"""The consumer against producers that misbehave: fake producers on raw ROUTER sockets (tests/pipeline_helpers.py).

Each test is one row of what a hostile or broken producer was seen to do. In every case the frames handed out
equal those of a fault-free run, nothing lost or duplicated; a bad producer is quarantined and its frames go
elsewhere; the run fails only when no usable producer is left, with a message that says what each one did.
These tests check the wiring, one per behaviour, against real sockets in real time; the rules themselves (how
many strikes, when a producer is slow, stalled, silent or lost, how long a quarantine lasts) are checked case by
case, with the time passed in, in tests/test_health.py.

Past 500 lines: one test per behaviour of a hostile producer, sharing the fake producers of pipeline_helpers.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline_helpers import FakeProducer, synthetic_frame, wait_until
from pxdbg.consumer import BackgroundClient, IdentityMismatchError, ProducerFailure
from pxdbg.shared import protocol
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.spec import ProducerSpec

pytestmark = pytest.mark.timeout(120)
SEED = 777
IDENTITY = ProducerSpec().identity()
FAST = dict(heartbeat_interval=0.1, heartbeat_timeout=2.0, connect_timeout=20)


def expected(first: int, n: int) -> list:
    return [synthetic_frame(SEED, i) for i in range(first, first + n)]


def consume(client: BackgroundClient, n: int) -> tuple[list, float]:
    """n frames, and the longest wait for one of them (seconds)."""
    got, longest = [], 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        got.append(client.next())
        longest = max(longest, time.perf_counter() - t0)
    return got, longest


def same(got: list, want: list) -> bool:
    return len(got) == len(want) and all(a == b for a, b in zip(got, want))


def test_unrequested_frames_are_dropped_and_the_reorder_buffer_stays_within_prefetch(tmp_path):
    good_ep, bad_ep = f"ipc://{tmp_path}/good.sock", f"ipc://{tmp_path}/ahead.sock"
    with FakeProducer(good_ep, IDENTITY), FakeProducer(bad_ep, IDENTITY, "unrequested"):
        with BackgroundClient([good_ep, bad_ep], seed=SEED, prefetch=4, **FAST) as client:
            got, _ = consume(client, 40)
            assert client.counters["unrequested_frames"] >= 1
            assert client.max_buffered <= 4 and client.max_in_flight <= 4
            assert wait_until(lambda: client.producer_states()[bad_ep] == "quarantined", timeout=10)
            report = client.producer_report()[bad_ep]
    assert same(got, expected(0, 40))
    assert "not asked for" in report


# a mute producer (the slow and stall rules) has tests of its own below; a relabelled frame fails the checksum as a
# corrupt one does (tests/test_protocol.py checks that the checksum covers the index) and is handled the same way
BAD = [
    ("corrupt", "corrupt frames"),
    ("wrong_seed", "of stream 778"),
    ("wrong_frame_identity", "model convnet:"),
    ("wrong_identity", "serves model parametric:"),
    ("error", "failed on frame.*CUDA out of memory"),
    ("nested", "malformed"),
    ("rehello", "forgot this consumer 3 times in a row"),
    ("bad_version", "protocol version 99, which it never offered"),
    ("bad_codec", "wire codec 'rot13', which it never offered"),
]


@pytest.mark.parametrize(("behaviour", "why"), BAD, ids=[b for b, _ in BAD])
def test_a_misbehaving_producer_is_quarantined_and_its_frames_served_elsewhere(tmp_path, behaviour, why):
    good_ep, bad_ep = f"ipc://{tmp_path}/good.sock", f"ipc://{tmp_path}/bad.sock"
    with FakeProducer(good_ep, IDENTITY), FakeProducer(bad_ep, IDENTITY, behaviour) as bad:
        with BackgroundClient([bad_ep, good_ep], seed=SEED, prefetch=8, stall_timeout=3.0, **FAST) as client:
            got, longest = consume(client, 60)
            assert wait_until(lambda: client.producer_states()[bad_ep] == "quarantined", timeout=15)
            report = client.producer_report()[bad_ep]
            counters = dict(client.counters)
    print(f"\n{behaviour}: longest wait {1e3 * longest:.0f} ms; asked of it {len(bad.requested)}; {counters}")
    assert same(got, expected(0, 60)), "frames equal a fault-free run"
    assert __import__("re").search(why, report), report
    assert counters["producers_quarantined"] == 1


def test_a_far_slower_producer_is_quarantined(tmp_path):
    good_ep, slow_ep = f"ipc://{tmp_path}/good.sock", f"ipc://{tmp_path}/drip.sock"
    with FakeProducer(good_ep, IDENTITY, delay=0.002), FakeProducer(slow_ep, IDENTITY, delay=1.0) as slow:
        with BackgroundClient([slow_ep, good_ep], seed=SEED, prefetch=8, **FAST) as client:
            got, longest = consume(client, 100)
            assert wait_until(lambda: client.producer_states()[slow_ep] == "quarantined", timeout=20)
            report = client.producer_report()[slow_ep]
            served = client.frames_per_producer[slow_ep]
    print(
        f"\none frame per second beside a fast producer: longest wait {1e3 * longest:.0f} ms, "
        f"{served} frames from the slow one, asked {len(slow.requested)}"
    )
    assert same(got, expected(0, 100))
    assert "far slower than the others" in report


def test_the_run_fails_only_when_no_usable_producer_is_left(tmp_path, caplog):
    eps = [f"ipc://{tmp_path}/{b}.sock" for b in ("mute", "corrupt")]
    with FakeProducer(eps[0], IDENTITY, "mute"), FakeProducer(eps[1], IDENTITY, "corrupt"):
        with BackgroundClient(eps, seed=SEED, prefetch=4, stall_timeout=1.0, frame_timeout=60, **FAST) as client:
            with pytest.raises(ProducerFailure) as err:
                client.next()
    msg = str(err.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("answers heartbeats but delivered none" in w for w in warnings), "a stall is reported before the end"
    assert "no usable producer left" in msg
    assert f"{eps[0]} " in msg and "delivered none of the frames" in msg
    assert f"{eps[1]} " in msg and "corrupt frames" in msg


def test_only_other_models_gives_an_identity_error(tmp_path):
    ep = f"ipc://{tmp_path}/other.sock"
    with FakeProducer(ep, IDENTITY, "wrong_identity"):
        with BackgroundClient([ep], seed=SEED, **FAST) as client:
            with pytest.raises(IdentityMismatchError, match="serves model parametric:.*asked for parametric:"):
                client.next()


@pytest.mark.parametrize("endpoint", ["garbage", "tcp://127.0.0.1:notaport", "udp://127.0.0.1:5555", "tcp://:5"])
def test_endpoint_strings_are_checked_before_any_socket(endpoint):
    with pytest.raises(ConfigError, match="endpoint"):
        BackgroundClient(endpoint, seed=1, connect_timeout=1)


@pytest.mark.parametrize("name", ["connect_timeout", "frame_timeout", "heartbeat_timeout", "stall_timeout"])
def test_timeouts_must_be_finite_and_positive(name):
    for bad in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(ConfigError, match=name):
            BackgroundClient("tcp://127.0.0.1:9", seed=1, **{name: bad})


def _pxdbg(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pxdbg", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# one bad endpoint and one bad timeout: each value is checked in-process by the two tests above
@pytest.mark.parametrize(
    "args",
    [
        ["--connect", "tcp://127.0.0.1:notaport"],
        ["--connect", "tcp://127.0.0.1:9", "--stall-timeout", "0"],
    ],
)
def test_cli_refuses_bad_endpoints_and_timeouts_in_one_line(args):
    r = _pxdbg("run", "--events", "1", "--seed", "1", *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert "Traceback" not in r.stderr and lines, r.stderr
    assert "endpoint" in lines[-1] or "timeout" in lines[-1], r.stderr


def test_no_frame_is_requested_past_the_last_event(tmp_path):
    ep = f"ipc://{tmp_path}/p.sock"
    with FakeProducer(ep, IDENTITY) as fake:
        with BackgroundClient([ep], seed=SEED, first_frame=5, events=10, prefetch=8, **FAST) as client:
            got = list(client)  # iteration stops after the last event
        assert same(got, expected(5, 10))
        assert sorted(fake.requested) == list(range(5, 15))
        # pxdbg run passes --events on: 12 events with a prefetch of 16 ask for 12 frames
        fake.requested.clear()
        r = _pxdbg("run", "--connect", ep, "--events", "12", "--prefetch", "16", "--seed", str(SEED), "-q")
        assert r.returncode == 0, r.stderr
    assert sorted(fake.requested) == list(range(12)), fake.requested


def test_cli_frame_timeout_ends_a_run_against_a_mute_producer(tmp_path):
    ep = f"ipc://{tmp_path}/mute.sock"
    with FakeProducer(ep, IDENTITY, "mute"):
        r = _pxdbg("run", "--connect", ep, "--events", "3", "--seed", "1", "--frame-timeout", "1", "-q")
    assert r.returncode == 1, r.stderr
    assert "did not arrive within 1 s (--frame-timeout)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_stall_timeout_quarantines_a_producer_that_answers_heartbeats_but_owes_frames(tmp_path):
    """The only producer is mute: with --stall-timeout 1 it is quarantined after 1 s, long before the frame
    timeout, and the run ends with one line saying what it did."""
    ep = f"ipc://{tmp_path}/mute.sock"
    with FakeProducer(ep, IDENTITY, "mute") as fake:
        r = _pxdbg(
            "run", "--connect", ep, "--events", "3", "--seed", "1", "--stall-timeout", "1", "--frame-timeout", "60"
        )
    assert fake.requested, "the consumer never asked the producer"
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "no usable producer left" in last and "delivered none of the frames asked of it" in last, r.stderr
    assert "--frame-timeout" not in r.stderr and "Traceback" not in r.stderr


def test_stall_when_a_producer_goes_mute_mid_run(tmp_path):
    """A producer whose model hangs while its network thread answers heartbeats: its frames go elsewhere."""
    good_ep, mute_ep = f"ipc://{tmp_path}/good.sock", f"ipc://{tmp_path}/hangs.sock"
    with FakeProducer(good_ep, IDENTITY, delay=0.002), FakeProducer(mute_ep, IDENTITY, "mute", after=20):
        with BackgroundClient([mute_ep, good_ep], seed=SEED, prefetch=8, **FAST) as client:
            client.wait_for_producers(2)
            got, longest = consume(client, 150)
            assert wait_until(lambda: client.producer_states()[mute_ep] == "quarantined", timeout=20)
            counters = dict(client.counters)
    print(
        f"\nstall caused by a producer that went mute mid-run: longest wait {1e3 * longest:.0f} ms "
        f"(heartbeat timeout {FAST['heartbeat_timeout']} s, stall timeout 60 s); {counters}"
    )
    assert same(got, expected(0, 150))
    assert counters["hedged"] >= 1


def test_straggler_throughput_with_one_producer_ten_times_slower(tmp_path):
    n, fast_s = 200, 0.01
    eps = [f"ipc://{tmp_path}/fast{i}.sock" for i in range(2)]
    slow_ep = f"ipc://{tmp_path}/slow.sock"

    def run(endpoints):
        with BackgroundClient(endpoints, seed=SEED, prefetch=16, **FAST) as client:
            client.wait_for_producers(len(endpoints))
            waits, got = [], []
            t0 = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                got.append(client.next())
                waits.append(time.perf_counter() - t)
            return time.perf_counter() - t0, waits, got, dict(client.counters)

    with FakeProducer(eps[0], IDENTITY, delay=fast_s), FakeProducer(eps[1], IDENTITY, delay=fast_s):
        with FakeProducer(slow_ep, IDENTITY, delay=10 * fast_s):
            alone, _, got_alone, _ = run(eps)
            mixed, waits, got_mixed, counters = run([slow_ep, *eps])
    ratio = alone / mixed
    long_waits = sum(w > 5 * fast_s for w in waits)
    print(
        f"\nstragglers: {n} frames from 2 fast producers in {alone:.2f} s, with a 10x slower third one "
        f"{mixed:.2f} s: throughput ratio {ratio:.2f}; {long_waits} waits over {5e3 * fast_s:.0f} ms; {counters}"
    )
    assert same(got_alone, expected(0, n)) and same(got_mixed, expected(0, n))
    assert long_waits < n // 4, "the slow producer set the pace"


def test_a_draining_producer_s_frames_are_reissued_at_once(tmp_path):
    good_ep, drain_ep = f"ipc://{tmp_path}/good.sock", f"ipc://{tmp_path}/drain.sock"
    slow = dict(FAST, heartbeat_timeout=30.0)
    with FakeProducer(good_ep, IDENTITY, delay=0.002), FakeProducer(drain_ep, IDENTITY, "drain", after=15) as drain:
        with BackgroundClient([drain_ep, good_ep], seed=SEED, prefetch=8, **slow) as client:
            client.wait_for_producers(2)
            got, longest = consume(client, 120)
            states = client.producer_states()
            counters = dict(client.counters)
    print(
        f"\nstall after a producer said goodbye (draining): longest wait {1e3 * longest:.0f} ms "
        f"(heartbeat timeout {slow['heartbeat_timeout']:.0f} s); {counters}"
    )
    assert drain.drained_at is not None
    assert same(got, expected(0, 120))
    assert states[drain_ep] == "draining" and counters["producers_draining"] == 1
    assert longest < slow["heartbeat_timeout"], "the re-issue did not wait for the heartbeat timeout"


@pytest.mark.slow
def test_stall_after_a_real_producer_is_sigtermed(tmp_path):
    from pipeline_helpers import producers
    from pxdbg import models

    reference = models.load("parametric").frames(SEED, range(150))
    with producers(tmp_path) as p:
        eps = [p.start("p0", "--max-batch", "2"), p.start("p1", "--max-batch", "2")]
        with BackgroundClient(
            eps, seed=SEED, prefetch=12, heartbeat_interval=0.2, heartbeat_timeout=30, connect_timeout=60
        ) as client:
            client.wait_for_producers(2, timeout=60)
            got, _ = consume(client, 40)
            p.procs["p0"].terminate()  # SIGTERM: a batch system's pre-emption
            more, stall = consume(client, 110)
            counters = dict(client.counters)
        assert p.procs["p0"].wait(timeout=30) == 0
    print(
        f"\nstall after SIGTERM of one of two producers: longest wait {1e3 * stall:.0f} ms "
        f"(heartbeat timeout 30 s); {counters}"
    )
    assert all(a == b for a, b in zip(got + more, reference)) and len(got + more) == 150
    assert stall < 30, "the consumer waited for the heartbeat timeout instead of the goodbye"


def test_a_rendezvous_directory_brings_new_producers_and_drops_vanished_ones(tmp_path):
    from pxdbg.shared import discovery

    rdv = tmp_path / "rendezvous"
    a_ep, b_ep = f"ipc://{tmp_path}/a.sock", f"ipc://{tmp_path}/b.sock"
    with FakeProducer(a_ep, IDENTITY, delay=0.002), FakeProducer(b_ep, IDENTITY, delay=0.002):
        reg_a = discovery.register(rdv, a_ep, str(IDENTITY), interval=0.2)
        reg_b = None
        try:
            with BackgroundClient(f"dir:{rdv}", seed=SEED, prefetch=8, **FAST) as client:
                got, _ = consume(client, 20)
                assert client.endpoints == [a_ep]
                reg_b = discovery.register(rdv, b_ep, str(IDENTITY), interval=0.2)
                for _ in range(2000):  # bounded: until the new producer served a frame
                    got.append(client.next())
                    time.sleep(0.002)
                    if client.frames_per_producer[b_ep]:
                        break
                assert client.frames_per_producer[b_ep] > 0, "a producer that joined mid-run was not used"
                reg_a.close()  # producer a leaves the rendezvous
                assert wait_until(lambda: client.endpoints == [b_ep], timeout=15)
                got += consume(client, 30)[0]
                counters = dict(client.counters)
        finally:
            reg_a.close()
            if reg_b is not None:
                reg_b.close()
    assert same(got, expected(0, len(got)))
    assert counters["producers_vanished"] == 1


def test_a_producer_s_pending_limit_is_learnt_not_punished(tmp_path):
    ep = f"ipc://{tmp_path}/limited.sock"
    with FakeProducer(ep, IDENTITY, "limit", after=3, delay=0.002) as fake:
        with BackgroundClient([ep], seed=SEED, prefetch=16, **FAST) as client:
            got, _ = consume(client, 50)
            state = client.producer_states()[ep]
            counters = dict(client.counters)
    assert same(got, expected(0, 50))
    assert fake.refused >= 1 and counters["frames_over_producer_limit"] == fake.refused
    assert state == "alive" and "producers_quarantined" not in counters


#: A producer that welcomes a consumer, then answers its first request with one frame message of many parts
#: (argv: endpoint, identity as JSON, number of parts, bytes per part); it answers pings, and never sends a frame.
HUGE_MESSAGE_PRODUCER = """
import json, sys, time, zmq
from pxdbg.shared import protocol
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.bind(sys.argv[1])
identity = json.loads(sys.argv[2])
n_parts, part = int(sys.argv[3]), b"x" * int(sys.argv[4])
info = {"pid": 1, "host": "hostile", "device": "cpu"}
deadline = time.monotonic() + 60
sent = False
while time.monotonic() < deadline:
    if not s.poll(100):
        continue
    cid, raw, *_ = s.recv_multipart()
    h = protocol.unpack(raw)
    if h["t"] == "hello":
        s.send_multipart([cid, protocol.welcome(identity, info, version=protocol.PROTOCOL_VERSION, codec=None)])
    elif h["t"] == "ping":
        s.send_multipart([cid, protocol.pong()])
    elif h["t"] == "req" and not sent:
        header = protocol.pack({"t": "frame", "seed": h["seed"], "idx": h["idx"][0]})
        s.send_multipart([cid, header, *[part] * n_parts], copy=False)
        sent = True
"""


def _rss_mb() -> float:
    import os
    from pathlib import Path

    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class _PeakRss:
    """This process's resident memory, sampled every few milliseconds in a thread; ``peak`` in MB."""

    def __enter__(self):
        import threading

        self.peak, self._stop = _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(
    ("n_parts", "part_mb", "what"),
    [(40, 15, "libzmq drops the connection at the first part over 8 MiB"), (60, 4, "quarantined at once")],
    ids=["15MB-parts", "4MB-parts"],
)
def test_a_producer_s_message_of_many_parts_costs_the_consumer_bounded_memory(tmp_path, n_parts, part_mb, what):
    """Row: one hostile producer's frame message of 40 parts x 15 MB took a consumer from 53 to 677 MB. A part
    over 8 MiB (a dense frame is 7.68 MB) makes libzmq drop the connection before it holds more than that part;
    smaller parts make a message libzmq assembles whole (a transient peak, printed), after which the parts past
    a frame's bound are released as read and the producer is quarantined at once. The consumer is a process of
    its own, so that its memory is its own (not the heap of a test process that ran hundreds of tests)."""
    import json

    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_consumer_faults as t; "
        "print(json.dumps(t.measure_many_parts(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path), str(n_parts), str(part_mb)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\nconsumer memory, a producer's message of {n_parts} parts x {part_mb} MB ({what}): {r['rss0']:.0f} MB "
        f"before, peak {r['peak']:.0f} MB, {r['rss1']:.0f} MB after; {r['why']}"
    )
    assert r["same"]
    assert r["rss1"] - r["rss0"] < 64
    if part_mb * 2**20 > protocol.MAX_FRAME_PART:
        assert r["peak"] - r["rss0"] < 64, "libzmq dropped the connection before it held the message"
    else:
        assert r["counters"].get("oversized_messages") == 1 and "more than 5 parts" in r["why"]


def measure_many_parts(tmp: str, n_parts: int, part_mb: int) -> dict:
    """The consumer's side of the test above, run in a process of its own: RSS before, peak, after."""
    import json

    good_ep, bad_ep = f"ipc://{tmp}/good.sock", f"ipc://{tmp}/huge.sock"
    bad = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HUGE_MESSAGE_PRODUCER,
            bad_ep,
            json.dumps(IDENTITY.as_dict()),
            str(n_parts),
            str(part_mb * 2**20),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        with FakeProducer(good_ep, IDENTITY, delay=0.002):
            with BackgroundClient([good_ep], seed=SEED, prefetch=8, **FAST) as warm:
                consume(warm, 20)  # steady state: this process has decoded frames before
            rss0 = _rss_mb()
            with _PeakRss() as peak:
                with BackgroundClient([bad_ep, good_ep], seed=SEED, prefetch=8, stall_timeout=3.0, **FAST) as client:
                    client.wait_for_producers(2)
                    got, _ = consume(client, 60)
                    if part_mb * 2**20 <= protocol.MAX_FRAME_PART:
                        assert wait_until(lambda: client.producer_states()[bad_ep] == "quarantined", timeout=20)
                    time.sleep(1.0)  # a quarantined socket's buffers are freed and given back
                    rss1 = _rss_mb()
                    # the I/O thread is still serving after giving the memory back (the give-back once crashed it)
                    got += consume(client, 1)[0]
                    counters = dict(client.counters)
                    why = client.producer_report()[bad_ep]
    finally:
        bad.kill()
        bad.wait(10)
    return {
        "rss0": rss0,
        "peak": peak.peak,
        "rss1": rss1,
        "counters": counters,
        "why": why,
        "same": same(got, expected(0, 61)),
    }


def _run_with_work(client: BackgroundClient, n: int, work_s: float, at=None) -> tuple[list, float, float]:
    """n frames with ``work_s`` seconds of event work each (``at``: {event: callable} run before that event);
    (frames, elapsed seconds, longest wait for one frame)."""
    got, longest = [], 0.0
    t0 = time.perf_counter()
    for i in range(n):
        if at and i in at:
            at[i]()
        t = time.perf_counter()
        got.append(client.next())
        longest = max(longest, time.perf_counter() - t)
        time.sleep(work_s)
    return got, time.perf_counter() - t0, longest


@pytest.mark.slow
def test_partition_stall_a_stopped_producer_s_frames_go_elsewhere_before_the_loss_verdict(tmp_path):
    """Row: one of two producers stopped (SIGSTOP, as a partition) for 8 s cost a run of 300 events with 15 ms of
    work each the whole heartbeat timeout: 10.0 s instead of 5.7 s, while its 6 outstanding frames waited for
    the 5 s loss verdict. Now a missed pong makes its frames go to the other producer at once. Here the work is
    2 ms per event: with 15 ms the producers on this machine run far ahead of the consumer and owe nothing when
    one stops (a stall needs a producer that owes frames; before the fix, 2 ms gave 7.30 s against 1.83 s,
    longest wait 4.77 s: 9 frames waited for the loss verdict)."""
    import signal
    import threading

    from pipeline_helpers import producers

    n, work = 300, 0.002
    with producers(tmp_path) as p:
        eps = [p.start("p0", "--max-batch", "4"), p.start("p1", "--max-batch", "4")]
        stopped = p.procs["p0"]
        resume = threading.Timer(8.0, lambda: stopped.send_signal(signal.SIGCONT))
        try:
            with BackgroundClient(eps, seed=SEED, connect_timeout=60) as client:
                client.wait_for_producers(2, timeout=60)
                clean, clean_s, _ = _run_with_work(client, n, work)
            # the capacity the stopped producer takes away, without any stall: both producers for the first 50
            # events, then the other one alone (a stop noticed at no cost)
            with BackgroundClient(eps, seed=SEED, connect_timeout=60, events=50) as client:
                client.wait_for_producers(2, timeout=60)
                head, head_s, _ = _run_with_work(client, 50, work)
            with BackgroundClient(eps[1:], seed=SEED, first_frame=50, connect_timeout=60) as client:
                client.wait_for_producers(1, timeout=60)
                rest, rest_s, _ = _run_with_work(client, n - 50, work)
            one_s = head_s + rest_s
            with BackgroundClient(eps, seed=SEED, connect_timeout=60) as client:
                client.wait_for_producers(2, timeout=60)

                def stop() -> None:
                    stopped.send_signal(signal.SIGSTOP)
                    resume.start()

                faulty, faulty_s, longest = _run_with_work(client, n, work, at={50: stop})
                counters = dict(client.counters)
        finally:
            resume.cancel()
            stopped.send_signal(signal.SIGCONT)
    print(
        f"\npartition stall, {n} events x {1e3 * work:.0f} ms, one of two producers SIGSTOPped for 8 s at event 50: "
        f"{faulty_s:.2f} s against {clean_s:.2f} s fault-free and {one_s:.2f} s with the other producer alone from "
        f"event 50 (the stall: +{faulty_s - one_s:.2f} s; longest wait {1e3 * longest:.0f} ms; heartbeat timeout "
        f"5 s); {counters}"
    )
    assert all(a == b for a, b in zip(clean, faulty)) and len(faulty) == n
    assert all(a == b for a, b in zip(clean, head + rest)) and len(head + rest) == n
    assert counters["producers_silent"] >= 1
    assert longest < 2.5, "the stopped producer's frames waited for the loss verdict"


@pytest.mark.slow
def test_a_clean_drain_is_an_info_and_its_own_counter_and_local_workers_do_not_hedge(tmp_path, caplog):
    """Rows: a producer's SIGTERM drain (a rollout, scancel) logged three WARNINGs and counted as
    producer_failures 1; local-worker runs hedged onto the same CPUs (hedged 12, hedges_wasted 12)."""
    from pipeline_helpers import producers
    from pxdbg import models

    reference = models.load("parametric").frames(SEED, range(60))
    caplog.set_level("INFO", logger="pxdbg.consumer")
    with producers(tmp_path) as p:
        eps = [p.start("p0", "--max-batch", "2"), p.start("p1", "--max-batch", "2")]
        with BackgroundClient(eps, seed=SEED, prefetch=12, heartbeat_interval=0.2, connect_timeout=60) as client:
            client.wait_for_producers(2, timeout=60)
            got, _ = consume(client, 20)
            p.procs["p0"].terminate()
            assert p.procs["p0"].wait(timeout=30) == 0
            more, _ = consume(client, 40)
            assert wait_until(lambda: client.counters["producers_drained"] == 1, 10), dict(client.counters)
            counters = dict(client.counters)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname in ("WARNING", "ERROR") and "no producer has answered" not in r.getMessage()  # start-up
    ]
    drained = [r for r in caplog.records if "shut down (" in r.getMessage()]
    assert same(got + more, reference)
    assert counters.get("producer_failures", 0) == 0 and not warnings, (counters, warnings)
    assert len(drained) == 1 and drained[0].levelname == "INFO"
    with BackgroundClient(workers=2, seed=SEED, prefetch=16, connect_timeout=60) as local:
        local.wait_for_producers(2, timeout=60)
        got, _ = consume(local, 60)
        counters = dict(local.counters)
    print(f"\nlocal workers, 60 frames: {counters}")
    assert same(got, reference)
    assert counters.get("hedged", 0) == 0 and counters.get("hedges_wasted", 0) == 0
    assert local.options.audit == 0 and "audits" not in counters, "local workers are this process's own: no audit"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_consumer_says_what_it_waits_for_and_fails_in_one_line(tmp_path, caplog):
    """Row: a wrong endpoint gave 60 s of silence, then a generic line. Now after about 2 s the consumer says
    where it waits and why (its socket monitor tells a refused connection from one that gets no answer, and
    from a peer that accepts but never welcomes), and the final error is one line with the reason."""
    import socket

    from pxdbg.consumer import NoProducerError

    refused = f"tcp://127.0.0.1:{_free_port()}"
    silent = socket.socket()  # accepts TCP connections but speaks no ZeroMQ
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    mute = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    caplog.set_level("WARNING", logger="pxdbg.consumer")
    t0, wall0 = time.monotonic(), time.time()
    try:
        with BackgroundClient([refused, mute, f"ipc://{tmp_path}/none.sock"], seed=1, connect_timeout=3) as c:
            with pytest.raises(NoProducerError) as err:
                c.next()
    finally:
        silent.close()
    elapsed = time.monotonic() - t0
    waiting = [r for r in caplog.records if "no producer has answered" in r.getMessage()]
    print(f"\n{waiting[0].getMessage() if waiting else None}\n{err.value}")
    assert len(waiting) == 1 and waiting[0].created - wall0 < 3.5
    said = waiting[0].getMessage()
    assert f"{refused} (connection refused)" in said and f"{mute} (connected, no welcome yet" in said
    assert "none.sock (no socket file at" in said
    final = str(err.value)
    assert "\n" not in final and f"{refused} (connection refused)" in final and elapsed < 10
    caplog.clear()
    with BackgroundClient([refused], seed=1, connect_timeout=2.5) as c, pytest.raises(NoProducerError):
        c.next()
    said = [r.getMessage() for r in caplog.records if "no producer has answered" in r.getMessage()]
    assert said and said[0].startswith(f"no producer has answered at {refused} yet (connection refused);")


def test_the_audit_catches_a_forging_producer_that_the_checksum_cannot(tmp_path, caplog):
    """Row: a producer can send frame i+1's digits as frame i with a valid CRC for i (CRC-32 is no MAC). With
    the audit, frames are also asked of a second producer and handed out only when the copies agree: with three
    producers the forger is outvoted and quarantined for the run, every frame handed out is right; with two, which
    one lies cannot be told, so neither is used again and the run fails in one line naming the frame."""
    eps = [f"ipc://{tmp_path}/{name}.sock" for name in ("forge", "good1", "good2")]
    caplog.set_level("WARNING", logger="pxdbg.consumer")
    # the forger answers once the two others have said welcome: a frame that comes while no other producer can be
    # asked is handed out unaudited (by design), and the forger's, first alone, would have been
    forger = FakeProducer(eps[0], IDENTITY, "forge")
    try:
        with FakeProducer(eps[1], IDENTITY), FakeProducer(eps[2], IDENTITY):
            with BackgroundClient(eps, seed=SEED, prefetch=8, audit=1.0, **FAST) as client:
                client.wait_for_producers(2)
                forger.start()
                client.wait_for_producers(3)
                got, _ = consume(client, 60)
                report = client.producer_report()[eps[0]]
                counters = dict(client.counters)
    finally:
        forger.close()
    print(f"\naudit of every frame, one forger among three producers: {counters}")
    assert same(got, expected(0, 60)), "no forged frame is handed out"
    assert "differs from the copy of" in report and "(audit)" in report
    assert counters["audit_mismatches"] >= 1 and counters["producers_quarantined"] == 1
    said = [r.getMessage() for r in caplog.records if "quarantined for the run" in r.getMessage()]
    assert len(said) == 1 and "its frame " in said[0]

    with FakeProducer(eps[0], IDENTITY, "forge"), FakeProducer(eps[1], IDENTITY):
        with BackgroundClient(eps[:2], seed=SEED, prefetch=8, audit=1.0, **FAST) as client:
            client.wait_for_producers(2)
            with pytest.raises(ProducerFailure) as err:
                consume(client, 60)
    assert "\n" not in str(err.value) and "(audit)" in str(err.value) and "its frame " in str(err.value)


def test_an_audit_tie_waits_for_a_third_producer_that_is_still_connecting(tmp_path, caplog):
    """Two copies that differ, and the third producer has not said welcome yet (it is slow to start, or loaded):
    the frame waits for its copy instead of condemning both at once (a good producer was quarantined with the
    forger, then the third one against the forger's copy held for another frame, and the run failed). Copies from a
    producer the audit caught are no evidence against the others."""
    eps = [f"ipc://{tmp_path}/{name}.sock" for name in ("forge", "good1", "late")]
    caplog.set_level("WARNING", logger="pxdbg.consumer")
    # bound, so the consumer connects, but they answer nothing until started: the forger once the good one said
    # welcome (a frame that comes while no other producer can be asked is handed out unaudited, by design), the
    # third once a tie waits for it
    forger, late = FakeProducer(eps[0], IDENTITY, "forge"), FakeProducer(eps[2], IDENTITY)
    try:
        with FakeProducer(eps[1], IDENTITY):
            with BackgroundClient(eps, seed=SEED, prefetch=8, audit=1.0, **FAST) as client:
                client.wait_for_producers(1)
                forger.start()
                client.wait_for_producers(2)
                seen: dict = {}

                def start_the_third_once_a_tie_waits() -> None:
                    seen["tie"] = wait_until(lambda: client.counters["audit_mismatches"] >= 1, 20)
                    time.sleep(0.3)  # the tie has waited some turns of the I/O loop
                    seen["quarantined then"] = client.counters["producers_quarantined"]
                    late.start()

                starter = threading.Thread(target=start_the_third_once_a_tie_waits, daemon=True)
                starter.start()
                got, _ = consume(client, 60)  # waits at the tie's frame until the third producer answers
                starter.join(30)
                states = client.producer_states()
                counters = dict(client.counters)
    finally:
        forger.close()
        late.close()
    assert seen == {"tie": True, "quarantined then": 0}, (seen, counters)
    assert same(got, expected(0, 60)), "no forged frame is handed out"
    assert states[eps[0]] == "quarantined" and states[eps[1]] != "quarantined", states
    assert counters["producers_quarantined"] == 1, counters


@pytest.mark.slow
def test_a_farm_is_audited_by_default(tmp_path):
    eps = [f"ipc://{tmp_path}/a.sock", f"ipc://{tmp_path}/b.sock"]
    with FakeProducer(eps[0], IDENTITY), FakeProducer(eps[1], IDENTITY):
        with BackgroundClient(eps, seed=SEED, prefetch=8, **FAST) as client:
            client.wait_for_producers(2)
            got, _ = consume(client, 1000)
            counters = dict(client.counters)
    assert same(got, expected(0, 1000))
    assert client.options.audit == 0.01 and counters["audits"] >= 1, counters  # none of 1000 at 1 %: p = 4e-5
    assert counters["audits_passed"] + counters.get("audits_inconclusive", 0) >= counters["audits"] - 1
    assert counters.get("audit_mismatches", 0) == 0
    with pytest.raises(ConfigError, match="audit must be a fraction"):
        BackgroundClient(eps, seed=SEED, audit=2)
