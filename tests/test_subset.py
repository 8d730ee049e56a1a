"""The bounded-subset policy (pure): spread over the farm, reproducibility, one change per refresh."""

from __future__ import annotations

from collections import Counter

import pytest

from pxdbg.consumer.subset import Subset

FARM = [f"tcp://10.0.{i // 250}.{i % 250}:5555" for i in range(200)]


def test_every_producer_gets_about_its_share_of_consumers():
    consumers, k = 4000, 8
    load = Counter()
    for c in range(consumers):
        chosen = Subset(k, key=f"job-{c}", seed=7).choose(FARM, 0.0)
        assert len(chosen) == k == len(set(chosen))
        load.update(chosen)
    assert set(load) == set(FARM), "every producer is used"
    mean = consumers * k / len(FARM)  # 160
    # binomial spread: sd ~ sqrt(160) ~ 12.6; 5 sd either way would be a broken hash
    assert mean - 65 < min(load.values()) and max(load.values()) < mean + 65, (min(load.values()), max(load.values()))


def test_same_seed_and_key_same_subset_whatever_the_order_of_resolution():
    a = Subset(8, key="job-3", seed=1).choose(FARM, 0.0)
    b = Subset(8, key="job-3", seed=1).choose(list(reversed(FARM)), 5.0)
    assert a == b
    assert Subset(8, key="job-3", seed=2).choose(FARM, 0.0) != a
    assert Subset(8, key="job-4", seed=1).choose(FARM, 0.0) != a


def test_a_lost_producer_is_replaced_by_one_other_and_comes_back_after_its_hold():
    s = Subset(8, key="job-9", seed=3, hold_s=60.0)
    first = s.choose(FARM, 0.0)
    s.drop(first[2], 1.0)
    second = s.choose(FARM, 1.0)
    assert len(set(first) ^ set(second)) == 2, "exactly one member changed"
    assert first[2] not in second and s.held(1.0) == [first[2]]
    assert s.choose(FARM, 30.0) == second, "no churn while nothing changes"
    assert s.choose(FARM, 61.5) == first, "after its hold it ranks in again"
    assert s.changes == 2
    # dropped again, it stays out twice as long, then four times: a walk through dead entries keeps moving
    s.drop(first[2], 62.0)
    assert first[2] not in s.choose(FARM, 62.0 + 119.0) and first[2] in s.choose(FARM, 62.0 + 121.0)
    s.drop(first[2], 200.0)
    assert first[2] in s.held(200.0 + 239.0) and first[2] not in s.held(200.0 + 241.0)


def test_a_vanished_producer_changes_one_member_and_a_joining_one_at_most_one():
    s = Subset(8, key="job-1", seed=0)
    first = s.choose(FARM, 0.0)
    without = [ep for ep in FARM if ep != first[0]]
    assert len(set(first) - set(s.choose(without, 1.0))) == 1
    moved = 0
    for n in range(50):  # a producer joining displaces at most one member, and only where it ranks high
        joined = [*FARM, f"tcp://10.9.9.{n}:5555"]
        moved += len(set(first) - set(Subset(8, key="job-1", seed=0).choose(joined, 0.0)))
    assert moved <= 50 and moved < 10, moved  # expected 50 * 8 / 201 ~ 2


def test_rotation_moves_one_member_at_a_time():
    s = Subset(4, key="job-5", seed=0, rotate_s=100.0)
    seen = [s.choose(FARM[:20], t) for t in (0.0, 99.0, 100.0, 250.0)]
    assert seen[0] == seen[1]
    assert len(set(seen[1]) - set(seen[2])) == 1 and len(set(seen[2]) - set(seen[3])) == 1


def test_fewer_endpoints_than_the_bound_uses_them_all_and_bad_settings_are_refused():
    small = Subset(8)
    assert sorted(small.choose(FARM[:3], 0.0)) == sorted(FARM[:3])
    small.drop(FARM[0], 1.0)
    assert sorted(small.choose(FARM[:3], 2.0)) == sorted(FARM[:3]), "too few others: a lost one stays, to come back"
    assert Subset(8).choose([], 0.0) == []
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_producers"):
            Subset(bad)
    with pytest.raises(ValueError, match="rotate_s"):
        Subset(4, rotate_s=0)
