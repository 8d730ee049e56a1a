"""What the consumer's I/O thread does with each message a producer sends: check it, then act on it.

A frame is accepted only from a producer it was asked of, for this stream and model, in the codec agreed
on, intact; then it goes to the reorder buffer (or is held for the audit: a sample of frames is compared with
a second producer's copy). A welcome, an error, a goodbye move the producer's state by the rules of
:mod:`pxdbg.consumer.health`. Anything malformed is a strike against its producer.
:class:`MessageHandlers` is a part of :class:`pxdbg.consumer.io_loop.ConsumerIO`, split off to keep each file
to one job; it uses the loop's state and its transitions (``_quarantine``, ``_peer_lost``, ``_change``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from pxdbg.consumer import health
from pxdbg.consumer.peers import ALIVE, CONNECTING, DRAINING, QUARANTINED, Peer, parse_goodbye, request_message
from pxdbg.shared import protocol
from pxdbg.shared import transport as sockets
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.sparselog import warn_sparsely

if TYPE_CHECKING:
    from pxdbg.consumer.client import ReorderBuffer
    from pxdbg.consumer.credits import HedgeBudget
    from pxdbg.consumer.options import ClientOptions

log = logging.getLogger("pxdbg.consumer")
#: Seconds between two hellos to a producer that said it serves its most consumers.
FULL_RETRY_S = 1.0


_Key = TypeVar("_Key")
_Copy = TypeVar("_Copy")


def agreeing(copies: dict[_Key, _Copy]) -> list[tuple[_Copy, list[_Key]]]:
    """The copies of one frame grouped by equality, largest group first: ``[(frame, [producers]), ...]``
    (``copies``: {producer: its copy}). One group: they agree; a first group larger than the second: a majority."""
    groups: list[tuple[_Copy, list[_Key]]] = []
    for key, frame in copies.items():
        for same_frame, keys in groups:
            if same_frame == frame:
                keys.append(key)
                break
        else:
            groups.append((frame, [key]))
    groups.sort(key=lambda g: -len(g[1]))
    return groups


class MessageHandlers:
    """The message handlers of :class:`~pxdbg.consumer.io_loop.ConsumerIO` (see the module's docstring)."""

    # the loop's state these handlers use (set by ConsumerIO.__init__)
    peers: dict[str, Peer]
    policy: health.HealthPolicy
    seed: int
    identity: ModelIdentity
    identity_str: str
    audit: float
    counters: Counter
    frames_per_producer: Counter
    wire_bytes: int
    wire_digits: int
    _buffer: ReorderBuffer
    _budget: HedgeBudget
    _hedged: dict[int, str]
    _audits: dict[int, dict[str, SparseFrame]]
    _ties: dict[int, float]
    _forgers: set[str]
    _audit_rng: random.Random
    _offered_codecs: list[str]
    _trim_at: float
    options: ClientOptions

    if TYPE_CHECKING:  # the loop's transitions these handlers call (defined by ConsumerIO)

        def _change(self, transition: Callable, *args: object) -> Any: ...
        def _quarantine(
            self, peer: Peer, why: str, now: float, identity: bool = False, for_run: bool = False
        ) -> None: ...
        def _peer_lost(self, peer: Peer, why: str, reconnect: bool = True, drained: bool = False) -> None: ...
        def _try_send(self, peer: Peer, msg: bytes, now: float) -> bool: ...
        def _overtaken(self, endpoint: str, now: float) -> None: ...
        def _healths(self) -> list[health.PeerHealth]: ...

    def _drain(self, peer: Peer, now: float) -> None:
        for _ in range(10000):
            if peer.sock is None or peer.state == QUARANTINED:
                return
            try:
                # a frame is a header and at most 4 buffers; past that, parts are released as they are read
                parts, dropped = sockets.recv_bounded(
                    peer.sock, max_parts=5, max_bytes=protocol.MAX_FRAME_MESSAGE, copy=False
                )
            except zmq.Again:
                return
            silent_for = health.on_message(peer.health, now)
            if silent_for:
                log.info("producer %s answers again after %.1f s", peer.endpoint, silent_for)
            if dropped:
                self.counters["bad_messages"] += 1
                self.counters["oversized_messages"] += 1
                self._quarantine(
                    peer, f"sent a message of more than 5 parts or {protocol.MAX_FRAME_MESSAGE} bytes", now
                )
                self._trim_at = now + 0.5  # once libzmq has freed what it held for the closed socket
                return
            try:
                header = protocol.unpack(parts[0].buffer)
                self._handle(peer, header, parts[1:], now)
            except protocol.ProtocolError as exc:
                self._strike(peer, "malformed_messages", f"sent malformed messages ({exc})", now)
            except RecursionError:  # a message nested deeper than the parser goes: garbage, not our bug
                self._strike(peer, "malformed_messages", "sent malformed messages (nested too deep)", now)

    def _strike(self, peer: Peer, counter: str, what: str, now: float) -> None:
        """Count a bad message; quarantine its producer after ``max_strikes`` of them."""
        self.counters["bad_messages"] += 1
        self.counters[counter] += 1
        n = self.counters["bad_messages"]
        warn_sparsely(log, n, "bad message from %s (%d so far): %s", peer.endpoint, n, what)
        verdict = health.on_bad_message(peer.health, self.policy, what)
        if verdict.quarantine_now:
            self._quarantine(peer, verdict.reason, now)

    def _handle(self, peer: Peer, header: dict, buffers: list, now: float) -> None:
        kind = header["t"]
        if kind == protocol.FRAME:
            if peer.state not in (ALIVE, DRAINING):
                raise protocol.ProtocolError("a frame before welcome")
            return self._receive_frame(peer, header, buffers, now)
        if buffers:
            raise protocol.ProtocolError(f"a message of type {kind!r} with {len(buffers)} unexpected buffers")
        if kind == protocol.PONG:
            return None
        if kind == protocol.WELCOME:
            return self._welcome(peer, header, now)
        if kind == protocol.ERROR:
            return self._error_message(peer, header, now)
        if kind == protocol.GOODBYE:
            return self._goodbye(peer, header, now)
        raise protocol.ProtocolError(f"unexpected message type {str(kind)[:32]!r}")

    def _error_message(self, peer: Peer, header: dict, now: float) -> None:
        if header.get("rehello"):  # the producer restarted and forgot us: what we asked for is lost
            verdict = health.on_rehello(peer.health, self.policy)
            if verdict.quarantine_now:  # a restart is rare: one that forgets us every time is broken
                self.counters["producer_errors"] += 1
                self._quarantine(peer, verdict.reason, now)
                return
            self._peer_lost(peer, verdict.reason, reconnect=False)
            return
        msg = str(header.get("msg"))[:500]
        idx = header.get("idx")
        if header.get("code") == getattr(protocol, "E_LIMIT", "limit") and isinstance(idx, list) and idx:
            # more than it takes from one consumer: ask it for fewer at once, the rest elsewhere
            refused = health.on_limit(peer.health, idx)
            self.counters["frames_over_producer_limit"] += len(refused)
            log.warning(
                "producer %s refused %d frame(s) over its limit (%s); asking it for at most %d at once",
                peer.endpoint,
                len(refused),
                msg,
                peer.health.cap,
            )
            return
        if header.get("code") == protocol.E_LIMIT and idx is None and peer.state == CONNECTING:
            # it serves its most consumers: a reason to wait for a slot (its hello is repeated) or use others
            self.counters["producers_full"] += 1
            if not peer.health.why.startswith("full"):
                log.info("producer %s is full (%s); using the others and asking it again", peer.endpoint, msg)
            peer.health.why = f"full: {msg}"
            peer.health.last_sent = now + FULL_RETRY_S - self.policy.heartbeat_interval  # the next hello, later
            return
        if idx is not None:
            what = f"failed on frame(s) {str(idx)[:80]} of stream {header.get('seed')}: {msg}"
        else:
            what = f"refused to serve: {msg}"
        self.counters["producer_errors"] += 1
        self._quarantine(peer, what, now)

    def _goodbye(self, peer: Peer, header: dict, now: float) -> None:
        final, dropped = parse_goodbye(header)
        reason = str(header.get("reason"))[:200]
        if final:  # a clean shutdown (a rollout, scancel): expected, not a failure
            self._peer_lost(peer, f"it said goodbye ({reason})", drained=True)
            return
        lost = self._change(health.on_draining, peer.health, dropped.get(self.seed, []), reason)
        self.counters["producers_draining"] += 1
        self.counters["frames_reissued"] += len(lost)
        log.info(
            "producer %s is draining (%s); re-issuing %d dropped frame(s) now, %d still to come from it",
            peer.endpoint,
            reason,
            len(lost),
            len(peer.health.outstanding),
        )

    def _welcome(self, peer: Peer, header: dict, now: float) -> None:
        try:
            theirs = ModelIdentity.from_dict(header["identity"])
        except (KeyError, TypeError, ValueError) as exc:
            raise protocol.ProtocolError(f"welcome without a valid identity ({type(exc).__name__})") from None
        if theirs != self.identity:
            self.counters["identity_mismatches"] += 1
            self._quarantine(
                peer,
                f"serves model {theirs} (checkpoint sha256 {theirs.checkpoint_sha256}), but this consumer asked "
                f"for {self.identity} (checkpoint sha256 {self.identity.checkpoint_sha256}); point it at producers "
                f"of the same model, checkpoint and precision",
                now,
                identity=True,
            )
            return
        version, codec = header.get("version"), header.get("codec")
        if version is not None and not protocol.MIN_PROTOCOL_VERSION <= version <= protocol.PROTOCOL_VERSION:
            self.counters["bad_welcomes"] += 1
            self._quarantine(
                peer,
                f"welcomed this consumer with protocol version {version}, which it never offered (it speaks "
                f"{protocol.MIN_PROTOCOL_VERSION}..{protocol.PROTOCOL_VERSION})",
                now,
            )
            return
        if codec is not None and codec not in self._offered_codecs:
            self.counters["bad_welcomes"] += 1
            self._quarantine(
                peer,
                f"welcomed this consumer with wire codec {codec[:64]!r}, which it never offered (it offered "
                f"{', '.join(self._offered_codecs) or 'none'})",
                now,
            )
            return
        peer.codec = codec
        if peer.state != CONNECTING:
            return
        info = header.get("producer", {})
        peer.info = info if isinstance(info, dict) else {}
        log.info(
            "producer %s ready: %s (pid %s on %s, %s)",
            peer.endpoint,
            theirs,
            peer.info.get("pid"),
            peer.info.get("host"),
            peer.info.get("device"),
        )
        self._change(health.on_welcome, peer.health, now)

    def _receive_frame(self, peer: Peer, header: dict, buffers: list, now: float) -> None:
        idx = header.get("idx")
        if header.get("seed") != self.seed or header.get("id") != self.identity_str:
            self.counters["foreign_frames"] += 1
            self._quarantine(
                peer,
                f"sent a frame of stream {str(header.get('seed'))[:24]} / model {str(header.get('id'))[:80]}, "
                f"but was asked for stream {self.seed} / model {self.identity_str}",
                now,
            )
            return
        if header.get("codec") not in (None, peer.codec):
            self.counters["corrupt_frames"] += 1
            self._strike(peer, "corrupt_frame_messages", "sent frames in a wire codec not agreed on", now)
            return
        if not isinstance(idx, int) or idx not in peer.health.outstanding:
            self.counters["unrequested_frames"] += 1
            self._strike(peer, "unrequested_frames", "sent frames it was not asked for", now)
            return
        requested_at = peer.health.outstanding.pop(idx)
        with self._buffer.cv:
            wanted = idx >= self._buffer.next and idx not in self._buffer.ready
        if not wanted:  # the other copy of a straggler came first
            peer.health.note_frame(now, requested_at)
            self.counters["duplicates_dropped"] += 1
            return
        try:
            frame = protocol.decode_frame(header, [memoryview(b.buffer) for b in buffers])
        except protocol.ProtocolError as exc:
            self.counters["corrupt_frames"] += 1
            self._strike(peer, "corrupt_frame_messages", f"sent corrupt frames ({exc})", now)
            return  # the window's planner asks for it again
        peer.health.note_frame(now, requested_at)
        first = self._hedged.pop(idx, None)
        if first is not None and first != peer.endpoint:
            self._overtaken(first, now)
        elif first is None:
            health.on_own_frame(peer.health, now - requested_at, self.policy, self._healths())
        else:  # the producer first asked delivered before the hedged copy: the copy was work for nothing
            self.counters["hedges_wasted"] += 1
        self._budget.earn(1)
        self.counters["frames_received"] += 1
        self.frames_per_producer[peer.endpoint] += 1
        self.wire_bytes += sum(b.buffer.nbytes for b in buffers)
        self.wire_digits += frame.n_digits
        if self.audit:
            audited = self._audit(peer, idx, frame, now)
            if audited is None:  # held back until another producer's copy confirms it
                return
            frame = audited
        self._hand_out(idx, frame)

    def _hand_out(self, idx: int, frame: SparseFrame) -> None:
        with self._buffer.cv:
            self._buffer.ready[idx] = frame
            self._buffer.max_buffered = max(self._buffer.max_buffered, len(self._buffer.ready))
            self._buffer.cv.notify_all()

    def _audit(self, peer: Peer, idx: int, frame: SparseFrame, now: float) -> SparseFrame | None:
        """The frame to hand out for ``idx``, or None while it is held for the audit.

        A fraction ``audit`` of the frames is asked of a second producer too, and handed out only when both
        copies agree: a checksum cannot catch a producer that labels frame i+1 as frame i with a valid checksum
        (CRC-32 is no MAC), a comparison can. Copies that differ go to a third producer; the producers that
        disagree with the majority are quarantined for the run. While no third producer can be asked but one
        may answer (it is asked already, or still connecting), the frame waits for it, up to connect_timeout
        (see :meth:`_break_ties`); with none, both are quarantined (which copy is right cannot be told) and the
        frame waits for another producer. A copy from a producer the audit caught is no evidence: it is dropped."""
        copies = self._audits.get(idx)
        if copies is None:
            if self._audit_rng.random() >= self.audit:
                return frame
            if not self._audit_ask(idx, {peer.endpoint}, now):
                return frame  # no second producer now: nothing to compare with
            self._audits[idx] = {peer.endpoint: frame}
            self.counters["audits"] += 1
            return None
        if peer.endpoint in copies:  # its own copy again (the second producer was lost): nothing to compare
            del self._audits[idx]
            self._ties.pop(idx, None)
            self.counters["audits_inconclusive"] += 1
            return frame
        copies[peer.endpoint] = frame
        groups = agreeing(copies)
        if len(groups) == 1:
            del self._audits[idx]
            self._ties.pop(idx, None)
            self.counters["audits_passed"] += 1
            return frame
        self.counters["audit_mismatches"] += 1
        log.warning(
            "audit: frame %d of stream %d differs between producers %s",
            idx,
            self.seed,
            " and ".join(ep for g in groups for ep in g[1]),
        )
        if len(groups[0][1]) > len(groups[1][1]):  # a majority
            winner, agreed = groups[0]
            del self._audits[idx]
            self._ties.pop(idx, None)
            for _, eps in groups[1:]:
                for ep in eps:
                    self._forger(ep, idx, agreed, now)
            return winner
        self._ties.setdefault(idx, now + self.options.connect_timeout)
        self._break_ties(now, [idx])
        return None

    def _break_ties(self, now: float, indices: list[int] | None = None) -> None:
        """For each audited frame whose copies disagree with no majority: ask a producer that has no copy yet; if
        none can be asked, wait while one may still answer (it has the frame outstanding already, or is still
        connecting) until the tie's deadline; past it, or with no such producer, quarantine every producer with
        a copy for the run (which is right cannot be told) and let the frame be asked elsewhere."""
        for idx in list(self._ties) if indices is None else indices:
            copies = self._audits.get(idx)
            if copies is None or len(copies) < 2:  # settled, or a side was a producer the audit caught since
                del self._ties[idx]
                if copies and not self._audit_ask(idx, set(copies), now):  # the one honest copy left
                    del self._audits[idx]
                    self._hand_out(idx, next(iter(copies.values())))
                continue
            others = [p for p in self.peers.values() if p.endpoint not in copies and p.endpoint not in self._forgers]
            if any(idx in p.health.outstanding for p in others):
                continue  # a third copy is on its way
            if self._audit_ask(idx, set(copies), now):
                continue
            if now < self._ties[idx] and any(p.state == CONNECTING and p.sock is not None for p in others):
                continue  # one that may break the tie is still connecting
            del self._audits[idx], self._ties[idx]
            for ep in copies:
                self._forger(ep, idx, [e for e in copies if e != ep], now)

    def _audit_ask(self, idx: int, exclude: set[str], now: float) -> bool:
        """Ask a producer outside ``exclude`` for frame ``idx`` (for the audit); False if none can be asked."""
        others = [
            p
            for p in self.peers.values()
            if p.endpoint not in exclude
            and p.endpoint not in self._forgers
            and p.state == ALIVE
            and not p.health.silent_since
            and idx not in p.health.outstanding
        ]
        for other in sorted(others, key=lambda p: len(p.health.outstanding)):
            if self._try_send(other, request_message(self.seed, [idx]), now):
                other.health.note_requested([idx], now)
                return True
        return False

    def _forger(self, endpoint: str, idx: int, others: list[str], now: float) -> None:
        """Quarantine ``endpoint`` for the run, caught by the audit at frame ``idx``; its copies held for other
        audits are no evidence: they go (a frame left with no copy is asked again, a tie with one copy left is
        settled by :meth:`_break_ties`)."""
        self._forgers.add(endpoint)
        for i, copies in list(self._audits.items()):
            copies.pop(endpoint, None)
            if not copies:
                del self._audits[i]
        peer = self.peers.get(endpoint)
        if peer is not None:
            self._quarantine(
                peer,
                f"its frame {idx} of stream {self.seed} differs from the copy of {' and '.join(others)} (audit)",
                now,
                for_run=True,
            )
