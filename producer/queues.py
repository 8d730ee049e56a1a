"""Per-consumer queues and fair share: what a producer owes each consumer, and in which order it works.

Each consumer has its own request queue (frames asked for, not yet generated) and its own send queue (frames
generated, not yet accepted by its socket). The generation thread takes work round robin across consumers, one
frame from each in turn, so a consumer asking thousands of frames gets its share and no more; it skips a consumer
whose send queue is full (one that does not read), so such a consumer costs no model time and the others do not
wait behind it. Limits: ``max_consumers`` (``max_per_address`` of them from one IP address), and ``max_pending``
frames asked but not yet sent per consumer.

Memory: at most ``max_consumers * max_pending`` queued frame indices (8 bytes each: 8 MB at the defaults) and
``max_consumers * max_unsent`` encoded frames, and per consumer at most about ``max_unsent_bytes`` of them (plus
what each socket's high-water mark lets libzmq hold).

Socket-free and thread-safe (one lock); the network thread adds, removes and sends, the generation thread takes.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from pxdbg.shared.validators import positive_int


class LimitError(Exception):
    """A consumer asked for more than a limit allows (the text says which, for the error message)."""


@dataclass(frozen=True)
class Work:
    """One frame to generate: for which consumer, which stream and index, in which wire codec."""

    cid: bytes
    serial: int  # which connection of that consumer asked (a consumer forgotten and back is a new one)
    seed: int
    idx: int
    codec: str | None


class RequestQueue:
    """Frame indices asked for, first in first out, stored as 8-byte integers per request message."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, array]] = deque()
        self._head = 0  # position in the first chunk
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for i, (seed, indices) in enumerate(self._chunks):
            for idx in indices[self._head if i == 0 else 0 :]:
                yield seed, idx

    def extend(self, seed: int, indices) -> None:
        if len(indices):
            self._chunks.append((seed, array("q", indices)))
            self._len += len(indices)

    def popleft(self) -> tuple[int, int]:
        seed, indices = self._chunks[0]
        idx = indices[self._head]
        self._head += 1
        self._len -= 1
        if self._head == len(indices):
            self._chunks.popleft()
            self._head = 0
        return seed, idx

    def clear(self) -> None:
        self._chunks.clear()
        self._head = self._len = 0


@dataclass
class Consumer:
    cid: bytes
    name: str
    codec: str | None
    version: int
    last_seen: float
    serial: int = 0
    #: when it said hello; it holds a slot only once it sends more than hellos (see ``active``)
    admitted: float = 0.0
    active: bool = False  # it sent a ping or a request since its hello
    address: str | None = None  # the IP address it connects from (tcp), for the per-address limit
    requests: RequestQueue = field(default_factory=RequestQueue)  # (seed, idx) not yet taken
    working: int = 0  # taken for generation, not yet in the send queue
    outbox: deque = field(default_factory=deque)  # messages waiting for the socket (frames or errors)
    outbox_bytes: int = 0
    blocked_since: float | None = None  # when its socket last refused a message, while the outbox waits
    sent: int = 0

    @property
    def pending(self) -> int:
        """Frames asked for and not yet handed to the socket."""
        return len(self.requests) + self.working + len(self.outbox)

    def can_take(self, max_unsent: int, max_unsent_bytes: int) -> bool:
        """More work for this consumer would not exceed its share of finished frames waiting to be sent."""
        return self.working + len(self.outbox) < max_unsent and self.outbox_bytes < max_unsent_bytes


class ConsumerQueues:
    def __init__(
        self,
        *,
        max_consumers: int = 256,
        max_pending: int = 4096,
        max_unsent: int = 16,
        max_unsent_bytes: int = 32 * 2**20,
        max_per_address: int | None = None,
    ) -> None:
        max_per_address = max_consumers if max_per_address is None else max_per_address
        for name, value in (
            ("max_consumers", max_consumers),
            ("max_per_address", max_per_address),
            ("max_pending", max_pending),
            ("max_unsent", max_unsent),
            ("max_unsent_bytes", max_unsent_bytes),
        ):
            positive_int(name, value)
        self.max_consumers = max_consumers
        self.max_pending = max_pending
        self.max_unsent = max_unsent
        self.max_unsent_bytes = max_unsent_bytes
        self.max_per_address = max_per_address
        self._per_address: dict[str, int] = {}  # IP address -> consumers admitted from it
        self._consumers: OrderedDict[bytes, Consumer] = OrderedDict()  # round-robin order
        self._cond = threading.Condition()
        self._closed = False
        self._stopped = False
        self._serial = 0

    # -- network thread -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._consumers)

    def get(self, cid: bytes) -> Consumer | None:
        with self._cond:
            return self._consumers.get(cid)

    def consumers(self) -> list[Consumer]:
        with self._cond:
            return list(self._consumers.values())

    def add(
        self, cid: bytes, name: str, codec: str | None, version: int, now: float, address: str | None = None
    ) -> Consumer:
        """Admit a consumer (``address``: the IP address it connects from, if known, for the per-address limit)."""
        with self._cond:
            if cid in self._consumers:
                return self._consumers[cid]
            if len(self._consumers) >= self.max_consumers:
                raise LimitError(
                    f"this producer already serves its most consumers ({self.max_consumers}); "
                    f"use other producers or raise its --max-consumers"
                )
            if address is not None and self._per_address.get(address, 0) >= self.max_per_address:
                raise LimitError(
                    f"this producer already serves its most consumers from one address ({self.max_per_address}); "
                    f"use other producers"
                )
            self._serial += 1
            consumer = self._consumers[cid] = Consumer(
                cid, name, codec, version, now, self._serial, admitted=now, address=address
            )
            if address is not None:
                self._per_address[address] = self._per_address.get(address, 0) + 1
            return consumer

    def remove(self, cid: bytes) -> Consumer | None:
        """Forget a consumer, with its queued requests and unsent frames (work in progress is discarded when
        it finishes)."""
        with self._cond:
            consumer = self._consumers.pop(cid, None)
            if consumer is not None and consumer.address is not None:
                left = self._per_address.pop(consumer.address) - 1
                if left:
                    self._per_address[consumer.address] = left
            self._cond.notify_all()
            return consumer

    def submit(self, cid: bytes, seed: int, indices: list[int]) -> list[int]:
        """Queue frames for a known consumer; return the indices refused by the pending limit (all of them once
        the queues are closed for shutdown)."""
        with self._cond:
            consumer = self._consumers.get(cid)
            if consumer is None or self._closed:
                return list(indices)
            room = max(0, self.max_pending - consumer.pending)
            consumer.requests.extend(seed, indices[:room])
            if room:
                self._cond.notify()
            return list(indices[room:])

    def to_outbox(self, cid: bytes, serial: int, message: list) -> bool:
        """A finished frame (or error) for ``cid``; False if that consumer is gone (the message is dropped)."""
        with self._cond:
            consumer = self._consumers.get(cid)
            if consumer is None or consumer.serial != serial:
                return False
            consumer.working -= 1
            consumer.outbox.append(message)
            consumer.outbox_bytes += _size(message)
            return True

    def sent_one(self, consumer: Consumer) -> None:
        """The head of ``consumer``'s outbox went to its socket."""
        with self._cond:
            consumer.outbox_bytes -= _size(consumer.outbox.popleft())
            consumer.sent += 1
            consumer.blocked_since = None
            if consumer.requests and consumer.can_take(self.max_unsent, self.max_unsent_bytes):
                self._cond.notify()  # it may take work again

    def pending(self) -> int:
        with self._cond:
            return sum(c.pending for c in self._consumers.values())

    def busy(self) -> bool:
        """True while any frame is being generated or waits to be sent."""
        with self._cond:
            return any(c.working or c.outbox for c in self._consumers.values())

    def close(self) -> dict[bytes, dict[int, list[int]]]:
        """Take no more requests (shutdown); return, per consumer, the queued frames that will not be made
        ({seed: [indices]})."""
        with self._cond:
            self._closed = True
            dropped = {}
            for cid, consumer in self._consumers.items():
                dropped[cid] = _by_seed(consumer.requests)
                consumer.requests.clear()
            return dropped

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- generation thread --------------------------------------------------------------------------------
    def take(self, max_batch: int, timeout: float = 0.5) -> list[Work]:
        """Up to ``max_batch`` frames, one from each consumer in turn (round robin, resuming after the consumer
        served last), skipping consumers with ``max_unsent`` frames (or ``max_unsent_bytes``) made and not sent.
        Waits up to ``timeout`` seconds for work; returns [] when there is none (or after :meth:`stop`)."""
        with self._cond:
            batch = self._take(max_batch)
            if not batch and not self._stopped:
                self._cond.wait(timeout)
                batch = self._take(max_batch)
            return batch

    def _take(self, max_batch: int) -> list[Work]:
        batch: list[Work] = []
        if self._stopped:
            return batch
        limits = self.max_unsent, self.max_unsent_bytes
        eligible = [c for c in self._consumers.values() if c.requests and c.can_take(*limits)]
        while eligible and len(batch) < max_batch:
            still = []
            for c in eligible:
                if len(batch) >= max_batch:
                    break
                seed, idx = c.requests.popleft()
                c.working += 1
                batch.append(Work(c.cid, c.serial, seed, idx, c.codec))
                self._consumers.move_to_end(c.cid)  # the next batch starts with those not served last
                if c.requests and c.can_take(*limits):
                    still.append(c)
            eligible = still
        return batch


def _size(message: list) -> int:
    """Bytes of a routed message, less its routing id."""
    return sum(len(part) for part in message[1:])


def _by_seed(pairs) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for seed, idx in pairs:
        out.setdefault(seed, []).append(idx)
    return out
