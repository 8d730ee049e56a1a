"""The consumer uses a bounded subset of the producers its endpoints resolve to (pxdbg.consumer.subset, wired in).

Real sockets and processes: a rendezvous directory of 1,500 entries of which 3 are real producers, a static list
of fake producers some of which misbehave; the subset's key and bounds from the environment without sockets.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from pipeline_helpers import FakeProducer, producers, synthetic_frame, wait_until
from pxdbg import models
from pxdbg.consumer import BackgroundClient, ClientOptions
from pxdbg.consumer.options import MAX_PRODUCERS_LIMIT, WHOLE_FARM, consumer_key
from pxdbg.consumer.subset import DEFAULT_MAX_PRODUCERS, Subset
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.spec import ProducerSpec

pytestmark = pytest.mark.timeout(240)
SEED = 31337


# -- socket-free: the consumer's key and the bounds ----------------------------------------------------------
def test_the_key_comes_from_the_environment_slurm_or_the_process():
    assert consumer_key({"PXDBG_CONSUMER_KEY": "job-7", "SLURM_ARRAY_JOB_ID": "1"}) == "job-7"
    assert consumer_key({"SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-812-3"
    host_pid = consumer_key({"SLURM_ARRAY_JOB_ID": "812"})  # no task id: not an array task
    assert host_pid.endswith(f":{os.getpid()}")
    assert ClientOptions(subset_key="mine").subset_key == "mine"
    assert ClientOptions().max_producers is None  # the default: a small farm whole, a large one in subsets


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"PXDBG_CONSUMER_KEY": ""}, "PXDBG_CONSUMER_KEY must be 1..200"),
        ({"PXDBG_CONSUMER_KEY": "a b"}, "PXDBG_CONSUMER_KEY must be"),
        ({"PXDBG_CONSUMER_KEY": "x" * 5000}, "got 'xxxxxxxx"),
        ({"SLURM_ARRAY_JOB_ID": "1;rm", "SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_JOB_ID/SLURM_ARRAY_TASK_ID must"),
    ],
)
def test_a_bad_key_is_one_short_line(environ, words):
    with pytest.raises(ConfigError, match=words) as info:
        consumer_key(environ)
    text = str(info.value)
    assert "\n" not in text and len(text) < 200, text


def test_a_bad_key_or_too_many_producers_fail_before_any_socket(monkeypatch):
    monkeypatch.setenv("PXDBG_CONSUMER_KEY", "no\nnewlines")
    with pytest.raises(ConfigError, match="PXDBG_CONSUMER_KEY"):
        BackgroundClient("tcp://127.0.0.1:9", seed=1)
    with pytest.raises(ConfigError, match="subset_key"):
        ClientOptions(subset_key=7)
    with pytest.raises(ConfigError, match=f"at most {MAX_PRODUCERS_LIMIT}"):
        ClientOptions(subset_key="k", max_producers=MAX_PRODUCERS_LIMIT + 1)


# -- real sockets ----------------------------------------------------------------------------------------------
def _write_entry(rdv, name: str, endpoint: str, now: float) -> None:
    # fresh for a minute whatever the test's pace (the consumer re-reads the directory every second)
    (rdv / f"{name}.json").write_text(json.dumps({"endpoint": endpoint, "heartbeat": now + 30, "interval": 60.0}))


class FdWatch(threading.Thread):
    """The most file descriptors this process held while it ran (sampled every 20 ms)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.most = self.count()
        self.stop = threading.Event()

    @staticmethod
    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.most = max(self.most, self.count())


@pytest.mark.slow  # walks two hundred dead entries or more in real time
def test_1500_entries_of_which_3_are_real_give_identical_frames(tmp_path):
    """The issue's case: a directory of 1,500 fresh entries, 1,497 where nothing listens (1,447 ipc paths without
    a socket, 50 closed loopback ports: each costs up to the probe's 2 s where the socket monitor is slow to say
    "refused", so they bound the walk's time) and 3 real producers. The consumer walks past the dead ones, never holds
    more than max_producers of them and hands out the frames ``generate`` makes."""
    events = 40
    reference = models.load("parametric").frames(SEED, range(events))
    rdv = tmp_path / "rdv"
    rdv.mkdir()
    now = time.time()
    for i in range(1447):
        _write_entry(rdv, f"dead{i}", f"ipc://{tmp_path}/dead{i}.sock", now)
    for port in range(21600, 21650):
        _write_entry(rdv, f"closed{port}", f"tcp://127.0.0.1:{port}", now)
    with producers(tmp_path) as p:
        real = [p.start(f"real{i}") for i in range(3)]
        # a producer registers once it listens: so do these
        assert wait_until(lambda: all(os.path.exists(ep[len("ipc://") :]) for ep in real), 60), p.log("real0")
        for i, ep in enumerate(real):
            _write_entry(rdv, f"real{i}", ep, now)
        # the walk takes time in proportion to the dead entries ranked before the first live one (up to two are
        # probed per pass of the consumer's loop): a key whose first live producer ranks 200th-400th makes it walk
        # two hundred dead entries or more in a bounded time, whatever the temporary path in the endpoints
        key, first_real = next(
            (k, r)
            for k in (f"job-1500-{n}" for n in range(1000))
            if 200 <= (r := min(i for i, ep in enumerate(_ranked(rdv, k)) if ep in real)) < 400
        )
        fds = FdWatch()
        fds.start()
        t0 = time.monotonic()
        try:
            with BackgroundClient(f"dir:{rdv}", seed=SEED, subset_key=key, connect_timeout=120) as client:
                got = [client.next() for _ in range(events)]
                counters = dict(client.counters)
                per_producer = dict(client.frames_per_producer)
        finally:
            fds.stop.set()
            fds.join(5)
        elapsed = time.monotonic() - t0
    print(
        f"\n1,500 entries, 3 real (the first ranked {first_real + 1}th for this consumer): {events} frames in "
        f"{elapsed:.1f} s; at most {counters['most_producers_held']} producers held, {fds.most - fds.count()} file "
        f"descriptors above the baseline at most; {counters.get('subset_probes_failed', 0)} probes failed, "
        f"{counters['subset_changes']} members changed; frames from {sorted(per_producer.values())}"
    )
    assert all(a == b for a, b in zip(got, reference, strict=True))
    assert set(per_producer) <= set(real)
    assert counters["producers_known"] == 1500
    assert counters["most_producers_held"] <= DEFAULT_MAX_PRODUCERS
    assert counters["subset_size"] == DEFAULT_MAX_PRODUCERS
    # holding every entry would cost thousands (a DEALER's mailbox, a monitor, a connection each)
    assert fds.most - fds.count() < 200, fds.most


def _endpoints(rdv) -> list[str]:
    return [json.loads(f.read_text())["endpoint"] for f in rdv.iterdir()]


def _ranked(rdv, key: str) -> list[str]:
    """Every endpoint of ``rdv`` in the order a consumer with ``key`` ranks them."""
    eps = _endpoints(rdv)
    return Subset(len(eps), key=key, seed=SEED).choose(eps, 0.0)


def test_misbehaving_members_are_replaced_and_the_frames_stay_the_same(tmp_path):
    """Six fakes on a static list, three of which answer every request with an error; a consumer of two at a
    time quarantines each bad one it meets, uses the next in its ranking instead and still hands out the
    stream's frames, never holding more than two."""
    identity = ProducerSpec().identity()
    eps = [f"ipc://{tmp_path}/f{i}.sock" for i in range(6)]
    kinds = ["error", "good", "error", "good", "error", "good"]
    fakes = [FakeProducer(ep, identity, kind, delay=0.001) for ep, kind in zip(eps, kinds)]
    try:
        for f in fakes:
            f.start()

        # the bad ones ranked before the second good one are each met (and quarantined) before the run settles;
        # the ranking depends on the temporary path in the endpoints: a key that ranks a bad one first is taken
        def bad_before_second_good(key: str) -> int:
            ranked = Subset(6, key=key, seed=5).choose(eps, 0.0)
            good_at = [i for i, ep in enumerate(ranked) if kinds[eps.index(ep)] == "good"]
            return sum(kinds[eps.index(ep)] == "error" for ep in ranked[: good_at[1]])

        key = next(k for k in (f"k{n}" for n in range(1000)) if bad_before_second_good(k) >= 1)
        bad_first = bad_before_second_good(key)
        with BackgroundClient(eps, seed=5, prefetch=4, max_producers=2, subset_key=key, connect_timeout=30) as c:
            got = [c.next() for _ in range(30)]
            counters = dict(c.counters)
            used = dict(c.frames_per_producer)
    finally:
        for f in fakes:
            f.close()
    assert all(a == synthetic_frame(5, i) for i, a in enumerate(got))
    assert all(kinds[eps.index(ep)] == "good" for ep in used), used
    assert counters["most_producers_held"] <= 2
    assert bad_first >= 1 and counters["producers_quarantined"] >= bad_first, (bad_first, counters)
    assert counters["subset_changes"] >= counters["producers_quarantined"], counters


def test_the_subset_is_the_one_the_policy_chooses_and_the_same_for_the_same_key(tmp_path):
    identity = ProducerSpec().identity()
    eps = [f"ipc://{tmp_path}/g{i}.sock" for i in range(12)]
    fakes = [FakeProducer(ep, identity, delay=0.001) for ep in eps]
    try:
        for f in fakes:
            f.start()
        held = []
        for _ in range(2):
            with BackgroundClient(eps, seed=9, prefetch=4, max_producers=3, subset_key="job-42") as c:
                assert [c.next() for _ in range(6)] == [synthetic_frame(9, i) for i in range(6)]
                held.append(sorted(c.endpoints))
                counters = dict(c.counters)
        with BackgroundClient(eps, seed=9, prefetch=4, max_producers=3, subset_key="job-43") as c:
            c.next()
            other = sorted(c.endpoints)
        with BackgroundClient(eps[:WHOLE_FARM], seed=9, prefetch=4, subset_key="job-43") as c:
            c.next()
            small = sorted(c.endpoints)
        with BackgroundClient(eps[: WHOLE_FARM + 1], seed=9, prefetch=4, subset_key="job-43") as c:
            c.next()
            large = sorted(c.endpoints)
    finally:
        for f in fakes:
            f.close()
    assert held[0] == held[1] == sorted(Subset(3, key="job-42", seed=9).choose(eps, 0.0))
    assert other == sorted(Subset(3, key="job-43", seed=9).choose(eps, 0.0))
    assert small == sorted(eps[:WHOLE_FARM]), "a farm of up to WHOLE_FARM producers is used whole by default"
    assert large == sorted(Subset(DEFAULT_MAX_PRODUCERS, key="job-43", seed=9).choose(eps[: WHOLE_FARM + 1], 0.0))
    assert counters["subset_size"] == 3 and counters["producers_known"] == 12 and counters["subset_changes"] == 0


def test_a_draining_member_is_replaced_once_its_entry_goes_and_frames_stay_the_same(tmp_path):
    """The consumer's first-ranked producer drains after 5 frames and its rendezvous entry goes (as a producer's
    does when it shuts down): its dropped frames go to the others, the next in the ranking takes its place, and
    the stream is unchanged; the consumer never holds more than its two."""
    identity = ProducerSpec().identity()
    rdv = tmp_path / "rdv"
    rdv.mkdir()
    eps = [f"ipc://{tmp_path}/d{i}.sock" for i in range(8)]
    ranked = Subset(8, key="drain", seed=3).choose(eps, 0.0)
    now = time.time()
    for i, ep in enumerate(eps):
        _write_entry(rdv, f"d{i}", ep, now)
    fakes = [FakeProducer(ep, identity, "drain" if ep == ranked[0] else "good", delay=0.005, after=5) for ep in eps]
    try:
        for f in fakes:
            f.start()
        with BackgroundClient(
            f"dir:{rdv}", seed=3, prefetch=4, max_producers=2, subset_key="drain", heartbeat_interval=0.1
        ) as c:
            got = []
            while fakes[eps.index(ranked[0])].drained_at is None and len(got) < 200:  # it drains after its 5th
                got.append(c.next())
            (rdv / f"d{eps.index(ranked[0])}.json").unlink()
            got += [c.next() for _ in range(50)]
            assert wait_until(lambda: ranked[0] not in c.endpoints, 10), c.producer_report()
            got += [c.next() for _ in range(10)]
            counters, used, held = dict(c.counters), dict(c.frames_per_producer), sorted(c.endpoints)
    finally:
        for f in fakes:
            f.close()
    assert len(got) < 260 and got == [synthetic_frame(3, i) for i in range(len(got))]
    assert counters["producers_draining"] >= 1 and counters["most_producers_held"] <= 2, counters
    assert held == sorted(ranked[1:3]), (held, ranked)
    assert set(used) <= set(ranked[:3]), used


def test_a_farm_that_grows_past_whole_farm_is_used_in_subsets_until_it_shrinks_to_half(tmp_path):
    """Without max_producers: nine producers are used two at a time; one leaving (eight) changes nothing, so a
    restart in a farm of nine costs no connections; at half of WHOLE_FARM the farm is used whole again."""
    identity = ProducerSpec().identity()
    rdv = tmp_path / "rdv"
    rdv.mkdir()
    n = WHOLE_FARM + 1
    eps = [f"ipc://{tmp_path}/h{i}.sock" for i in range(n)]
    now = time.time()
    for i, ep in enumerate(eps):
        _write_entry(rdv, f"h{i}", ep, now)
    fakes = [FakeProducer(ep, identity, delay=0.001) for ep in eps]
    try:
        for f in fakes:
            f.start()
        with BackgroundClient(f"dir:{rdv}", seed=4, prefetch=4, subset_key="grow") as c:
            got = [c.next() for _ in range(5)]
            assert len(c.endpoints) == DEFAULT_MAX_PRODUCERS
            for i in range(n - WHOLE_FARM // 2):  # down to half of WHOLE_FARM, one entry at a time
                (rdv / f"h{i}.json").unlink()
                left = n - i - 1
                used = DEFAULT_MAX_PRODUCERS if left > WHOLE_FARM // 2 else left

                def settled(left=left, used=used):
                    return c.counters["producers_known"] == left and len(c.endpoints) == used

                assert wait_until(settled, 10), (left, c.endpoints)
                got.append(c.next())
            counters = dict(c.counters)
    finally:
        for f in fakes:
            f.close()
    assert got == [synthetic_frame(4, i) for i in range(len(got))]
    # eight known (one gone) did not make the farm small again: never more than half of WHOLE_FARM held
    assert counters["most_producers_held"] == WHOLE_FARM // 2, counters
