"""Endpoint strings: static lists, rendezvous directories (real files, real threads), DNS names."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time

import pytest

from pxdbg.shared import discovery
from pxdbg.shared.errors import ConfigError, PxdbgError


def test_static_forms_mix_and_normalise():
    src = discovery.parse(" tcp://gpu01:5555, ipc:///tmp/p.sock,tcp://[::1]:7000 ,")
    assert src.resolve() == ["tcp://gpu01:5555", "ipc:///tmp/p.sock", "tcp://[::1]:7000"]
    assert not src.dynamic
    assert src.refresh_interval == math.inf
    assert discovery.parse(["tcp://a:1,tcp://b:2", "tcp://a:1"]).resolve() == ["tcp://a:1", "tcp://b:2"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no producer endpoints"),
        (" , ", "no producer endpoints"),
        ("gpu01:5555", "unknown form"),
        ("http://gpu01:5555", "unknown form"),
        ("tcp://gpu01", "host:port"),
        ("tcp://gpu01:0", "not in 1..65535"),
        ("tcp://gpu01:70000", "not in 1..65535"),
        ("tcp://*:5555", "names no host"),
        ("dns://farm.example:x", "host:port"),
        ("dir:", "names no directory"),
        ("ipc://", "names no socket path"),
    ],
)
def test_bad_strings_are_one_line_config_errors(text, words):
    with pytest.raises(ConfigError, match=words) as info:
        discovery.parse(text)
    assert isinstance(info.value, PxdbgError)
    assert "\n" not in str(info.value)


def test_parse_rejects_non_strings():
    with pytest.raises(ConfigError, match="string or a list"):
        discovery.parse(5555)


def test_register_resolve_close(tmp_path):
    rdv = tmp_path / "rdv" / "farm"  # created by the first registration
    src = discovery.parse(f"dir:{rdv}")
    assert src.dynamic and src.refresh_interval == discovery.DIR_REFRESH
    assert src.resolve() == []  # not there yet: no producers, no error
    with discovery.register(rdv, "tcp://10.0.0.2:5555", "parametric:abc/fp32", {"device": "cpu"}) as reg:
        assert reg.path.exists()
        assert src.resolve() == ["tcp://10.0.0.2:5555"]
        with discovery.register(rdv, "tcp://10.0.0.3:5555", "parametric:abc/fp32"):
            assert src.resolve() == ["tcp://10.0.0.2:5555", "tcp://10.0.0.3:5555"]  # joined mid-run
        assert src.resolve() == ["tcp://10.0.0.2:5555"]  # left: its file is gone
        entry = json.loads(reg.path.read_text())
        assert entry["identity"] == "parametric:abc/fp32"
        assert entry["info"] == {"device": "cpu"}
    assert not reg.path.exists()
    assert src.resolve() == []


def test_heartbeat_refreshes_the_entry(tmp_path):
    with discovery.register(tmp_path, "tcp://10.0.0.2:5555", "x", interval=0.05) as reg:
        first = json.loads(reg.path.read_text())["heartbeat"]
        later = first
        for _ in range(200):
            time.sleep(0.02)
            later = json.loads(reg.path.read_text())["heartbeat"]
            if later > first:
                break
        assert later > first


def test_stale_malformed_and_temporary_files_are_ignored(tmp_path):
    now = time.time()

    def write(name, **entry):
        (tmp_path / name).write_text(json.dumps(entry))

    write("fresh.json", endpoint="tcp://10.0.0.2:1", heartbeat=now, interval=2.0)
    write("stale.json", endpoint="tcp://10.0.0.3:1", heartbeat=now - 7.0, interval=2.0)  # > 3 intervals
    write("wide.json", endpoint="tcp://10.0.0.4:1", heartbeat=now - 7.0, interval=10.0)  # its own interval
    write("dns.json", endpoint="dns://farm:1", heartbeat=now, interval=2.0)  # not a concrete endpoint
    write("noport.json", endpoint="tcp://10.0.0.5", heartbeat=now, interval=2.0)
    write("nobeat.json", endpoint="tcp://10.0.0.6:1", interval=2.0)
    write(".fresh.json.tmp123", endpoint="tcp://10.0.0.7:1", heartbeat=now, interval=2.0)
    (tmp_path / "half.json").write_text('{"endpoint": "tcp://10.0.0.8:1", "heartb')
    (tmp_path / "notes.txt").write_text("not an entry")
    (tmp_path / "huge.json").write_text(" " * (discovery.MAX_ENTRY_BYTES + 1))
    entries = {e["endpoint"]: e["stale"] for e in discovery.read_directory(tmp_path, now=now)}
    assert entries == {"tcp://10.0.0.2:1": False, "tcp://10.0.0.3:1": True, "tcp://10.0.0.4:1": False}
    assert discovery.parse(f"dir:{tmp_path}").resolve() == ["tcp://10.0.0.2:1", "tcp://10.0.0.4:1"]


def test_a_reader_never_sees_half_an_entry(tmp_path):
    with discovery.register(tmp_path, "tcp://10.0.0.2:5555", "x", {"pad": "y" * 20000}, interval=0.001) as reg:
        reads = 0
        for _ in range(2000):
            json.loads(reg.path.read_text())  # raises on a torn file
            reads += 1
    assert reads == 2000
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_an_unreadable_directory_keeps_the_last_list(tmp_path):
    rdv = tmp_path / "rdv"
    src = discovery.parse(f"dir:{rdv}")
    reg = discovery.register(rdv, "tcp://10.0.0.2:5555", "x")
    assert src.resolve() == ["tcp://10.0.0.2:5555"]
    reg.close()
    rdv.rmdir()  # the shared filesystem went away
    assert src.resolve() == ["tcp://10.0.0.2:5555"]
    rdv.mkdir()  # it is back, empty
    assert src.resolve() == []


def test_register_refuses_unconnectable_endpoints(tmp_path):
    with pytest.raises(ConfigError, match="names no host"):
        discovery.register(tmp_path, "tcp://*:5555", "x")
    with pytest.raises(ConfigError, match="concrete"):
        discovery.register(tmp_path, f"dir:{tmp_path}", "x")
    with pytest.raises(ConfigError, match="positive"):
        discovery.register(tmp_path, "tcp://h:1", "x", interval=0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the rendezvous directory"):
        discovery.register(blocker / "rdv", "tcp://h:1", "x")


def test_dns_names_through_the_resolver():
    src = discovery.parse("dns://localhost:5555")
    assert src.dynamic and src.refresh_interval == discovery.DNS_REFRESH
    found = src.resolve()
    assert found and set(found) <= {"tcp://127.0.0.1:5555", "tcp://[::1]:5555"}


def _infos(*addrs):
    return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 7)) for a in addrs]


def test_dns_changes_failures_and_hangs(monkeypatch):
    answers = [_infos("10.0.0.2", "10.0.0.3", "10.0.0.2")]
    release = threading.Event()

    def fake(name, port, *args, **kw):
        assert (name, port) == ("producers.farm.test", 7)
        answer = answers[-1]
        if answer == "hang":
            release.wait(30)
            return _infos("10.0.0.9")
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(discovery.socket, "getaddrinfo", fake)
    src = discovery.parse("dns://producers.farm.test:7")
    src.entries[0].timeout = 0.2
    assert src.resolve() == ["tcp://10.0.0.2:7", "tcp://10.0.0.3:7"]
    answers.append(_infos("10.0.0.3", "10.0.0.4", "fd00::5"))
    assert src.resolve() == ["tcp://10.0.0.3:7", "tcp://10.0.0.4:7", "tcp://[fd00::5]:7"]
    answers.append(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    assert src.resolve() == ["tcp://10.0.0.3:7", "tcp://10.0.0.4:7", "tcp://[fd00::5]:7"]
    answers.append("hang")
    assert src.resolve() == ["tcp://10.0.0.3:7", "tcp://10.0.0.4:7", "tcp://[fd00::5]:7"]  # bounded: timed out
    assert src.resolve() == ["tcp://10.0.0.3:7", "tcp://10.0.0.4:7", "tcp://[fd00::5]:7"]  # no second lookup
    release.set()
    src.entries[0]._pending.join(10)
    assert src.resolve() == ["tcp://10.0.0.9:7"]  # the late answer is taken up


def test_mixed_sources_resolve_in_order(tmp_path):
    with discovery.register(tmp_path, "tcp://10.0.0.2:5555", "x"):
        src = discovery.parse(f"tcp://gpu01:1,dir:{tmp_path},tcp://10.0.0.2:5555")
        assert src.dynamic and src.refresh_interval == discovery.DIR_REFRESH
        assert src.resolve() == ["tcp://gpu01:1", "tcp://10.0.0.2:5555"]
        assert str(src) == f"tcp://gpu01:1,dir:{tmp_path},tcp://10.0.0.2:5555"


def test_module_command(tmp_path, capsys):
    with discovery.register(tmp_path, "tcp://10.0.0.2:5555", "x"):
        assert discovery.main([f"tcp://a:1,dir:{tmp_path}"]) == 0
    assert capsys.readouterr().out.split() == ["tcp://a:1", "tcp://10.0.0.2:5555"]
    assert discovery.main(["bogus"]) == 2
    assert "unknown form" in capsys.readouterr().err


@pytest.mark.slow
def test_produce_register_and_farm_status(tmp_path):
    """A real producer registers its endpoint; ``pxdbg farm status dir:`` finds it and asks it over the protocol."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rdv = tmp_path / "rdv"
    log = open(tmp_path / "producer.log", "wb")
    producer = subprocess.Popen(
        [sys.executable, "-m", "pxdbg", "produce", "--bind", f"tcp://127.0.0.1:{port}", "--register", str(rdv)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        src = discovery.parse(f"dir:{rdv}")
        for _ in range(600):
            if src.resolve() or producer.poll() is not None:
                break
            time.sleep(0.1)
        assert src.resolve() == [f"tcp://127.0.0.1:{port}"], (tmp_path / "producer.log").read_text()
        out = subprocess.run(
            [sys.executable, "-m", "pxdbg", "farm", "status", f"dir:{rdv},tcp://127.0.0.1:1", "--timeout", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split() == ["address", "identity", "device", "consumers", "frames/s", "pending", "uptime"]
        row = lines[1].split()
        assert row[0] == f"tcp://127.0.0.1:{port}" and row[1].startswith("parametric:") and row[2] == "cpu"
        assert lines[2].split() == ["tcp://127.0.0.1:1", "no", "answer"]
        assert lines[3].startswith("1 of 2 producer(s) answered")
    finally:
        producer.terminate()
        producer.wait(timeout=30)
    assert producer.returncode == 0
    assert list(rdv.iterdir()) == []  # the entry went with the producer


def test_farm_status_bad_endpoint_is_one_line():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pxdbg", "farm", "status", "gpu01"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown form" in out.stderr


def _resolve_within(source, seconds: float) -> list[str]:
    """resolve() in a thread: a blocking open() shows as a timeout here instead of hanging the suite."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(source.resolve()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"resolve() blocked for more than {seconds} s"
    return result[0]


def test_fifos_links_out_huge_files_and_lying_entries_never_block_or_stay_fresh(tmp_path):
    """Rows: a FIFO named x.json hung resolve() forever (every consumer of the directory with it); entries with
    interval 1e308 or a heartbeat 1e9 s in the future never went stale."""
    rdv, outside = tmp_path / "rdv", tmp_path / "outside"
    rdv.mkdir()
    outside.mkdir()
    now = time.time()

    def entry(endpoint, **kw):
        return json.dumps({"endpoint": endpoint, "heartbeat": now, "interval": 2.0, **kw})

    (rdv / "good.json").write_text(entry("tcp://10.0.0.2:1"))
    os.mkfifo(rdv / "fifo.json")
    (outside / "secret.json").write_text(entry("tcp://10.0.0.3:1"))
    os.symlink(outside / "secret.json", rdv / "out.json")  # a link out of the directory
    (rdv / "..2024_01").mkdir()
    (rdv / "..2024_01" / "swap.json").write_text(entry("tcp://10.0.0.4:1"))
    os.symlink("..2024_01", rdv / "..data")  # a kubelet-style atomic swap: links inside the directory, followed
    os.symlink("..data/swap.json", rdv / "swap.json")
    with open(rdv / "sparse.json", "wb") as f:  # 10 GB that cost nothing on disk
        f.truncate(10 * 2**30)
    os.symlink("/dev/zero", rdv / "zero.json")
    (rdv / "forever.json").write_text(entry("tcp://10.0.0.5:1", heartbeat=now - 1e6, interval=1e308))
    (rdv / "future.json").write_text(entry("tcp://10.0.0.6:1", heartbeat=now + 1e9))
    (rdv / "inf.json").write_text(entry("tcp://10.0.0.7:1", interval=float("inf")).replace("Infinity", "1e999"))
    t0 = time.monotonic()
    found = _resolve_within(discovery.parse(f"dir:{rdv}"), 10)
    elapsed = time.monotonic() - t0
    assert found == ["tcp://10.0.0.2:1", "tcp://10.0.0.4:1"], found
    entries = {e["endpoint"]: e for e in discovery.read_directory(rdv)}
    assert entries["tcp://10.0.0.5:1"]["stale"] and entries["tcp://10.0.0.5:1"]["interval"] == 600.0
    assert entries["tcp://10.0.0.6:1"]["stale"]
    assert elapsed < 2.0, f"resolve took {elapsed:.1f} s"


def test_1500_entries_never_crash_a_consumer_and_the_subset_is_said_once(tmp_path, caplog):
    """Row: 1,500 fresh entries for ports nobody serves crashed every consumer with 'Too many open files' (a
    DEALER and a monitor socket per entry; libzmq allows 1,023 sockets per context). Now a consumer holds at
    most max_producers of them, walks past the refused ones and says once how many of how many it uses."""
    from pipeline_helpers import FakeProducer, synthetic_frame
    from pxdbg.consumer import BackgroundClient
    from pxdbg.shared.spec import ProducerSpec

    rdv = tmp_path / "rdv"
    rdv.mkdir()
    now = time.time()
    for port in range(20000, 21500):  # nobody listens there (tcp, so each also gets a monitor socket)
        (rdv / f"p{port}.json").write_text(
            json.dumps({"endpoint": f"tcp://127.0.0.1:{port}", "heartbeat": now + 30, "interval": 60.0})
        )
    real = f"ipc://{tmp_path}/real.sock"
    (rdv / "real.json").write_text(json.dumps({"endpoint": real, "heartbeat": now + 30, "interval": 60.0}))
    identity = ProducerSpec().identity()
    caplog.set_level("INFO", logger="pxdbg.consumer")
    # 64 at a time: every dead port is refused within a pass or two, so the one real producer is found in seconds
    with FakeProducer(real, identity, delay=0.002):
        with BackgroundClient(
            f"dir:{rdv}", seed=5, prefetch=4, connect_timeout=60, heartbeat_interval=0.2, max_producers=64
        ) as c:
            got = [c.next() for _ in range(5)]
            counters = dict(c.counters)
    assert all(a == synthetic_frame(5, i) for i, a in enumerate(got))
    assert counters["producers_known"] == 1501 and counters["subset_size"] == 64
    assert counters["most_producers_held"] == 64, counters
    lines = [r.getMessage() for r in caplog.records if "max_producers" in r.getMessage()]
    assert lines == [f"using 64 of 1501 producers at dir:{rdv} (max_producers)"], lines
