"""Event keys: (experiment, run, event) packed into one frame index of an event-keyed stream."""

from __future__ import annotations

import pytest

from pxdbg import models
from pxdbg.shared.seeding import (
    EVENT_MAX,
    EXPERIMENT_MAX,
    RUN_MAX,
    event_index,
    event_key,
    event_stream_seed,
)


@pytest.mark.parametrize("key", [(0, 0, 0), (0, 0, 1), (3, 7, 11), (1023, 0, 1), (EXPERIMENT_MAX, RUN_MAX, EVENT_MAX)])
def test_keys_round_trip_within_the_protocols_index_range(key):
    index = event_index(*key)
    assert 0 <= index <= 2**63 - 1 and event_key(index) == key


def test_consecutive_events_of_a_run_are_consecutive_indices():
    assert [event_index(0, 5, e) for e in (1, 2, 3)] == [event_index(0, 5, 1) + i for i in range(3)]
    assert event_index(0, 6, 1) != event_index(0, 5, 2)  # runs do not overlap


@pytest.mark.parametrize(
    ("key", "what"),
    [((1024, 0, 1), "experiment"), ((-1, 0, 1), "experiment"), ((0, RUN_MAX + 1, 1), "run"), ((0, -1, 1), "run"),
     ((0, 0, EVENT_MAX + 1), "event"), ((0, 0, -1), "event"), ((0, 0, 1.0), "event"), ((True, 0, 1), "experiment")],
)  # fmt: skip
def test_numbers_outside_the_key_are_refused_by_name(key, what):
    with pytest.raises(ValueError, match=what):
        event_index(*key)


def test_the_event_keyed_stream_is_not_the_position_keyed_one():
    """Event (0, 0, n) of seed S must not repeat frame n of S's position-keyed stream (a production may mix both)."""
    assert event_stream_seed(7) == event_stream_seed(7) != 7
    assert len({event_stream_seed(s) for s in range(1000)}) == 1000
    m = models.load("parametric")
    assert m.frames(event_stream_seed(7), [event_index(0, 0, 3)])[0] != m.frames(7, [3])[0]
