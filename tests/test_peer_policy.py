"""The producer's per-peer rules (:mod:`pxdbg.producer.peer_policy`), checked as pure functions of the peers and
``now``: no socket, no clock, no waiting."""

from __future__ import annotations

import pytest

from pxdbg.producer.peer_policy import BanList, RateLimit, check_seconds, stale_consumers
from pxdbg.producer.queues import Consumer
from pxdbg.shared.errors import ConfigError

LIMITS = {"hello_timeout": 10.0, "client_timeout": 30.0, "stall_timeout": 20.0}


def _consumer(cid: bytes, *, admitted=0.0, active=True, last_seen=0.0, blocked_since=None) -> Consumer:
    c = Consumer(cid, cid.decode(), None, 1, last_seen, admitted=admitted, active=active)
    c.blocked_since = blocked_since
    return c


def test_stale_consumers_by_rule():
    peers = [
        _consumer(b"squatter", active=False, admitted=0.0, last_seen=5.0),  # hello only, 11 s ago
        _consumer(b"fresh", active=False, admitted=2.0, last_seen=2.0),  # hello only, 9 s ago: keeps its slot
        _consumer(b"silent", last_seen=-20.0),  # 31 s without a message
        _consumer(b"stuck", last_seen=10.0, blocked_since=-9.5),  # reads nothing for 20.5 s
        _consumer(b"reading", last_seen=10.0, blocked_since=-9.0),  # 20 s: not over the limit yet
    ]
    verdicts = {v.cid: v for v in stale_consumers(peers, 11.0, **LIMITS)}
    assert set(verdicts) == {b"squatter", b"silent", b"stuck"}
    assert verdicts[b"squatter"].counter == "consumers_idle" and verdicts[b"squatter"].sparse
    assert verdicts[b"squatter"].why == "it said hello and nothing else for 11 s"
    assert verdicts[b"silent"][1:] == ("silent for 31 s", "consumers_expired", False)
    assert verdicts[b"stuck"][1:] == ("it read no frame for 20 s", "consumers_not_reading", False)


def test_a_silent_squatter_is_judged_once_as_idle():
    (verdict,) = stale_consumers([_consumer(b"x", active=False, last_seen=-100.0)], 11.0, **LIMITS)
    assert verdict.counter == "consumers_idle"


def test_rate_limit_refills_and_forgets_the_oldest_peer():
    limit = RateLimit(rate=2.0, burst=3.0, max_peers=2)
    assert [limit.allow(b"a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not limit.allow(b"a", 0.4) and limit.allow(b"a", 1.0)  # 0.8 tokens, then 1.0 more
    limit.allow(b"b", 1.0)
    limit.allow(b"c", 1.0)  # a is the least recently seen: forgotten, back to a full bucket
    assert [limit.allow(b"a", 1.0) for _ in range(4)] == [True, True, True, False]


def test_ban_list_expires_and_is_bounded():
    bans = BanList(ban_s=60.0, max_peers=2)
    bans.ban(b"a", 0.0)
    assert bans.banned(b"a", 59.9) and not bans.banned(b"a", 60.0) and len(bans) == 0
    for peer in (b"a", b"b", b"c"):
        bans.ban(peer, 100.0)
    assert len(bans) == 2 and not bans.banned(b"a", 101.0) and bans.banned(b"c", 101.0)
    bans.ban(b"b", 200.0)  # banned again: the newest, its time renewed
    bans.ban(b"d", 200.0)
    assert bans.banned(b"b", 250.0) and not bans.banned(b"c", 101.0)


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan"), True, "5"])
def test_check_seconds_names_the_setting(value):
    check_seconds(grace=0, stall_timeout=2.5)
    with pytest.raises(ConfigError, match=r"^stall_timeout must be a finite number of seconds, at least 0, got"):
        check_seconds(grace=1.0, stall_timeout=value)
