"""The post thread of a producer: it turns each generated batch into messages while the model computes the next
one. Frames are encoded in their consumer's negotiated codec; a batch that failed to generate, or that cannot be
encoded, becomes one ``error`` message per frame. The messages go to the network thread over an inproc socket,
each prefixed with its consumer's routing id and its request serial (:meth:`ConsumerQueues.to_outbox`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import zmq

from pxdbg.producer.queues import Work
from pxdbg.producer.stats import ProducerStats
from pxdbg.shared import protocol

log = logging.getLogger("pxdbg.producer")

#: Batches generated but not yet posted: the model runs at most this far ahead of the encoding.
HANDOFF_DEPTH = 2


class PostThread:
    """Encodes and ships the batches the generation thread hands over (:meth:`hand_over`), until :meth:`finish`.

    ``encode(seed, idx, frame, codec)`` is the model's wire encoding (:meth:`pxdbg.models.BackgroundModel.encode`).
    ``stop`` is the producer's stop event: once set, nothing more is sent. ``on_dead`` is called when the thread
    died or is stuck while work waits for it (the producer then stops: its frames would never leave)."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        encode: Callable[..., protocol.EncodedFrame],
        stats: ProducerStats,
        stop: threading.Event,
        *,
        linger_ms: int,
        on_dead: Callable[[], None],
    ) -> None:
        self.ctx, self.endpoint, self.encode, self.stats = ctx, endpoint, encode, stats
        self.stop, self.linger_ms, self.on_dead = stop, linger_ms, on_dead
        self._handoff: queue.Queue = queue.Queue(maxsize=HANDOFF_DEPTH)
        self._thread = threading.Thread(target=self._run, name="pxdbg-post", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hand_over(self, kind: str, batch: list[Work], payload) -> None:
        """Queue a batch: ``("frames", batch, frames)`` or ``("error", batch, (code, text))``."""
        self._put((kind, batch, payload))

    def finish(self, timeout: float = 30.0) -> None:
        """The end of work: the batches handed over are posted, then the thread ends (joined for ``timeout`` s)."""
        if self._thread.is_alive():
            self._put(None, force=True)
        self._thread.join(timeout=timeout)

    def _put(self, item, force: bool = False) -> None:
        """Never wait forever on a post thread that died or is stuck; ``force`` (the end-of-work marker) is tried
        for a few seconds even after a stop."""
        deadline = time.monotonic() + 5.0
        while (force and time.monotonic() < deadline) or not self.stop.is_set():
            try:
                self._handoff.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    log.error("the post thread died; stopping the producer")
                    self.on_dead()
                    return

    def _run(self) -> None:
        out = self.ctx.socket(zmq.PAIR)
        out.setsockopt(zmq.SNDTIMEO, 500)  # so that a stop is noticed even when the network thread reads no more
        out.connect(self.endpoint)
        try:
            while True:
                item = self._handoff.get()
                if item is None:
                    return
                t0 = time.perf_counter()
                for w, parts in self._messages(*item):
                    while not self.stop.is_set():
                        try:
                            out.send_multipart([w.cid, w.serial.to_bytes(8, "little"), *parts], copy=False)
                            break
                        except zmq.Again:
                            continue
                self.stats.histograms["post_seconds"].observe(time.perf_counter() - t0)
        finally:
            out.close(self.linger_ms)

    def _messages(self, kind: str, batch: list[Work], payload) -> list[tuple[Work, list]]:
        """The parts of each frame's message: the frame in its consumer's codec, or an error."""
        if kind == "frames":
            try:
                if len(payload) != len(batch):
                    raise ValueError(f"the model gave {len(payload)} frames for {len(batch)} asked")
                return [(w, self.encode(w.seed, w.idx, f, w.codec).parts()) for w, f in zip(batch, payload)]
            except Exception as exc:  # a frame the model made but we cannot encode: report, go on
                log.exception("encoding failed for %d frames", len(batch))
                self.stats.count("encoding_errors")
                text = f"the producer could not encode the frames: {type(exc).__name__}: {str(exc)[:500]}"
                payload = (protocol.E_ENCODING, text)
        code, text = payload
        return [(w, [protocol.error(text, code=code, seed=w.seed, indices=[w.idx])]) for w in batch]
