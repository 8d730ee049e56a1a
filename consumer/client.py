"""BackgroundClient: the consumer's side of the pipeline, as its event loop sees it. Imports no torch.

:meth:`BackgroundClient.next` hands out frame ``first_frame``, ``first_frame + 1``, ... in order from a reorder
buffer (:class:`ReorderBuffer`); when the pipeline is warm it only takes a decoded frame from there. Behind it,
an I/O thread (:mod:`pxdbg.consumer.io_loop`) keeps at most ``prefetch`` frames requested but not yet consumed
(credit-based flow control, :mod:`pxdbg.consumer.credits`), spread over the producers by their speed; it
receives, checks and decodes frames (:mod:`pxdbg.consumer.dispatch`), heartbeats every producer, asks a second
producer for stragglers within a budget (:mod:`pxdbg.consumer.requests`), judges each producer by the rules of
:mod:`pxdbg.consumer.health` and re-issues a lost, draining or quarantined producer's frames to the others, and
follows a dynamic endpoint source (rendezvous directory, DNS name). Settings: :class:`ClientOptions`.

Robustness (each a test in ``tests/test_consumer_faults.py``, the rules in ``tests/test_health.py``): a frame is
accepted only from a producer it was asked of, for this stream and model, intact (checksum over seed, index,
identity and payload); anything else is dropped and counted. A producer that sends corrupt or foreign frames,
garbage or oversized messages, reports errors, welcomes with a version or codec never offered, forgets this
consumer again and again, is mute (answers heartbeats but delivers nothing) or is far slower than the others is
quarantined and its frames go elsewhere; one that misses a pong has its frames asked of the others at once; a
sample of frames is audited against a second producer's copy. The run fails only when no usable producer is
left, naming what each did.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from typing import Literal, overload

import numpy as np

from pxdbg.consumer.errors import (
    FrameTimeoutError,
    IdentityMismatchError,
    NoProducerError,
    PipelineError,
    ProducerFailure,
)
from pxdbg.consumer.io_loop import ConsumerIO
from pxdbg.consumer.options import ClientOptions
from pxdbg.consumer.peers import ALIVE
from pxdbg.consumer.stats import ClientStats
from pxdbg.consumer.workers import LocalWorkers
from pxdbg.shared import discovery
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.spec import ProducerSpec

__all__ = [
    "BackgroundClient",
    "ClientOptions",
    "FrameTimeoutError",
    "IdentityMismatchError",
    "NoProducerError",
    "PipelineError",
    "ProducerFailure",
    "ReorderBuffer",
    "expected_identity",
]


def expected_identity(
    model: str,
    *,
    checkpoint=None,
    checkpoint_sha256: str | None = None,
    globaltag: str | None = None,
    precision: str = "fp32",
    stores=None,
) -> ModelIdentity:
    """The identity a consumer asks for, resolved without torch: ``ProducerSpec(...).identity()``."""
    spec = ProducerSpec(
        model=model,
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        globaltag=globaltag,
        precision=precision,
    )
    return spec.identity(stores)


class ReorderBuffer:
    """The state the event loop and the I/O thread share, under one lock: decoded frames waiting to be handed
    out, the next index to hand out, the run's failure, whether the client is closing. The I/O thread also
    changes the producers' states under :attr:`cv`, so a waiter for a welcome wakes up."""

    def __init__(self, first_frame: int) -> None:
        self.cv = threading.Condition()
        self.ready: dict[int, SparseFrame] = {}
        self.next = first_frame
        self.error: BaseException | None = None
        self.closing = False
        #: frames requested but not consumed, as of the I/O thread's last pass
        self.in_flight = 0
        #: the most frames ever requested but not consumed at once (the prefetch bound says <= prefetch)
        self.max_in_flight = 0
        #: the most decoded frames ever waiting here (<= prefetch)
        self.max_buffered = 0

    def fail(self, exc: BaseException) -> None:
        """The run failed: the first failure is what every later :meth:`BackgroundClient.next` raises."""
        with self.cv:
            if self.error is None:
                self.error = exc
            self.cv.notify_all()


class BackgroundClient:
    """Frames of one stream, in order, from local workers or a producer farm.

    Give either ``endpoints`` (an endpoint string of :mod:`pxdbg.shared.discovery`, or a list of them) or
    ``workers`` (how many local producer processes to start); the settings as ``options`` (a
    :class:`ClientOptions`), or as its fields by keyword (``seed=``, ``prefetch=``, ``spec=`` ..., which replace
    those of ``options``). See :class:`ClientOptions` for what each means.
    """

    def __init__(
        self,
        endpoints: list[str] | str | None = None,
        *,
        workers: int | None = None,
        options: ClientOptions | None = None,
        **keywords: object,
    ) -> None:
        if (endpoints is None) == (workers is None):
            raise ConfigError("give either endpoints (a producer farm) or workers (local producers), not both")
        opts = ClientOptions.build(options, **keywords).for_source(local=workers is not None)
        # endpoint strings are checked before any socket or process exists
        source = discovery.parse(endpoints) if endpoints is not None else None
        self.options = opts
        self.policy = opts.policy
        self.spec = opts.spec
        self.transport = opts.transport
        self.seed = opts.seed
        self.first_frame = opts.first_frame
        self.end = opts.end
        self.prefetch = opts.prefetch
        self.identity = opts.spec.identity()
        self.identity_str = str(self.identity)
        self.stats = ClientStats(warmup=opts.prefetch)
        self.last_index: int | None = None
        self._buffer = ReorderBuffer(opts.first_frame)
        self._finalizer = None
        self._io = ConsumerIO(opts, self.identity, self._buffer, source, workers)
        if self._io.workers is not None:  # the workers stop with this client, even one never closed
            self._finalizer = weakref.finalize(self, self._io.workers.close)
        try:
            self._io.start()
        except BaseException:
            self.close()
            raise

    # -- the event loop's side ---------------------------------------------------------------------------
    @overload
    def next(self, dense: Literal[False] = ...) -> SparseFrame: ...
    @overload
    def next(self, dense: Literal[True]) -> np.ndarray: ...
    @overload
    def next(self, dense: bool) -> SparseFrame | np.ndarray: ...

    def next(self, dense: bool = False) -> SparseFrame | np.ndarray:
        """The next frame of the stream (sparse digits; a (40, 250, 768) uint8 array when ``dense``)."""
        t0 = time.perf_counter()
        timeout = self.options.frame_timeout
        deadline = time.monotonic() + timeout
        buf = self._buffer
        with buf.cv:
            if self.end is not None and buf.next >= self.end:
                raise PipelineError(f"all {self.end - self.first_frame} frames this client was opened for are used")
            while True:
                if buf.error is not None:
                    raise buf.error
                if buf.closing:
                    raise PipelineError("the client is closed")
                frame = buf.ready.pop(buf.next, None)
                if frame is not None:
                    index = buf.next
                    buf.next += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FrameTimeoutError(
                        f"frame {buf.next} of stream {self.seed} did not arrive within {timeout:g} s "
                        f"(--frame-timeout); producers: {self._describe()}"
                    )
                buf.cv.wait(min(remaining, 1.0))
        self._io.wake()  # a slot of the window is free: more frames may be asked for now
        self.stats.record_wait(time.perf_counter() - t0)
        self.last_index = index
        return frame.to_dense() if dense else frame

    def __next__(self) -> SparseFrame:
        if self.end is not None and self._buffer.next >= self.end:
            raise StopIteration
        return self.next()

    def __iter__(self):
        return self

    def wait_for_producers(self, count: int | None = None, timeout: float = 60.0) -> int:
        """Block until ``count`` producers (default: all known now) have welcomed this client; return how many
        have. Raises :class:`NoProducerError` after ``timeout`` seconds. Useful to warm up before timing a loop."""
        deadline = time.monotonic() + timeout
        buf, peers = self._buffer, self._io.peers
        with buf.cv:
            count = len(peers) if count is None else count
            while True:
                if buf.error is not None:
                    raise buf.error
                alive = sum(p.state == ALIVE for p in peers.values())
                if alive >= count:
                    return alive
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoProducerError(
                        f"{alive} of {count} producers answered within {timeout} s ({self._describe()})"
                    )
                buf.cv.wait(min(remaining, 0.1))

    @property
    def consumed(self) -> int:
        return self._buffer.next - self.first_frame

    @property
    def endpoints(self) -> list[str]:
        """The producers' concrete endpoints known now."""
        with self._buffer.cv:
            return list(self._io.peers)

    @property
    def local_workers(self) -> LocalWorkers | None:
        """The local producer processes (``workers=``), else None."""
        return self._io.workers

    # what the I/O thread counted: read them after the run (or as a snapshot; they are only ever added to)
    @property
    def counters(self) -> Counter:
        """Events by name: frames received, hedged, re-issued, bad messages, quarantines ..."""
        return self._io.counters

    @property
    def frames_per_producer(self) -> Counter:
        return self._io.frames_per_producer

    @property
    def wire_bytes(self) -> int:
        """Bytes of frame payload received (duplicates and held-back audit copies included)."""
        return self._io.wire_bytes

    @property
    def wire_digits(self) -> int:
        return self._io.wire_digits

    @property
    def max_in_flight(self) -> int:
        """The most frames ever requested but not consumed at once (<= prefetch)."""
        return self._buffer.max_in_flight

    @property
    def max_buffered(self) -> int:
        """The most decoded frames ever waiting in the reorder buffer (<= prefetch)."""
        return self._buffer.max_buffered

    def producer_states(self) -> dict[str, str]:
        """{endpoint: connecting / alive / draining / quarantined} as of now."""
        with self._buffer.cv:
            return {ep: p.state for ep, p in self._io.peers.items()}

    def producer_report(self) -> dict[str, str]:
        """{endpoint: what it did}: its state, frames delivered, and why it was quarantined or lost, if so."""
        with self._buffer.cv:
            return {ep: p.describe() for ep, p in self._io.peers.items()}

    def in_flight(self) -> int:
        """Frames requested but not yet consumed (received or not), as of the I/O thread's last pass."""
        with self._buffer.cv:
            return self._buffer.in_flight

    def close(self) -> None:
        """Say bye to the producers, stop the I/O thread and any local workers. Idempotent."""
        with self._buffer.cv:
            self._buffer.closing = True
            self._buffer.cv.notify_all()
        self._io.stop()
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _describe(self) -> str:
        return "; ".join(p.describe() for p in list(self._io.peers.values())) or "none known"
