"""A real producer (ProducerServer, parametric model) whose model is slowed down or hangs.

Run on a node by the farm tests (``srun ... python tests/farm/odd_producer.py --bind tcp://ADDR:PORT``):
``--slow F`` makes every batch take F times as long; ``--hang-after N`` makes the model hang for good after N
batches, while the network thread keeps answering heartbeats (what a stuck GPU looks like to consumers).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time

from pxdbg.models import load
from pxdbg.producer.server import ProducerServer


class OddModel:
    def __init__(self, model, slow: float, hang_after: int | None, stop: threading.Event) -> None:
        self._model, self.slow, self.hang_after, self.stop = model, slow, hang_after, stop
        self.batches = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def wire_frames_for(self, keys):
        """The producer's one call into its model (everything else passes through to the real model)."""
        self.batches += 1
        if self.hang_after is not None and self.batches > self.hang_after:
            logging.warning("the model hangs now (batch %d)", self.batches)
            self.stop.wait(600)  # bounded: released when the producer stops
        t0 = time.perf_counter()
        out = self._model.wire_frames_for(keys)
        self.stop.wait((time.perf_counter() - t0) * (self.slow - 1))
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--slow", type=float, default=1.0)
    p.add_argument("--hang-after", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    stop = threading.Event()
    model = OddModel(load("parametric"), args.slow, args.hang_after, stop)
    server = ProducerServer(model, args.bind, max_batch=8, grace=1.0)

    def on_signal(*_):
        stop.set()
        server.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.serve()


if __name__ == "__main__":
    main()
