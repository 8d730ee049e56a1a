"""The prefetching pipeline with real producer processes and real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from pipeline_helpers import process_gone, producers, wait_until
from pxdbg import models
from pxdbg.consumer import BackgroundClient, IdentityMismatchError, NoProducerError
from pxdbg.shared import protocol
from pxdbg.shared.spec import ProducerSpec

pytestmark = pytest.mark.timeout(180)
SEED = 424242


@pytest.fixture(scope="module")
def reference():
    """Frames 0..119 of stream SEED generated in this process."""
    return models.load("parametric").frames(SEED, range(120))


def test_in_order_and_prefetch_bound(reference):
    with BackgroundClient(workers=1, seed=SEED, prefetch=4, connect_timeout=60) as client:
        got = []
        for i in range(30):
            got.append(client.next())
            assert client.last_index == i
            if i % 5 == 0:
                time.sleep(0.1)  # let the producer fill the window
                assert client.in_flight() <= 4
        assert client.max_in_flight == 4, "the window fills up to, and never beyond, the prefetch bound"
    assert all(a == b for a, b in zip(got, reference))
    dense = None
    with BackgroundClient(workers=1, seed=SEED, first_frame=7, prefetch=2) as client:
        dense = client.next(dense=True)
    assert dense.shape == (40, 250, 768) and dense.dtype == np.uint8
    assert np.array_equal(dense, reference[7].to_dense())


def test_identical_frames_with_1_and_3_producers(tmp_path, reference):
    with producers(tmp_path) as p:
        eps = [p.start(f"p{i}", "--max-batch", str(b)) for i, b in enumerate((1, 3, 8))]
        with BackgroundClient(eps, seed=SEED, prefetch=9) as client:
            assert client.wait_for_producers(timeout=60) == 3
            three = [client.next() for _ in range(60)]
            per_producer = dict(client.frames_per_producer)
        with BackgroundClient(eps[:1], seed=SEED, prefetch=5) as client:
            one = [client.next() for _ in range(60)]
    assert len(per_producer) == 3, f"all three producers served frames: {per_producer}"
    assert all(a == b for a, b in zip(three, one))
    assert all(a == b for a, b in zip(three, reference))


@pytest.mark.slow  # real time: a producer killed, its loss verdict, a restart
def test_failover_after_sigkill_and_reuse_after_restart(tmp_path, reference):
    with producers(tmp_path) as p:
        eps = [p.start(f"p{i}") for i in range(3)]
        with BackgroundClient(
            eps, seed=SEED, prefetch=12, heartbeat_interval=0.2, heartbeat_timeout=1.5, connect_timeout=30
        ) as client:
            client.wait_for_producers(timeout=60)
            got = [client.next() for _ in range(20)]
            p.kill("p1")
            got += [client.next() for _ in range(40)]
            deadline = time.monotonic() + 20  # the others may serve 40 frames before the heartbeat timeout
            while client.counters["producer_failures"] < 1 and time.monotonic() < deadline:
                got.append(client.next())
                time.sleep(0.01)
            assert client.counters["producer_failures"] >= 1, client.producer_report()
            served_before = client.frames_per_producer[eps[1]]
            p.start("p1")  # a producer restarted on the same endpoint
            deadline = time.monotonic() + 60
            while client.frames_per_producer[eps[1]] == served_before and time.monotonic() < deadline:
                got.append(client.next())
                time.sleep(0.005)
            assert client.frames_per_producer[eps[1]] > served_before, (
                f"the restarted producer was not used again: {p.log('p1')}"
            )
            got += [client.next() for _ in range(10)]
    expected = models.load("parametric").frames(SEED, range(len(got)))
    assert all(a == b for a, b in zip(got, expected)), "frames after failover must equal a fault-free run"


@pytest.mark.slow  # real time: waits out the loss verdict and the return
def test_a_cut_off_producer_is_lost_and_taken_back_not_quarantined(tmp_path):
    """A producer that stops answering altogether (SIGSTOP: to its consumers a partition looks the same) is lost
    at the heartbeat timeout and used again as soon as it answers; the frames hedged away from it while it was
    silent do not get it quarantined as slow for a minute."""
    with producers(tmp_path) as p:
        eps = [p.start("a"), p.start("b")]
        stopped = False
        try:
            with BackgroundClient(
                eps, seed=SEED, prefetch=12, heartbeat_interval=0.2, heartbeat_timeout=5.0, connect_timeout=30
            ) as client:
                client.wait_for_producers(timeout=60)
                got = [client.next() for _ in range(100)]  # the hedging budget fills up
                p.procs["a"].send_signal(signal.SIGSTOP)
                stopped = True
                until = time.monotonic() + 6.0  # beyond the heartbeat timeout
                while time.monotonic() < until:
                    got.append(client.next())
                p.procs["a"].send_signal(signal.SIGCONT)
                stopped = False
                served = client.frames_per_producer[eps[0]]
                deadline = time.monotonic() + 30
                while client.frames_per_producer[eps[0]] == served and time.monotonic() < deadline:
                    got.append(client.next())
                assert client.frames_per_producer[eps[0]] > served, f"not used again: {client.producer_report()}"
                assert client.counters["producer_failures"] >= 1, "lost at the heartbeat timeout"
                assert client.counters["producers_quarantined"] == 0, client.producer_report()
        finally:
            if stopped:
                p.procs["a"].send_signal(signal.SIGCONT)
    expected = models.load("parametric").frames(SEED, range(len(got)))
    assert all(a == b for a, b in zip(got, expected)), "frames equal a fault-free run"


def test_no_producer_gives_a_clear_error(tmp_path):
    client = BackgroundClient(
        [f"ipc://{tmp_path}/nobody.sock", "tcp://127.0.0.1:9"],
        seed=1,
        connect_timeout=1.0,
        heartbeat_interval=0.1,
        heartbeat_timeout=0.5,
    )
    t0 = time.monotonic()
    with (
        client,
        pytest.raises(
            NoProducerError,
            match=r"no producer answered within 1 s: ipc://.*nobody.sock \(no socket file at "
            r".*tcp://127.0.0.1:9 \(.*pxdbg produce",
        ),
    ):
        client.next()
    assert time.monotonic() - t0 < 10


def test_wrong_identity_is_refused(tmp_path):
    with producers(tmp_path) as p:
        ep = p.start("p0")
        with BackgroundClient(
            [ep], spec=ProducerSpec(checkpoint_sha256="ab" * 32), seed=1, connect_timeout=30
        ) as client:
            with pytest.raises(IdentityMismatchError) as err:
                client.next()
    msg = str(err.value)
    assert "serves model parametric:" in msg and "asked for parametric:abababababababab" in msg


def _raw(ctx, ep):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 2000)
    s.connect(ep)
    return s


def test_producer_survives_malformed_messages(tmp_path, reference):
    with producers(tmp_path) as p:
        ep = p.start("p0")
        # the junk socket lingers 2 s at close: the producer must be up by then (its start can take longer)
        assert wait_until(lambda: "serving" in p.log("p0"), timeout=120)
        ctx = zmq.Context()
        try:
            s = _raw(ctx, ep)
            junk = [
                [b"\xc1"],  # not msgpack
                [b""],
                [msgpack.packb([1, 2])],  # not a map
                [msgpack.packb({"v": 99, "t": "hello"})],  # other protocol version
                [protocol.pack({"t": "req", "seed": 1, "idx": [0]})],  # request before hello
                [protocol.pack({"t": "launch"})],
                [protocol.pack({"t": "hello"}), b"extra"],
                [protocol.pack({"t": "req", "seed": "x", "idx": [0]})],
                [protocol.pack({"t": "req", "seed": 1, "idx": [-1]})],
                [protocol.pack({"t": "req", "seed": 2**63 + 5, "idx": [0]})],
                [protocol.pack({"t": "req", "seed": 1, "idx": list(range(10_000))})],
                [b"x" * (protocol.MAX_REQUEST_MESSAGE + 10)],  # oversized: the connection is dropped
            ]
            for parts in junk:
                s.send_multipart(parts)
            s.close()  # lingers until the junk is delivered
            assert wait_until(lambda: "unexpected buffers" in p.log("p0"), timeout=20)
            # the producer is still alive and serves a proper consumer the right frames
            with BackgroundClient([ep], seed=SEED, prefetch=4, connect_timeout=30) as client:
                got = [client.next() for _ in range(10)]
            assert all(a == b for a, b in zip(got, reference))
            assert p.procs["p0"].poll() is None
        finally:
            ctx.term()
    log = p.log("p0")
    assert "malformed messages" in log and "requests before hello" in log and "unexpected messages" in log


CHILD = r"""
import sys, time
from pxdbg.consumer import BackgroundClient
c = BackgroundClient(workers=2, seed=1, prefetch=2)
c.next()
print(" ".join(str(w.process.pid) for w in c.local_workers.workers), flush=True)
time.sleep(600)
"""


def test_workers_stop_when_parent_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2 and not any(process_gone(pid) for pid in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=15), (
            "local producers outlived their killed parent"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_close_stops_workers():
    with BackgroundClient(workers=2, seed=1, prefetch=2) as client:
        client.next()
        pids = [w.process.pid for w in client.local_workers.workers]
        tmpdir = client.local_workers.dir
    assert all(process_gone(pid) for pid in pids)
    assert not tmpdir.exists()


def test_worker_start_failure_is_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="(?s)exited.*cannot read checkpoint .*not a PyTorch file"):
        with BackgroundClient(workers=1, spec=ProducerSpec(model="resnet", checkpoint=str(bad)), seed=1) as client:
            client.next()


def test_tcp_farm_endpoint(tmp_path, reference):
    with zmq.Context() as ctx:  # find a free port
        s = ctx.socket(zmq.ROUTER)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        s.close(0)
    with producers(tmp_path) as p:
        proc_ep = f"tcp://127.0.0.1:{port}"
        p.procs["tcp"] = subprocess.Popen(
            [sys.executable, "-m", "pxdbg", "produce", "--bind", proc_ep],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with BackgroundClient(proc_ep, seed=SEED, prefetch=4, connect_timeout=30) as client:
            got = [client.next() for _ in range(5)]
    assert all(a == b for a, b in zip(got, reference))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow  # a long run by design
def test_memory_stays_flat_over_a_long_run():
    with BackgroundClient(workers=1, seed=5, prefetch=8) as client:
        worker = client.local_workers.workers[0].process.pid
        for _ in range(300):
            client.next()
        consumer0, producer0 = _rss_mb(os.getpid()), _rss_mb(worker)
        for _ in range(1200):
            client.next()
        consumer1, producer1 = _rss_mb(os.getpid()), _rss_mb(worker)
        assert client.max_in_flight <= 8
    # 1200 frames are ~270 MB on the wire: a leak of even one frame in ten would show
    assert consumer1 - consumer0 < 25, (consumer0, consumer1)
    assert producer1 - producer0 < 25, (producer0, producer1)


class FlakyModel:
    """A model for an in-thread ProducerServer: parametric frames, but it fails on chosen frames."""

    def __init__(self, fail_generate: int, fail_encode: int):
        self.inner = models.load("parametric")
        self.identity, self.device = self.inner.identity, self.inner.device
        self.fail_generate, self.fail_encode = fail_generate, fail_encode

    def wire_frames_for(self, keys):
        if any(idx == self.fail_generate for _, idx in keys):
            raise RuntimeError("CUDA out of memory (simulated)")
        frames = self.inner.wire_frames_for(keys)
        return ["not a frame" if idx == self.fail_encode else f for (_, idx), f in zip(keys, frames)]

    def encode(self, seed, idx, frame, codec=None):
        return self.inner.encode(seed, idx, frame, codec)


@pytest.mark.parametrize(
    ("fail_generate", "fail_encode", "match"),
    [
        (3, -1, "failed on frame\\(s\\) \\[3\\].*CUDA out of memory \\(simulated\\)"),
        (-1, 2, "failed on frame\\(s\\) \\[2\\].*could not encode"),
    ],
)
def test_producer_failures_reach_the_consumer(tmp_path, fail_generate, fail_encode, match):
    from pxdbg.consumer import ProducerFailure
    from pxdbg.producer.server import ProducerServer

    ep = f"ipc://{tmp_path}/flaky.sock"
    server = ProducerServer(FlakyModel(fail_generate, fail_encode), ep, max_batch=1)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, kwargs={"ready": ready}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        with BackgroundClient([ep], seed=SEED, prefetch=1, connect_timeout=30) as client:
            good = min(fail_generate if fail_generate >= 0 else 99, fail_encode if fail_encode >= 0 else 99)
            for _ in range(good):
                client.next()
            with pytest.raises(ProducerFailure, match=match):
                client.next()
        assert thread.is_alive(), "the producer survives a failed batch"
    finally:
        server.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_producer_reports_its_numbers(tmp_path, caplog):
    import logging

    from pxdbg.producer.server import ProducerServer

    ep = f"ipc://{tmp_path}/report.sock"
    server = ProducerServer(models.load("parametric"), ep, report_interval=0.3)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, kwargs={"ready": ready}, daemon=True)
    with caplog.at_level(logging.INFO, logger="pxdbg.producer"):
        thread.start()
        try:
            assert ready.wait(30)
            with BackgroundClient([ep], seed=SEED, prefetch=4, connect_timeout=30) as client:
                for _ in range(20):
                    client.next()
                time.sleep(0.7)
        finally:
            server.stop()
            thread.join(30)
    reports = [r.getMessage() for r in caplog.records if "frames/s over the last" in r.getMessage()]
    assert reports and "1 consumers" in " ".join(reports)
    assert server.stats.counters["frames_sent"] >= 20
