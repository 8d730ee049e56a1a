"""The producer: per-consumer queues and fair share (socket-free), its numbers, status, graceful shutdown, and a
consumer frozen with SIGSTOP beside another one (real processes and sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import zmq

from pipeline_helpers import producers, wait_until
from pxdbg import models
from pxdbg.consumer import BackgroundClient
from pxdbg.producer.queues import ConsumerQueues, LimitError, RequestQueue
from pxdbg.producer.server import ProducerServer
from pxdbg.producer.stats import Histogram
from pxdbg.shared import protocol

pytestmark = pytest.mark.timeout(240)


# -- queues: socket-free ---------------------------------------------------------------------------------
def _queues(**kw) -> ConsumerQueues:
    q = ConsumerQueues(**{"max_consumers": 8, "max_pending": 100, "max_unsent": 4, **kw})
    for cid in (b"a", b"b", b"c"):
        q.add(cid, cid.decode(), None, 2, 0.0)
    return q


def test_round_robin_across_consumers():
    q = _queues()
    assert q.submit(b"a", 1, list(range(50))) == []  # a hog
    assert q.submit(b"b", 2, [0, 1]) == []
    assert q.submit(b"c", 3, [0]) == []
    batch = q.take(4, timeout=0)
    assert [(w.cid, w.idx) for w in batch] == [(b"a", 0), (b"b", 0), (b"c", 0), (b"a", 1)]
    batch = q.take(4, timeout=0)  # resumes with the consumers not served last
    assert [w.cid for w in batch] == [b"b", b"a", b"a"]  # a has 2 in work + 2 more = its max_unsent of 4


def test_a_consumer_that_does_not_read_gets_no_more_work():
    q = _queues()
    q.submit(b"a", 1, list(range(20)))
    q.submit(b"b", 1, list(range(20)))
    work = q.take(8, timeout=0)
    assert sorted(w.cid for w in work) == [b"a"] * 4 + [b"b"] * 4
    consumers = {c.cid: c for c in q.consumers()}
    for w in work:  # all made; b's socket takes them, a's does not
        assert q.to_outbox(w.cid, w.serial, [w.cid, b"frame"])
    while consumers[b"b"].outbox:
        q.sent_one(consumers[b"b"])
    assert {w.cid for w in q.take(8, timeout=0)} == {b"b"}
    assert consumers[b"a"].pending == 20 and consumers[b"b"].pending == 20 - 4


def test_a_consumer_with_many_bytes_waiting_gets_no_more_work():
    q = _queues(max_unsent_bytes=1000)  # dense frames are 7.68 MB: a few of them are the bound, not 16
    q.submit(b"a", 1, list(range(10)))
    (w,) = q.take(1, timeout=0)
    q.to_outbox(w.cid, w.serial, [w.cid, b"h", bytes(1200)])
    assert q.take(4, timeout=0) == []
    q.sent_one(q.get(b"a"))
    assert q.get(b"a").outbox_bytes == 0 and len(q.take(4, timeout=0)) == 4


def test_pending_limit_and_consumer_limit():
    q = _queues(max_consumers=3)
    assert q.submit(b"a", 1, list(range(90))) == []
    assert q.submit(b"a", 1, list(range(90, 120))) == list(range(100, 120))
    with pytest.raises(LimitError, match="most consumers \\(3\\)"):
        q.add(b"d", "d", None, 2, 0.0)
    assert q.remove(b"a").pending == 100
    q.add(b"d", "d", None, 2, 0.0)
    assert q.submit(b"zz", 1, [1, 2]) == [1, 2]  # unknown consumer: refused


def test_per_address_limit_counts_admissions_and_departures():
    q = ConsumerQueues(max_consumers=5, max_per_address=2)
    q.add(b"h1", "h1", None, 2, 0.0, address="10.0.0.1")
    q.add(b"h2", "h2", None, 2, 0.0, address="10.0.0.1")
    with pytest.raises(LimitError, match="from one address \\(2\\)"):
        q.add(b"h3", "h3", None, 2, 0.0, address="10.0.0.1")
    q.add(b"o1", "o1", None, 2, 0.0, address="10.0.0.2")  # another host
    q.add(b"ipc", "ipc", None, 2, 0.0)  # ipc: no address, no per-address limit
    q.remove(b"h1")
    q.add(b"h3", "h3", None, 2, 0.0, address="10.0.0.1")  # a slot of that address is free again
    assert len(q) == 4


def test_work_of_a_forgotten_consumer_is_dropped():
    q = _queues()
    q.submit(b"a", 1, [0, 1])
    work = q.take(2, timeout=0)
    q.remove(b"a")
    q.add(b"a", "a again", None, 2, 0.0)  # the same connection says hello again: a new incarnation
    assert not q.to_outbox(b"a", work[0].serial, [b"a", b"old"])
    assert q.get(b"a").working == 0 and not q.get(b"a").outbox


def test_close_hands_back_queued_requests():
    q = _queues()
    q.submit(b"a", 1, [0, 1, 2])
    q.submit(b"b", 2, [5])
    q.take(1, timeout=0)
    dropped = q.close()
    assert dropped[b"a"] == {1: [1, 2]} and dropped[b"b"] == {2: [5]} and dropped[b"c"] == {}
    assert q.submit(b"a", 1, [9]) == [9]
    assert q.busy()  # frame 0 of a is still being made


def test_request_queue_keeps_order_across_requests():
    r = RequestQueue()
    r.extend(1, [5, 6])
    r.extend(2, [])
    r.extend(3, [7])
    assert len(r) == 3 and r.popleft() == (1, 5)
    assert list(r) == [(1, 6), (3, 7)] and len(r) == 2
    assert [r.popleft(), r.popleft()] == [(1, 6), (3, 7)] and not r
    r.extend(4, [2**63 - 1])
    r.clear()
    assert len(r) == 0 and list(r) == []


@pytest.mark.slow  # fills every queue limit
def test_queued_requests_at_every_limit_fit_in_a_few_megabytes():
    """The default limits (256 consumers x 4,096 pending frames) held as queued indices."""
    q = ConsumerQueues(max_consumers=256, max_pending=4096)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(256):
            cid = i.to_bytes(5, "little")
            q.add(cid, "hog", None, 2, 0.0)
            assert q.submit(cid, i, list(range(10**12, 10**12 + 4096))) == []
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"256 consumers x 4096 queued frames: {grown / 2**20:.1f} MB")
    assert q.pending() == 256 * 4096
    assert grown < 16 * 2**20


def test_take_waits_and_stop_wakes_it():
    q = _queues()
    t = threading.Thread(target=lambda: q.take(1, timeout=30))
    t.start()
    q.stop()
    t.join(10)
    assert not t.is_alive()


def test_histogram_is_bounded_and_cumulative():
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 7.0, 7.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap == {"buckets": [0.1, 1.0], "counts": [2, 3, 5], "sum": pytest.approx(14.65), "count": 5}
    for _ in range(10_000):
        h.observe(3.0)
    assert len(h.snapshot()["counts"]) == 3


# -- a producer in this process ---------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    ep = f"ipc://{tmp_path}/p.sock"
    srv = ProducerServer(models.load("parametric"), ep, max_batch=4)
    ready = threading.Event()
    thread = threading.Thread(target=srv.serve, kwargs={"ready": ready}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        yield srv, ep
    finally:
        srv.stop()
        thread.join(30)
    assert not thread.is_alive()


def _dealer(ctx, ep):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 20_000)
    s.connect(ep)
    return s


def _recv(sock) -> tuple[dict, list]:
    parts = sock.recv_multipart()
    return protocol.unpack(parts[0]), parts[1:]


def test_snapshot_and_status_without_hello(server):
    srv, ep = server
    with BackgroundClient([ep], seed=3, prefetch=4, connect_timeout=30) as client:
        for _ in range(10):
            client.next()
    snap = srv.snapshot()
    assert set(snap) == {
        "identity",
        "host",
        "pid",
        "device",
        "endpoints",
        "uptime_s",
        "ready",
        "last_progress_s",
        "consumers",
        "pending",
        "counters",
        "histograms",
    }
    assert snap["ready"] is True and snap["pid"] == os.getpid() and snap["endpoints"] == [ep]
    assert snap["counters"]["frames_sent"] >= 10 and snap["counters"]["frames_generated"] >= 10
    for name in ("model_seconds", "post_seconds", "batch_size"):
        h = snap["histograms"][name]
        assert h["count"] >= 3 and h["counts"][-1] == h["count"] and len(h["counts"]) == len(h["buckets"]) + 1
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, ep)
        s.send(protocol.status())  # no hello first
        header, buffers = _recv(s)
        s.close()
    finally:
        ctx.term()
    assert header["t"] == "snapshot" and not buffers
    assert protocol.parse_snapshot(header) == header["snapshot"]
    assert header["snapshot"]["identity"] == srv.identity_str
    assert header["snapshot"]["counters"]["frames_sent"] >= 10


def test_codec_is_negotiated_per_consumer(server):
    _, ep = server
    reference = models.load("parametric").frames(5, [0, 1])
    ctx = zmq.Context()
    try:
        plain, packed = _dealer(ctx, ep), _dealer(ctx, ep)
        plain.send(protocol.hello(None, "plain", codec_names=[]))
        packed.send(protocol.hello(None, "packed"))
        for sock, codec in ((plain, None), (packed, "zstd")):
            header, _ = _recv(sock)
            assert header["t"] == "welcome" and header["codec"] == codec and header["version"] == 2
            sock.send(protocol.request(5, [0, 1]))
            for _ in range(2):
                header, buffers = _recv(sock)
                assert header.get("codec") == codec
                assert protocol.decode_frame(header, buffers) == reference[header["idx"]]
            sock.close()
    finally:
        ctx.term()


def test_incompatible_versions_get_an_error_naming_both(server):
    _, ep = server
    ctx = zmq.Context()
    try:
        s = _dealer(ctx, ep)
        s.send(protocol.pack({"t": "hello", "client": "old"}, version=1))  # a version-1 consumer offers no range
        header = protocol.unpack(s.recv(), any_version=True)
        s.close()
    finally:
        ctx.term()
    assert header["v"] == 1 and header["t"] == "error" and header["code"] == "version"
    assert "this producer speaks version 2, the consumer 1" in header["msg"]


@pytest.mark.slow
def test_endpoint_errors_are_one_line(tmp_path):
    for ep, match in (("tcp://127.0.0.1:99999", "port must be a number"), ("udp://x:1", "tcp:// or ipc://")):
        r = subprocess.run(
            [sys.executable, "-m", "pxdbg", "produce", "--bind", ep], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- graceful shutdown ------------------------------------------------------------------------------------
def test_sigterm_drains_and_says_goodbye(tmp_path):
    """SIGTERM: queued frames are handed back at once in a goodbye, batches in progress still arrive, a final
    goodbye follows, and the producer exits 0. (And --max-consumers is a setting of pxdbg produce.)"""
    with producers(tmp_path) as p:
        ep = p.start("p0", "--max-batch", "4", "--max-consumers", "1")
        ctx = zmq.Context()
        try:
            s = _dealer(ctx, ep)
            s.send(protocol.hello(None, "drained"))
            assert _recv(s)[0]["t"] == "welcome"
            second = _dealer(ctx, ep)  # --max-consumers 1: a second consumer is told so
            second.send(protocol.hello(None, "one too many"))
            refusal, _ = _recv(second)
            second.close()
            assert refusal["t"] == "error" and refusal["code"] == "limit" and "most consumers (1)" in refusal["msg"]
            s.send(protocol.request(11, list(range(200))))
            header, _ = _recv(s)
            assert header["t"] == "frame"
            received = {header["idx"]}
            p.procs["p0"].send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            goodbyes = []
            while not goodbyes or not goodbyes[-1][0]:
                header, _ = _recv(s)
                if header["t"] == "frame":
                    received.add(header["idx"])
                elif header["t"] == "goodbye":
                    goodbyes.append(protocol.parse_goodbye(header))
            stall = time.monotonic() - t0
            s.close()
        finally:
            ctx.term()
        assert p.procs["p0"].wait(timeout=30) == 0
    print(
        f"SIGTERM to final goodbye: {stall:.2f} s; {len(received)} frames delivered, "
        f"{len(goodbyes[0][1].get(11, []))} handed back at once"
    )
    (first_final, first_dropped), (last_final, _) = goodbyes[0], goodbyes[-1]
    assert not first_final and last_final
    handed_back = set(first_dropped[11])
    assert handed_back and not handed_back & received
    assert handed_back | received == set(range(200)), "every frame asked for is either delivered or handed back"
    assert "shut down after" in p.log("p0")


# -- a frozen consumer beside a normal one (real processes) -------------------------------------------------
FROZEN = """
import sys
from pxdbg.consumer import BackgroundClient
with BackgroundClient([sys.argv[1]], seed=99, prefetch=int(sys.argv[2]), connect_timeout=60) as c:
    c.next()
    print("started", flush=True)
    while True:
        c.next()
"""


def _b_run(ep: str, n: int) -> tuple[float, float]:
    waits = []
    with BackgroundClient([ep], seed=7, prefetch=8, connect_timeout=60) as client:
        client.wait_for_producers(timeout=60)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            client.next()
            waits.append(time.perf_counter() - t)
        return time.perf_counter() - t0, float(np.percentile(waits, 99))


@pytest.mark.slow
def test_a_frozen_consumer_does_not_stall_another(tmp_path):
    """Consumer A (prefetch 400) frozen with SIGSTOP, as a batch system's suspend does; consumer B still gets
    all its frames. Before per-consumer queues, B never finished while A was frozen."""
    with producers(tmp_path) as p:
        ep = p.start("p0", "--max-batch", "8")
        alone, alone_p99 = _b_run(ep, 60)
        a = subprocess.Popen([sys.executable, "-c", FROZEN, ep, "400"], stdout=subprocess.PIPE, text=True)
        try:
            assert a.stdout.readline().strip() == "started"
            time.sleep(2.0)  # A's window fills and its frames pile up in its pipe
            a.send_signal(signal.SIGSTOP)
            assert wait_until(lambda: _state(a.pid) == "T", 10)
            beside, beside_p99 = _b_run(ep, 60)
            assert _state(a.pid) == "T", "A stayed frozen while B ran"
        finally:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.wait(timeout=30)
            a.stdout.close()
    print(
        f"consumer B, 60 frames: alone {alone:.2f} s (p99 wait {1e3 * alone_p99:.0f} ms); beside a frozen consumer "
        f"with prefetch 400: {beside:.2f} s (p99 wait {1e3 * beside_p99:.0f} ms)"
    )


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
