"""The wire protocol's vocabulary, schema checks, version negotiation, frame checksum and codecs (no sockets
except where an endpoint check needs one)."""

from __future__ import annotations

import socket

import msgpack
import numpy as np
import pytest

from pxdbg import models
from pxdbg.shared import codecs, protocol, transport
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.frame import SparseFrame

IDENTITY = "parametric:0123456789abcdef/fp32"


@pytest.fixture(scope="module")
def frames():
    """Frames of the default model, as producers send them."""
    return models.load("parametric").frames(77, range(12))


def _nested(depth: int):
    x: list = []
    for _ in range(depth):
        x = [x]
    return x


def test_builders_pass_their_own_schema():
    msgs = [
        protocol.hello({"model": "parametric", "checkpoint_sha256": "ab" * 32, "precision": "fp32"}, "host:1"),
        protocol.request(5, [0, 1, 2]),
        protocol.ping(),
        protocol.pong(),
        protocol.bye(),
        protocol.status(),
        protocol.snapshot({"consumers": 1, "counters": {"frames_sent": 3}}),
        protocol.welcome({"model": "parametric"}, {"pid": 1, "host": "h"}, version=2, codec="zstd"),
        protocol.error("no", code=protocol.E_LIMIT, seed=1, indices=[4, 5]),
        protocol.goodbye("draining", final=False, dropped={7: [3, 1, 2], 8: []}),
    ]
    kinds = [protocol.unpack(m)["t"] for m in msgs]
    assert kinds == ["hello", "req", "ping", "pong", "bye", "status", "snapshot", "welcome", "error", "goodbye"]
    final, dropped = protocol.parse_goodbye(protocol.unpack(msgs[-1]))
    assert final is False and dropped == {7: [1, 2, 3]}
    hello = protocol.parse_hello(protocol.unpack(msgs[0]))
    assert hello.versions == (protocol.MIN_PROTOCOL_VERSION, protocol.PROTOCOL_VERSION)
    assert hello.codecs == tuple(codecs.available())


@pytest.mark.parametrize(
    "header",
    [
        {"v": _nested(1000), "t": "hello"},  # nested 1000 deep in the version field
        {"v": 2, "t": "hello", "client": _nested(1000)},
        {"v": 2, "t": "req", "seed": _nested(1000), "idx": [0]},
        {"v": 2, "t": "req", "seed": 1, "idx": [_nested(1000)]},
        {"v": 2**64 - 1, "t": "hello"},  # huge values
        {"v": 2, "t": "req", "seed": 2**64 - 1, "idx": [0]},
        {"v": 2, "t": "req", "seed": 2**63, "idx": [0]},
        {"v": 2, "t": "hello", "client": "x" * 100_000},
        {"v": 2, "t": "hello", "versions": [1, 2, 3]},
        {"v": 2, "t": "hello", "codecs": "zstd"},  # wrong types
        {"v": 2, "t": "hello", "want": {"model": [1]}},
        {"v": "2", "t": "hello"},
        {"v": 2, "t": 5},
        {"v": 2, "t": "x" * 1000},
        {"v": 2, "t": "req", "seed": 1.5, "idx": [0]},
        {"v": 2, "t": "req", "seed": True, "idx": [0]},
        {"v": 2, "t": "req", "seed": 1, "idx": []},
        {"v": 2, "t": "req", "seed": 1, "idx": list(range(protocol.MAX_INDICES_PER_REQUEST + 1))},
        {"v": 2, "t": "req", "seed": 1},
        {"v": 2, "t": "goodbye", "reason": "r", "final": True, "dropped": [[1, [-1]]]},
    ],
)
def test_hostile_headers_are_protocol_errors_that_quote_no_value(header):
    raw = msgpack.packb(header, use_bin_type=True)
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.unpack(raw, any_version=True)
    text = str(err.value)
    assert len(text) < 300 and "[[" not in text and "xxxxx" not in text


def test_unpack_refuses_what_is_not_a_header():
    for raw in (b"\xc1", b"", msgpack.packb([1, 2]), msgpack.packb({1: 2}), b"\x92" * 10):
        with pytest.raises(protocol.ProtocolError):
            protocol.unpack(raw)


def test_unknown_kinds_and_extra_fields_pass_for_newer_peers():
    assert protocol.unpack(protocol.pack({"t": "launch"}))["t"] == "launch"
    header = protocol.unpack(protocol.pack({"t": "ping", "future": _nested(50)}))
    assert header["t"] == "ping"


def test_version_negotiation_names_both_versions():
    lo, hi = protocol.MIN_PROTOCOL_VERSION, protocol.PROTOCOL_VERSION
    assert protocol.negotiate_version((lo, hi)) == hi
    assert protocol.negotiate_version((lo, hi + 5)) == hi  # a newer consumer that still speaks ours
    assert protocol.negotiate_version((1, 1)) is None
    assert protocol.negotiate_version((hi + 1, hi + 3)) is None
    old = protocol.version_mismatch((1, 1))
    assert f"this producer speaks version {hi}" in old and "the consumer 1" in old and "upgrade the consumer" in old
    new = protocol.version_mismatch((hi + 1, hi + 3))
    assert f"the consumer {hi + 1}..{hi + 3}" in new and "upgrade the producer" in new
    with pytest.raises(protocol.ProtocolError, match="protocol version 99"):
        protocol.unpack(protocol.pack({"t": "ping"}, version=99))
    # an error for an old consumer carries its version, so that consumer can read it
    assert protocol.unpack(protocol.error(old, code=protocol.E_VERSION, version=1), any_version=True)["v"] == 1


def _parts(enc: protocol.EncodedFrame):
    return protocol.unpack(protocol.pack(enc.header)), [bytes(memoryview(b)) for b in enc.buffers]


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_checksum_covers_seed_index_and_identity(frames, codec):
    header, buffers = _parts(protocol.encode_frame(9, 4, IDENTITY, frames[5], codec=codec))
    assert protocol.decode_frame(header, buffers) == frames[5]
    for field, value in (("idx", 5), ("seed", 10), ("id", IDENTITY.replace("fp32", "bf16"))):
        relabelled = dict(header, **{field: value})  # a frame passed off as another one, with its valid CRC
        with pytest.raises(protocol.ProtocolError, match="checksum mismatch"):
            protocol.decode_frame(relabelled, buffers)
    corrupt = list(buffers)
    corrupt[-1] = corrupt[-1][:-1] + bytes([corrupt[-1][-1] ^ 1])
    with pytest.raises(protocol.ProtocolError, match="checksum mismatch"):
        protocol.decode_frame(header, corrupt)


def test_zstd_round_trips_every_sparse_encoding(frames):
    small = [SparseFrame(f.sensor[:3000], f.u[:3000], f.v[:3000], f.charge[:3000]) for f in frames[:2]]
    one_per_row = SparseFrame.from_pixels(
        np.repeat(np.arange(40), 2), np.tile([0, 249], 40), np.full(80, 767), np.full(80, 9)
    )
    cases = [*frames[:3], *small, SparseFrame.empty(), one_per_row]
    seen = set()
    for i, frame in enumerate(cases):
        enc = protocol.encode_frame(3, i, IDENTITY, frame, codec="zstd")
        seen.add(enc.header["enc"])
        assert enc.header["codec"] == "zstd" and len(enc.buffers) == 1
        header, buffers = _parts(enc)
        assert protocol.decode_frame(header, buffers) == frame
    assert seen == {"rows", "sensors"}
    dense = np.full((40, 250, 768), 7, np.uint8)  # dense frames go as they are
    enc = protocol.encode_frame(3, 0, IDENTITY, dense, codec="zstd")
    assert enc.header["enc"] == "dense" and "codec" not in enc.header


def test_zstd_refuses_forged_payloads(frames):
    """A producer that computes a valid checksum over a forged payload still gets no frame through."""
    import zstandard

    def forged(blob: bytes, n: int, enc: str = "rows"):
        header = {"t": "frame", "v": 2, "seed": 1, "idx": 0, "id": IDENTITY, "enc": enc, "n": n, "codec": "zstd"}
        header["crc"] = protocol._crc(1, 0, IDENTITY, enc, n, "zstd", [blob])
        return protocol.decode_frame(header, [blob])

    n = frames[0].n_digits
    raw_size = 2 * protocol.N_ROWS + 3 * n
    with pytest.raises(protocol.ProtocolError, match="does not decompress"):  # a bomb: declares far more
        forged(zstandard.ZstdCompressor().compress(bytes(raw_size * 50)), n)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(raw_size))
    with pytest.raises(protocol.ProtocolError, match="does not decompress"):
        forged(no_size, n)
    with pytest.raises(protocol.ProtocolError, match="does not decompress"):
        forged(b"not zstd at all", n)
    with pytest.raises(protocol.ProtocolError):  # right size, nonsense content: the digits fail validation
        forged(zstandard.ZstdCompressor().compress(bytes(2 * protocol.N_ROWS) + bytes([1]) * (3 * n)), n)
    with pytest.raises(protocol.ProtocolError, match="wire codec"):
        header = {"t": "frame", "v": 2, "seed": 1, "idx": 0, "id": IDENTITY, "enc": "rows", "n": 0, "codec": "lzma"}
        header["crc"] = protocol._crc(1, 0, IDENTITY, "rows", 0, "lzma", [b""])
        protocol.decode_frame(header, [b""])


def test_codec_registry_and_negotiation():
    assert "zstd" in codecs.CODECS and codecs.available() == ["zstd"]
    assert codecs.negotiate(["zstd"]) == "zstd"
    assert codecs.negotiate([]) is None and codecs.negotiate(["lz9"]) is None
    assert codecs.negotiate(["zstd"], ours=[]) is None
    with pytest.raises(codecs.CodecError, match="unknown wire codec"):
        codecs.get("lz9")


def test_compression_figures(frames):
    """The figures for the README: bytes per digit and the time each codec adds per frame, on one core."""
    rows = codecs.measure(frames)
    for row in rows:
        print(
            f"codec {row['codec']:5s}: {row['bytes_per_digit']:.2f} bytes/digit, encode {row['encode_ms']:.2f} ms "
            f"(+{row['added_encode_ms']:.2f}), decode {row['decode_ms']:.2f} ms (+{row['added_decode_ms']:.2f}) "
            f"per frame of {np.mean([f.n_digits for f in frames]):.0f} digits"
        )
    by_name = {row["codec"]: row for row in rows}
    assert by_name["none"]["bytes_per_digit"] > 3.0
    assert by_name["zstd"]["bytes_per_digit"] <= 2.5  # the target; an entropy estimate is ~1.75


@pytest.mark.parametrize(
    ("endpoint", "match"),
    [
        ("tcp://127.0.0.1:99999", "port must be a number in 1..65535"),
        ("tcp://127.0.0.1:0", "port must be"),
        ("tcp://127.0.0.1:notaport", "port must be"),
        ("tcp://127.0.0.1", "is not tcp://host:port"),
        ("tcp://:5555", "is not tcp://host:port"),
        ("tcp://a b:5555", "is not tcp://host:port"),
        ("udp://127.0.0.1:5555", "must be tcp:// or ipc://"),
        ("garbage", "has no scheme"),
        ("ipc://", "names no socket path"),
        ("ipc:///" + "x" * 200, "at most 107 bytes"),
        ("", "an endpoint is a string"),
    ],
)
def test_bad_endpoints_are_refused_before_any_socket(endpoint, match):
    with pytest.raises(ConfigError, match=match):
        transport.check_endpoint(endpoint, bind=True)


def test_good_endpoints_pass():
    for ep in ("tcp://*:5555", "tcp://127.0.0.1:*", "tcp://node-1.cluster:65535", "tcp://[::1]:80", "ipc:///tmp/x"):
        assert transport.check_endpoint(ep, bind=True) == ep
    with pytest.raises(ConfigError):
        transport.check_endpoint("tcp://*:5555")  # a consumer connects to a host, not to every interface


def test_ipc_path_in_use_is_refused(tmp_path):
    path = str(tmp_path / "live.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(1)
        with pytest.raises(transport.EndpointInUseError, match="another process is serving it"):
            transport.check_ipc_free(path)
    finally:
        server.close()
    transport.check_ipc_free(path)  # a socket file left by a process that is gone may be replaced
    (tmp_path / "file").write_text("precious")
    with pytest.raises(transport.EndpointInUseError, match="not a socket"):
        transport.check_ipc_free(str(tmp_path / "file"))


def test_snapshot_shape_is_checked():
    good = {
        "identity": "m",
        "host": "h",
        "pid": 1,
        "device": "cpu",
        "endpoints": ["tcp://a:1"],
        "uptime_s": 1.5,
        "ready": True,
        "last_progress_s": 0.1,
        "consumers": 2,
        "pending": 3,
        "counters": {"frames_sent": 4},
        "histograms": {"batch_size": {"buckets": [1, 2], "counts": [1, 1, 2], "sum": 3.0, "count": 2}},
    }
    header = protocol.unpack(protocol.snapshot(good))
    assert protocol.parse_snapshot(header) == good
    bad = [
        {**good, "pid": "1"},
        {**good, "host": _nested(1000)},
        {k: v for k, v in good.items() if k != "ready"},
        {**good, "counters": {"frames_sent": -1}},
        {**good, "histograms": {"batch_size": {"buckets": [1], "counts": [1], "sum": 1, "count": 1}}},
    ]
    for snap in bad:
        with pytest.raises(protocol.ProtocolError, match="snapshot"):
            protocol.parse_snapshot(protocol.unpack(protocol.snapshot(snap)))
