"""The producer's numbers: named counters and fixed-bucket histograms, bounded whatever runs through them.

Both are written by the producer's threads and read as a copy by :meth:`ProducerServer.snapshot`, so each takes a
lock; a histogram keeps one count per fixed bucket, never the observations themselves.
"""

from __future__ import annotations

import threading
from collections import Counter

from pxdbg.shared.histogram import SharedHistogram

#: Bucket upper bounds (seconds) for model and post-processing time per batch.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Bucket upper bounds (frames) for batch sizes.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

#: Every counter a producer keeps, with its help text: each starts at zero, so a scraper's ``rate()`` and
#: ``increase()`` see the first event and an alert needs no ``absent()``. A counter the code increments must be
#: named here (a test reads the producer's code for names that are not).
COUNTER_HELP = {
    "frames_generated": "Frames the model generated.",
    "frames_sent": "Frames sent to consumers.",
    "frames_requested": "Frames consumers requested and the producer accepted.",
    "frames_refused_over_limit": "Frames refused because the consumer had too many pending.",
    "frames_for_gone_consumers": "Generated frames whose consumer had left before they were sent.",
    "sends_to_gone_consumer": "Sends that found the consumer's connection gone.",
    "replies_dropped": "Replies dropped because the consumer's queue was full.",
    "malformed_messages": "Messages from consumers that did not parse or made no sense.",
    "unexpected_messages": "Messages of a type a producer does not take.",
    "requests_before_hello": "Requests from a consumer that had not said hello.",
    "requests_over_limit": "Requests refused because a consumer exceeded a limit.",
    "consumers_over_limit": "Hellos refused because the producer had its most consumers.",
    "version_mismatches": "Hellos offering no protocol version this producer speaks.",
    "consumers_expired": "Consumers forgotten after they stopped sending heartbeats.",
    "consumers_not_reading": "Consumers forgotten because they stopped reading their frames.",
    "generation_errors": "Batches whose model call failed.",
    "encoding_errors": "Batches whose frames could not be encoded for the wire.",
    "internal_errors": "Messages whose handling failed with an internal error.",
    "refused_auth": "Connection attempts refused at the CURVE handshake (the sum of the two below).",
    "refused_unknown_key": "CURVE handshakes refused because the allow-list lacks the consumer's key.",
    "refused_handshake": "CURVE handshakes that failed: no key, or the wrong server key.",
    "allow_list_reloads": "Times the CURVE allow-list directory was read again.",
    "oversized_messages": "Messages with more parts than any real message has; their sender is ignored for a while.",
    "messages_from_banned_peers": "Messages dropped because their sender had sent an oversized message.",
    "status_rate_limited": "Status requests left unanswered: the peer asked more often than its rate allows.",
}


#: The producer's histograms are written by its generation and send threads and read by the status thread.
Histogram = SharedHistogram


class ProducerStats:
    """Counters by name (frames_generated, frames_sent, malformed_messages, ...) and the three histograms."""

    def __init__(self) -> None:
        self._counters: Counter = Counter(dict.fromkeys(COUNTER_HELP, 0))
        self._lock = threading.Lock()
        self.histograms = {
            "model_seconds": Histogram(SECONDS_BUCKETS),
            "post_seconds": Histogram(SECONDS_BUCKETS),
            "batch_size": Histogram(BATCH_BUCKETS),
        }

    def count(self, name: str, n: int = 1) -> int:
        """Add ``n`` to counter ``name``; return its new value."""
        with self._lock:
            self._counters[name] += n
            return self._counters[name]

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters."""
        with self._lock:
            return dict(self._counters)

    @property
    def model_s(self) -> float:
        return self.histograms["model_seconds"].snapshot()["sum"]

    @property
    def post_s(self) -> float:
        return self.histograms["post_seconds"].snapshot()["sum"]

    def snapshot(self) -> tuple[dict, dict]:
        return self.counters, {name: h.snapshot() for name, h in self.histograms.items()}
