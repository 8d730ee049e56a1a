"""`pxdbg farm status` and its protocol client (`pxdbg.consumer.status`), against a real producer process, a real
CURVE producer, and raw ZeroMQ peers that answer `status` with hostile snapshots."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import threading

import pytest
import zmq
from ops_helpers import PXDBG, producer_process

from pxdbg.consumer.status import ask_status, check_snapshot, printable
from pxdbg.shared import protocol
from pxdbg.shared.spec import TransportOptions

pytestmark = pytest.mark.timeout(120)

GOOD = {
    "identity": "parametric@8f02cf77526a/fp32",
    "host": "gpu01",
    "pid": 4242,
    "device": "cpu",
    "endpoints": ["tcp://*:5555"],
    "uptime_s": 12.5,
    "ready": True,
    "last_progress_s": 0.25,
    "consumers": 3,
    "pending": 7,
    "counters": {"frames_sent": 117},
    "histograms": {"batch_size": {"buckets": [1, 2], "counts": [2, 5, 5], "sum": 8, "count": 5}},
}


def snapshot_reply(**changes) -> list[bytes]:
    return [protocol.pack({"t": protocol.SNAPSHOT, "snapshot": {**GOOD, **changes}})]


@contextlib.contextmanager
def raw_producers(replies: dict[str, list[bytes]]):
    """One ROUTER on a loopback port per entry, answering every message with the entry's parts; yields
    name -> endpoint. Torn down (thread joined, sockets closed) on the way out."""
    ctx = zmq.Context()
    socks, endpoints = {}, {}
    for name, parts in replies.items():
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        socks[sock], endpoints[name] = parts, f"tcp://127.0.0.1:{port}"
    stop = threading.Event()

    def serve() -> None:
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            for sock, _ in poller.poll(50):
                cid, *_ = sock.recv_multipart()
                sock.send_multipart([cid, *socks[sock]])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield endpoints
    finally:
        stop.set()
        thread.join(10)
        for sock in socks:
            sock.close(0)
        ctx.term()


HOSTILE = {
    "good": snapshot_reply(),
    "counters_list": snapshot_reply(counters=[1, 2]),
    "uptime_text": snapshot_reply(uptime_s="forever"),
    "uptime_nan": snapshot_reply(uptime_s=math.nan),
    "huge_identity": snapshot_reply(identity="A" * (6 * 1024 * 1024)),
    # beyond the consumer sockets' part bound (shared/transport.py): libzmq drops it, so it is a producer that
    # does not answer, never a 15 MB row
    "oversized": snapshot_reply(identity="A" * (15 * 1024 * 1024)),
    "escapes": snapshot_reply(identity="\x1b[2J\x1b]0;owned\x07evil", counters={"a\x1b[31m": 1}),
    "error": [protocol.pack({"t": protocol.ERROR, "msg": "busy \x1b[5m now"})],
    "not_msgpack": [b"\xc1\xc1\xc1"],
    "two_parts": [*snapshot_reply(), b"extra"],
    "welcome_instead": [protocol.pack({"t": "pong"})],
}


def test_one_hostile_producer_is_one_bad_row():
    with raw_producers(HOSTILE) as eps:
        replies = ask_status(list(eps.values()), timeout=5)  # the oversized one never answers: all of it is waited
    by_name = {name: ep for name, ep in eps.items()}
    assert set(replies) == {by_name["good"], by_name["huge_identity"], by_name["escapes"]}
    assert replies[by_name["good"]] == GOOD
    identity = replies[by_name["huge_identity"]]["identity"]
    assert len(identity) == 256 and identity.endswith("...")
    escaped = replies[by_name["escapes"]]
    assert escaped["identity"] == "?[2J?]0;owned?evil" and list(escaped["counters"]) == ["a?[31m"]
    bad = {name: replies.bad.get(ep, "") for name, ep in eps.items()}
    assert "'counters' must be a map" in bad["counters_list"]
    assert "uptime_s" in bad["uptime_text"] and "uptime_s" in bad["uptime_nan"]
    assert bad["error"] == "error: busy ?[5m now"
    assert "not valid msgpack" in bad["not_msgpack"] and "2 parts" in bad["two_parts"]
    assert "instead of a snapshot" in bad["welcome_instead"]
    assert by_name["oversized"] not in replies and by_name["oversized"] not in replies.bad
    assert not replies.refused


def test_the_command_prints_every_row_and_nothing_a_terminal_acts_on(tmp_path):
    with raw_producers(HOSTILE) as eps:
        proc = subprocess.run(
            [*PXDBG, "farm", "status", ",".join(eps.values()), "--timeout", "5", "--interval", "0"],
            capture_output=True,
            timeout=60,
        )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "\x1b" not in out + err and "\x07" not in out
    assert len(out) < 20_000, "a 15 MB identity is cut, not printed"
    assert f"3 of {len(HOSTILE)} producer(s) answered" in out and f"{len(HOSTILE) - 4} bad reply" in out
    for name in ("counters_list", "uptime_nan", "not_msgpack"):
        assert f"{eps[name]}: bad reply: " in out


def test_check_snapshot_bounds_every_field():
    assert printable("ok\u202etxt\x9b", 100) == "ok?txt?"  # a bidi override and a C1 CSI
    with pytest.raises(protocol.ProtocolError, match="last_progress_s"):
        check_snapshot({**GOOD, "last_progress_s": -1.0})
    with pytest.raises(protocol.ProtocolError, match="finite"):
        check_snapshot(
            {**GOOD, "histograms": {"h": {"buckets": [math.inf, 1], "counts": [0, 0, 0], "sum": 0, "count": 0}}}
        )
    with pytest.raises(protocol.ProtocolError, match="a map"):
        check_snapshot(["not", "a", "map"])
    assert "extra" not in check_snapshot({**GOOD, "extra": "x" * 10_000}), "undocumented fields are dropped"


def test_a_real_producer_as_json_and_watched(tmp_path, python_env):
    with producer_process(tmp_path / "producer.log", python_env) as (endpoint, _, _proc):
        proc = subprocess.run(
            [*PXDBG, "farm", "status", endpoint, "--json", "--interval", "0.2"], capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr.decode()
        (row,) = json.loads(proc.stdout)["producers"]
        assert row["state"] == "answered" and row["snapshot"]["identity"].startswith("parametric:")
        assert row["snapshot"]["counters"]["refused_unknown_key"] == 0

        with subprocess.Popen(
            [*PXDBG, "farm", "status", endpoint, "--json", "--watch", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as watcher:
            try:
                looks = [json.loads(watcher.stdout.readline()) for _ in range(3)]
                watcher.send_signal(signal.SIGINT)
                assert watcher.wait(timeout=30) == 130
            finally:
                if watcher.poll() is None:
                    watcher.kill()
                    watcher.wait(timeout=10)
    assert [look["producers"][0]["state"] for look in looks] == ["answered"] * 3
    assert looks[0]["time"] < looks[1]["time"] < looks[2]["time"]


def test_a_curve_refusal_is_shown_as_refused(tmp_path, python_env):
    for name in ("producer", "alice", "mallory"):
        subprocess.run([*PXDBG, "keys", "new", name, "--dir", str(tmp_path)], check=True, timeout=60)
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
    server = ["--curve-server-secret", str(tmp_path / "producer.key_secret"), "--curve-allow-dir", str(allow)]
    with producer_process(tmp_path / "producer.log", python_env, *server) as (endpoint, _, _proc):
        replies = ask_status([endpoint], 10, TransportOptions())
        assert endpoint in replies.refused and "requires CURVE keys" in replies.refused[endpoint]

        def status(client: str) -> subprocess.CompletedProcess:
            keys = [
                f"--curve-client-secret={tmp_path / client}.key_secret",
                f"--curve-server-public={tmp_path / 'producer.key'}",
            ]
            cmd = [*PXDBG, "farm", "status", endpoint, "--timeout", "10", "--interval", "0", *keys]
            return subprocess.run(cmd, capture_output=True, timeout=60, env=python_env)

        refused, allowed = status("mallory"), status("alice")
    out = refused.stdout.decode()
    assert refused.returncode == 1 and f"{endpoint}: refused: " in out and "allow-list does not hold" in out
    assert "0 of 1 producer(s) answered" in out and "1 refused" in out and "silent" not in out
    assert allowed.returncode == 0 and "1 of 1 producer(s) answered" in allowed.stdout.decode()
