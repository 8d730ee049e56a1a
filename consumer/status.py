"""The status protocol client: ask producers for their ``snapshot`` and get back only what is safe to print.

A producer answers a ``status`` message (no hello, no frames) with its numbers. The answer comes from the
network, so every field is checked with :func:`pxdbg.shared.protocol.parse_snapshot` and more: numbers must be
finite, texts are cut to their bound and stripped of control characters (no escape sequence reaches a terminal),
fields nobody documented are dropped. A producer whose answer fails a check is one bad entry with a reason that
quotes none of its values; it never costs the others their answers.
"""

from __future__ import annotations

import contextlib
import math
import time

from pxdbg.shared import protocol
from pxdbg.shared.spec import TransportOptions

#: Messages libzmq may queue from one producer while we wait: a status exchange is one message each way, so a
#: producer that floods us holds at most this many (each at most ``protocol.MAX_FRAME_MESSAGE`` bytes).
STATUS_HWM = 4
#: Characters kept of a text field in a snapshot (an identity, a host name); longer ones are cut and marked.
TEXT_LIMITS = {"identity": 256, "host": 256, "device": 64}
_ENDPOINT_LIMIT = 256
_CUT = "..."


def printable(text: str, limit: int) -> str:
    """``text`` with every character a terminal could act on (C0/C1 controls, DEL, format characters such as
    bidi overrides) replaced by ``?``, cut to ``limit`` characters (``...`` marks a cut)."""
    if len(text) > limit:
        text = text[: max(limit - len(_CUT), 0)] + _CUT
    return "".join(c if c.isprintable() else "?" for c in text)


class StatusReplies(dict[str, dict]):
    """Endpoint -> checked snapshot, for each producer that answered well (a plain ``dict`` of those).

    ``refused``: endpoint -> why its CURVE handshake failed (a refusal, not silence); ``bad``: endpoint -> why
    its answer was rejected. Endpoints in none of the three were silent for the whole timeout.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refused: dict[str, str] = {}
        self.bad: dict[str, str] = {}

    def updated(self, newer: StatusReplies) -> StatusReplies:
        """These replies with ``newer``'s snapshots on top (a producer silent the second time keeps its first)."""
        merged = StatusReplies()
        merged.update(self)
        merged.update(newer)
        merged.refused = {ep: why for ep, why in self.refused.items() if ep not in merged}
        merged.bad = {ep: why for ep, why in self.bad.items() if ep not in merged}
        return merged


def check_snapshot(raw: dict) -> dict:
    """A snapshot as a status table may print it; raise :class:`protocol.ProtocolError` naming the bad field.

    Over-long texts are cut first (an identity of 15 MB is shown as its first 253 characters and ``...``), then
    the whole map is checked by ``parse_snapshot``; numbers must also be finite and times not negative."""
    if not isinstance(raw, dict):
        raise protocol.ProtocolError("a snapshot must be a map")
    snap = {name: raw[name] for name in (*protocol._SNAPSHOT_FIELDS, "counters", "histograms") if name in raw}
    for name, limit in TEXT_LIMITS.items():
        if isinstance(snap.get(name), str):
            snap[name] = printable(snap[name], limit)
    if isinstance(snap.get("endpoints"), list):
        snap["endpoints"] = [
            printable(ep, _ENDPOINT_LIMIT) if isinstance(ep, str) else ep for ep in snap["endpoints"][:16]
        ]
    protocol.parse_snapshot({"snapshot": snap})
    for name in ("uptime_s", "last_progress_s"):
        if not math.isfinite(snap[name]) or snap[name] < 0:
            raise protocol.ProtocolError(f"snapshot field {name!r}: a finite number of seconds, at least 0")
    for hist in snap["histograms"].values():
        bounds = hist["buckets"]  # the last bound may be +Inf
        if not all(math.isfinite(x) for x in (hist["sum"], *bounds[:-1])) or any(map(math.isnan, bounds)):
            raise protocol.ProtocolError("snapshot histograms must hold finite numbers")
    # keys passed parse_snapshot's length bound; they are printed too
    snap["counters"] = {printable(k, 64): v for k, v in snap["counters"].items()}
    snap["histograms"] = {printable(k, 64): v for k, v in snap["histograms"].items()}
    return snap


def ask_status(endpoints: list[str], timeout: float, transport: TransportOptions | None = None) -> StatusReplies:
    """Ask each of ``endpoints`` for its snapshot over the protocol (no hello) and wait at most ``timeout``
    seconds in all. ``transport`` carries the CURVE keys (``None``: the environment's, as any consumer).

    Returns the checked snapshots by endpoint, with the refusals and rejected answers beside them
    (:class:`StatusReplies`); a producer that never answers is in none of them.
    """
    import zmq

    from pxdbg.shared import security
    from pxdbg.shared import transport as wire

    options = (transport or TransportOptions()).replace(hwm=STATUS_HWM)
    replies = StatusReplies()
    ctx = zmq.Context()
    socks: dict = {}
    try:
        for ep in endpoints:
            socks[wire.dealer(ctx, ep, options)] = ep
        unsent = set(socks)
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sock in list(unsent):
                with contextlib.suppress(zmq.Again):  # not connected yet (IMMEDIATE): try again next turn
                    sock.send(protocol.status(), zmq.NOBLOCK)
                    unsent.discard(sock)
            for sock, _ in poller.poll(50):
                ep = socks[sock]
                parts = sock.recv_multipart(zmq.NOBLOCK)
                if ep in replies or ep in replies.bad:
                    continue  # one answer per producer; more is noise
                why = _read_reply(parts, replies, ep)
                if why is not None:
                    replies.bad[ep] = why
            for ep, why in security.refused_endpoints(ctx).items():
                if ep not in replies and ep not in replies.bad:
                    replies.refused[ep] = why
            if len(replies) + len(replies.bad) + len(replies.refused) >= len(socks):
                break
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    return replies


def status_rows(
    endpoints: list[str], latest: StatusReplies, earlier: StatusReplies | None, timeout: float
) -> list[dict]:
    """One row per endpoint: its state in the ``latest`` look (answered, refused, bad reply, silent), its checked
    snapshot, and frames/s over the time since the ``earlier`` look if it answered both, else the average since
    the producer started. ``timeout``: how long the look waited (for a silent producer's row)."""
    rows = []
    for ep in endpoints:
        row: dict[str, object] = {
            "endpoint": printable(ep, 256),
            "state": "answered",
            "why": None,
            "frames_per_s": None,
        }
        snap = latest.get(ep)
        if snap is None:
            if ep in latest.refused:
                row.update(state="refused", why=printable(latest.refused[ep], 1000))
            elif ep in latest.bad:
                row.update(state="bad reply", why=latest.bad[ep])
            else:
                row.update(state="silent", why=f"no answer in {timeout:g} s")
            rows.append({**row, "snapshot": None})
            continue
        sent, before = snap["counters"].get("frames_sent", 0), earlier.get(ep) if earlier is not None else None
        span = snap["uptime_s"] - before["uptime_s"] if before is not None else 0.0
        if before is not None and span > 0:
            rate = (sent - before["counters"].get("frames_sent", 0)) / span
        else:
            rate = sent / max(snap["uptime_s"], 1e-9)
        rows.append({**row, "frames_per_s": round(rate, 3), "snapshot": snap})
    return rows


def _read_reply(parts: list, replies: StatusReplies, ep: str) -> str | None:
    """Store a good snapshot in ``replies``; otherwise return why the answer was rejected."""
    if len(parts) != 1:
        return f"an answer of {len(parts)} parts instead of one"
    try:
        header = protocol.unpack(parts[0])
    except protocol.ProtocolError as exc:
        return printable(str(exc), 200)
    if header["t"] == protocol.ERROR:
        return f"error: {printable(header['msg'], 200)}"
    if header["t"] != protocol.SNAPSHOT:
        return f"a {printable(header['t'], 64)!r} message instead of a snapshot"
    try:
        replies[ep] = check_snapshot(header["snapshot"])
    except protocol.ProtocolError as exc:
        return printable(str(exc), 200)
    return None
