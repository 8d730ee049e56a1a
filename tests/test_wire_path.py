"""One wire path: what a producer sends for a generated batch is :meth:`BackgroundModel.to_wire` and
:meth:`BackgroundModel.encode`, the same calls ``pxdbg bench`` times, so the bench measures the producer's code and
not a copy of it. The GAN's forward call is replaced by fixed frames (the network is not under test here); the
wire path after it is the real one, served by a real producer over a real socket."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zmq = pytest.importorskip("zmq")

from pxdbg.bench import gan_model as _gan  # noqa: E402
from pxdbg.producer.server import ProducerServer  # noqa: E402
from pxdbg.shared import codecs, protocol  # noqa: E402
from pxdbg.shared.frame import SparseFrame  # noqa: E402
from pxdbg.shared.geometry import FRAME_PIXELS  # noqa: E402

SHAPE = (40, 250, 768)


def _dense(key: tuple[int, int]) -> torch.Tensor:
    """A frame per (seed, index): index 0 hits every pixel (an untrained GAN), the others ~1 % of them."""
    seed, idx = key
    rng = np.random.default_rng([seed, idx])
    if idx == 0:
        return torch.from_numpy(rng.integers(1, 256, SHAPE, dtype=np.uint8))
    frame = rng.integers(1, 256, SHAPE, dtype=np.uint8)
    frame[rng.random(SHAPE) > 0.01] = 0
    return torch.from_numpy(frame)


@pytest.fixture(scope="module")
def model():
    """A convnet :class:`BackgroundModel` (its real engine) whose forward call returns :func:`_dense` frames."""
    m = _gan("convnet", None)
    m.dense_frames_for = lambda keys: torch.stack([_dense(k) for k in keys])
    return m


def test_to_wire_keeps_a_full_frame_dense_and_sparsifies_the_rest(model):
    keys = [(5, 0), (5, 1), (5, 2)]
    dense = model.dense_frames_for(keys)
    wire = model.to_wire(dense)
    assert isinstance(wire[0], np.ndarray) and np.array_equal(wire[0], dense[0].numpy())
    for frame, expected in zip(wire[1:], dense[1:]):
        assert isinstance(frame, SparseFrame)
        assert 0 < frame.n_digits < protocol.SPARSE_MAX_DIGITS
        assert np.array_equal(frame.to_dense(), expected.numpy())
    assert model.wire_frames_for(keys)[1].n_digits == wire[1].n_digits


@pytest.mark.parametrize("codec", [None, *codecs.available()])
def test_encode_round_trips_in_each_codec(model, codec):
    dense = model.dense_frames_for([(9, 0), (9, 3)])
    for idx, frame in zip((0, 3), model.to_wire(dense)):
        enc = model.encode(9, idx, frame, codec=codec)
        assert enc.header["id"] == str(model.identity)
        assert enc.header.get("codec") == (None if idx == 0 else codec)  # a dense frame goes uncompressed
        assert enc.header["enc"] == ("dense" if idx == 0 else "rows")
        parts = enc.parts()
        got = protocol.decode_frame(protocol.unpack(parts[0]), parts[1:])
        assert got.n_digits == (FRAME_PIXELS if idx == 0 else frame.n_digits)
        assert np.array_equal(got.to_dense(), dense[0 if idx == 0 else 1].numpy())


def test_the_producer_sends_the_bytes_the_bench_times(model, tmp_path):
    """Each frame message a producer sends equals ``model.encode(model.to_wire(...))`` in the negotiated codec."""
    ep = f"ipc://{tmp_path}/p.sock"
    server = ProducerServer(model, ep, max_batch=2)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, kwargs={"ready": ready}, daemon=True)
    thread.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    try:
        assert ready.wait(30)
        sock.connect(ep)
        sock.send(protocol.hello(None, "wire-path-test", codec_names=codecs.available()))
        welcome = protocol.unpack(sock.recv_multipart()[0])
        assert welcome["t"] == protocol.WELCOME
        codec = welcome.get("codec")
        assert codec == codecs.negotiate(codecs.available(), codecs.available())
        sock.send(protocol.request(7, [0, 1, 2]))
        got = {}
        while len(got) < 3:
            parts = sock.recv_multipart()
            header = protocol.unpack(parts[0])
            assert header["t"] == protocol.FRAME, header
            got[header["idx"]] = parts
    finally:
        sock.close()
        server.stop()
        thread.join(30)
        ctx.term()
    assert not thread.is_alive()
    expected = model.to_wire(model.dense_frames_for([(7, i) for i in range(3)]))
    for idx, frame in enumerate(expected):
        want = [bytes(memoryview(p)) for p in model.encode(7, idx, frame, codec=codec).parts()]
        assert got[idx] == want, idx
