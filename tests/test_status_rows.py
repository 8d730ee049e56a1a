"""The rows of ``pxdbg farm status`` from two looks at a farm (:func:`pxdbg.consumer.status.status_rows`), checked
without sockets: the state of each producer, and frames/s over the interval or since the producer started."""

from __future__ import annotations

from pxdbg.consumer.status import StatusReplies, status_rows


def _snap(uptime_s: float, sent: int) -> dict:
    return {"uptime_s": uptime_s, "counters": {"frames_sent": sent}}


def test_every_endpoint_gets_one_row_in_its_state():
    earlier, latest = StatusReplies(), StatusReplies()
    earlier["tcp://a:1"] = _snap(100.0, 1000)
    latest["tcp://a:1"] = _snap(102.0, 1050)  # both looks: the rate over the 2 s between them
    latest["tcp://b:1"] = _snap(50.0, 100)  # first seen now: the average since it started
    latest.refused["tcp://c:1"] = "no such key\x1b[2J"
    latest.bad["tcp://d:1"] = "snapshot field 'pid': missing"
    rows = status_rows(["tcp://a:1", "tcp://b:1", "tcp://c:1", "tcp://d:1", "tcp://e:1"], latest, earlier, 3.0)
    by_ep = {r["endpoint"]: r for r in rows}
    assert [r["endpoint"] for r in rows] == ["tcp://a:1", "tcp://b:1", "tcp://c:1", "tcp://d:1", "tcp://e:1"]
    assert by_ep["tcp://a:1"]["frames_per_s"] == 25.0 and by_ep["tcp://a:1"]["state"] == "answered"
    assert by_ep["tcp://b:1"]["frames_per_s"] == 2.0 and by_ep["tcp://b:1"]["snapshot"] == latest["tcp://b:1"]
    assert by_ep["tcp://c:1"]["state"] == "refused" and by_ep["tcp://c:1"]["why"] == "no such key?[2J"
    assert by_ep["tcp://d:1"]["state"] == "bad reply" and by_ep["tcp://d:1"]["snapshot"] is None
    assert by_ep["tcp://e:1"]["state"] == "silent" and by_ep["tcp://e:1"]["why"] == "no answer in 3 s"


def test_a_restarted_producer_falls_back_to_its_average():
    earlier, latest = StatusReplies(), StatusReplies()
    earlier["ep"], latest["ep"] = _snap(500.0, 9000), _snap(4.0, 40)  # uptime went back: a new process
    (row,) = status_rows(["ep"], latest, earlier, 1.0)
    assert row["frames_per_s"] == 10.0


def test_an_endpoint_a_terminal_would_act_on_is_printable():
    latest = StatusReplies()
    (row,) = status_rows(["tcp://x:1\x07" + "y" * 400], latest, None, 1.0)
    assert "\x07" not in row["endpoint"] and len(row["endpoint"]) == 256 and row["state"] == "silent"
