"""Helpers for the pipeline tests: producer subprocesses with guaranteed cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack

PRODUCE = [sys.executable, "-m", "pxdbg", "produce"]


class Producers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.tmp}/{name}.sock"

    def start(self, name: str, *extra: str) -> str:
        ep = self.endpoint(name)
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [*PRODUCE, "--bind", ep, *extra], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        return ep

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def process_gone(pid: int) -> bool:
    """True if the process no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


@contextlib.contextmanager
def producers(tmp_path: Path):
    p = Producers(tmp_path)
    try:
        yield p
    finally:
        p.close()


# -- fake producers: raw ROUTER sockets that serve synthetic frames, well or badly ----------------------
def synthetic_frame(seed: int, idx: int, n: int = 3000):
    """A deterministic frame of ``n`` random digits for (seed, idx): cheap to make, different for every index."""
    import numpy as np

    from pxdbg.shared.frame import SparseFrame
    from pxdbg.shared.geometry import N_SENSORS, N_U, N_V

    rng = np.random.default_rng([seed % 2**63, idx])
    keys = np.unique(rng.integers(0, N_SENSORS * N_U * N_V, n))
    charge = rng.integers(1, 256, keys.size).astype(np.uint8)
    sensor, rest = np.divmod(keys, N_U * N_V)
    u, v = np.divmod(rest, N_V)
    return SparseFrame(sensor.astype(np.uint8), u.astype(np.uint8), v.astype(np.uint16), charge)


BEHAVIOURS = (
    "good",  # serves every frame asked for, each after `delay` seconds (one at a time)
    "mute",  # welcomes and answers pings, but sends no frame (after the first `after` frames)
    "corrupt",  # flips a bit in every frame
    "relabel",  # sends frame i+1 labelled as frame i (checksum of the original header)
    "wrong_seed",  # frames of another stream, intact
    "wrong_frame_identity",  # frames that claim another model, intact
    "wrong_identity",  # welcomes with another model identity
    "error",  # answers every request with an error
    "nested",  # answers every request with a message nested 1000 deep
    "unrequested",  # serves what is asked, and frames far ahead nobody asked for
    "drain",  # after `after` frames says goodbye (draining), listing what it will not send
    "limit",  # takes at most `after` pending frames per consumer, refuses the rest with a limit error
    "rehello",  # answers every request with "unknown consumer, say hello again"
    "bad_version",  # welcomes with a protocol version the consumer never offered
    "bad_codec",  # welcomes with a wire codec the consumer never offered
    "forge",  # sends frame i+1's digits as frame i, with a valid checksum for frame i (CRC-32 is no MAC)
)


class FakeProducer(threading.Thread):
    """A producer on a raw ROUTER socket, in a thread of the test process. Records every frame index asked of it.

    ``behaviour`` is one of :data:`BEHAVIOURS`; ``delay`` makes it serve one frame per ``delay`` seconds (while
    still answering pings at once); ``identity`` is the model identity it claims.
    """

    def __init__(self, endpoint: str, identity, behaviour: str = "good", *, delay: float = 0.0, after: int = 0) -> None:
        import zmq

        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        super().__init__(daemon=True, name=f"fake-{behaviour}")
        self.endpoint, self.identity, self.behaviour = endpoint, identity, behaviour
        self.delay, self.after = delay, after
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.requested: list[int] = []
        self.sent = 0
        self.refused = 0
        self.drained_at: float | None = None
        self.stop_event = threading.Event()
        self._queue: list[tuple[bytes, int, int]] = []
        self._due = 0.0

    def __enter__(self) -> FakeProducer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(10)
        self.ctx.destroy(linger=0)

    # -- messages
    def _identity_dict(self) -> dict:
        d = self.identity.as_dict()
        if self.behaviour == "wrong_identity":
            d = {**d, "checkpoint_sha256": "cd" * 32}
        return d

    def _welcome(self) -> bytes:
        from pxdbg.shared import protocol

        info = {"pid": os.getpid(), "host": "fake", "device": "cpu"}
        if self.behaviour in ("bad_version", "bad_codec"):
            version = 99 if self.behaviour == "bad_version" else protocol.PROTOCOL_VERSION
            codec = "rot13" if self.behaviour == "bad_codec" else None
            return protocol.welcome(self._identity_dict(), info, version=version, codec=codec)
        if hasattr(protocol, "welcome"):
            return protocol.welcome(self._identity_dict(), info, version=protocol.PROTOCOL_VERSION, codec=None)
        return protocol.pack({"t": "welcome", "identity": self._identity_dict(), "producer": info})

    def _frame_parts(self, seed: int, idx: int, label: int | None = None, ident: str | None = None) -> list:
        from pxdbg.shared import protocol

        enc = protocol.encode_frame(seed, idx, ident or str(self.identity), synthetic_frame(seed, idx))
        parts = [bytes(memoryview(b)) for b in enc.parts()]
        if label is not None:  # relabel: the header of another frame index, its checksum left as it was
            parts[0] = protocol.pack({**enc.header, "idx": label})
        return parts

    def _serve(self, cid: bytes, seed: int, idx: int) -> None:
        from pxdbg.shared import protocol

        b = self.behaviour
        if b == "mute" and self.sent >= self.after:
            return
        if b == "rehello":
            msg = protocol.error("unknown consumer", code="unknown_consumer", fatal=False, rehello=True)
            self.sock.send_multipart([cid, msg])
            return
        if b == "error":
            msg = {
                "t": "error",
                "fatal": True,
                "code": "generation",
                "seed": seed,
                "idx": [idx],
                "msg": "RuntimeError: CUDA out of memory (simulated)",
            }
            self.sock.send_multipart([cid, protocol.pack(msg)])
            return
        if b == "nested":
            deep: object = 0
            for _ in range(1000):
                deep = [deep]
            self.sock.send_multipart([cid, msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "frame", "seed": deep})])
            return
        if b == "forge":
            from pxdbg.shared import protocol as proto

            enc = proto.encode_frame(seed, idx, str(self.identity), synthetic_frame(seed, idx + 1))
            parts = [bytes(memoryview(p)) for p in enc.parts()]
        elif b == "relabel":
            parts = self._frame_parts(seed, idx + 1, label=idx)
        elif b == "wrong_seed":
            parts = self._frame_parts(seed + 1, idx)
        elif b == "wrong_frame_identity":
            parts = self._frame_parts(seed, idx, ident="convnet:0123456789abcdef/fp32")
        else:
            parts = self._frame_parts(seed, idx)
        if b == "corrupt":
            last = bytearray(parts[-1])
            last[len(last) // 2] ^= 0x10
            parts[-1] = bytes(last)
        self.sock.send_multipart([cid, *parts])
        self.sent += 1
        if b == "unrequested":
            for ahead in range(idx + 1000, idx + 1020):
                self.sock.send_multipart([cid, *self._frame_parts(seed, ahead)])

    def _drain(self) -> None:
        from pxdbg.shared import protocol

        dropped: dict[bytes, dict[int, list[int]]] = {}
        for cid, seed, idx in self._queue:
            dropped.setdefault(cid, {}).setdefault(seed, []).append(idx)
        for cid, frames in dropped.items():
            self.sock.send_multipart(
                [cid, protocol.goodbye("SIGTERM: the producer is shutting down", final=False, dropped=frames)]
            )
        self._queue.clear()
        self.drained_at = time.monotonic()

    def run(self) -> None:
        import zmq

        from pxdbg.shared import protocol

        while not self.stop_event.is_set():
            now = time.monotonic()
            wait = 0.02 if not self._queue else max(0.0, min(0.02, self._due - now))
            if self.sock.poll(int(wait * 1000)):
                while True:
                    try:
                        cid, raw, *_ = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        h = protocol.unpack(raw)
                    except protocol.ProtocolError:
                        continue
                    if h["t"] == "hello":
                        self.sock.send_multipart([cid, self._welcome()])
                    elif h["t"] == "ping":
                        self.sock.send_multipart([cid, protocol.pack({"t": "pong"})])
                    elif h["t"] == "req" and self.drained_at is None:
                        refused = []
                        for idx in h["idx"]:
                            if self.behaviour == "limit" and len(self._queue) >= self.after:
                                refused.append(idx)
                                continue
                            self.requested.append(idx)
                            self._queue.append((cid, h["seed"], idx))
                        if refused:
                            self.refused += len(refused)
                            msg = protocol.error(
                                "more than 3 frames asked", code="limit", seed=h["seed"], indices=refused
                            )
                            self.sock.send_multipart([cid, msg])
            now = time.monotonic()
            while self._queue and now >= self._due and self.drained_at is None:
                if self.behaviour == "drain" and self.sent >= self.after:
                    self._drain()
                    break
                cid, seed, idx = self._queue.pop(0)
                self._serve(cid, seed, idx)
                if self.delay:
                    self._due = now + self.delay
                    break
