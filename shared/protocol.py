"""The wire protocol between consumers (DEALER) and producers (ROUTER): its vocabulary in one module.

Every message is a msgpack header (a map with the sender's protocol version ``v`` and the message kind ``t``)
followed, for frames, by raw array buffers. Nothing is ever pickled. Each kind has a builder here (what a sender
calls) and a schema (what :func:`unpack` checks on arrival, before any value is used or formatted: types, ranges
and lengths; error texts name fields and types, never a received value).

consumer -> producer
- ``hello`` {want: identity or None, client: str, versions: [lo, hi], codecs: [names]}: the protocol versions
  and wire codecs the consumer speaks; the producer answers ``welcome`` or, for versions it does not speak, an
  ``error`` naming both ranges (sent with the consumer's version number, so an older consumer can read it).
- ``req`` {seed, idx: [frame indices]}; ``ping``; ``bye``.
- ``status``: answered with ``snapshot`` {snapshot: {...}} without a hello (``pxdbg farm status``).
producer -> consumer
- ``welcome`` {identity, producer: {...}, version: the version both speak, codec: the wire codec or None};
- ``frame`` {seed, idx, id, enc, n, codec, crc} + buffers; ``pong``;
- ``error`` {msg, fatal, code, seed?, idx?, rehello?}: a generation failure shipped back to be raised
  (``code`` "generation"/"encoding"), a limit (``code`` "limit"), a version mismatch (``code`` "version"), or
  ``rehello`` (the producer forgot this consumer: say hello again; what was asked is lost);
- ``goodbye`` {reason, final, dropped: [[seed, [idx, ...]], ...]}: the producer is shutting down. The frames in
  ``dropped`` will not come: re-issue them elsewhere at once. Other requested frames are being finished and
  still arrive, unless ``final``: then nothing more comes from this producer.

Frame encodings (digits in canonical order; the encoder picks the smallest):
- ``sensors``: per-sensor counts (40 x uint32), u (uint8), v (uint16), charge (uint8): 4 bytes per digit;
- ``rows``: per-(sensor, u) row counts (10,000 x uint16), v (uint16), charge (uint8): 3 bytes per digit,
  smaller above ~20,000 digits (a typical frame has ~69,000);
- ``dense``: the (40, 250, 768) uint8 array, when it is smaller than either (an untrained GAN hits every
  pixel), so no frame is ever larger than 7.68 MB on the wire.
A negotiated ``codec`` (see :mod:`pxdbg.shared.codecs`) compresses the sparse encodings into one buffer.
``crc`` is the CRC-32 of the fields that identify the frame (seed, idx, id, enc, n, codec) followed by the
buffers as sent, checked by :func:`decode_frame`: a frame relabelled as another one fails it.

One module on purpose, near 500 lines: every message, its schema and its frame encoding are read together when
the protocol changes (the generic field checks live in :mod:`pxdbg.shared.fieldchecks`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import msgpack
import numpy as np

from pxdbg.shared import codecs
from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.fieldchecks import any_map, boolean, integer, list_of, map_of_scalars, nullable, number, text
from pxdbg.shared.frame import CHARGE_DTYPE, U_DTYPE, V_DTYPE, FrameError, SparseFrame
from pxdbg.shared.geometry import FRAME_PIXELS, FRAME_SHAPE, N_SENSORS, N_U
from pxdbg.shared.seeding import SEED_MAX, SEED_MIN

#: The protocol version this code speaks best, and the oldest one it still speaks. Version 1 (before hello
#: negotiated anything) had a checksum over the buffers alone; it is not spoken any more.
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 2
#: Largest message a consumer accepts (a dense frame plus headroom), bytes.
MAX_FRAME_MESSAGE = 16 * 1024 * 1024
#: Largest part of a message a consumer accepts (a dense frame's buffer, 7.68 MB, fits), bytes: libzmq drops a
#: connection that sends a larger one before it holds more than that part.
MAX_FRAME_PART = 8 * 1024 * 1024
#: Largest message part a producer accepts, bytes: the largest request (4,096 indices, about 37 kB) or hello
#: fits; libzmq drops a connection that sends a larger part before it holds more than that part.
MAX_REQUEST_MESSAGE = 64 * 1024
#: Most frame indices in one request.
MAX_INDICES_PER_REQUEST = 4096
#: Longest text field (client names, error messages, reasons), characters.
MAX_TEXT = 4096

# -- message kinds --------------------------------------------------------------------------------------
HELLO, REQUEST, PING, BYE, STATUS = "hello", "req", "ping", "bye", "status"
WELCOME, FRAME, PONG, ERROR, GOODBYE, SNAPSHOT = "welcome", "frame", "pong", "error", "goodbye", "snapshot"
#: What a consumer sends, and what a producer sends.
TO_PRODUCER = (HELLO, REQUEST, PING, BYE, STATUS)
TO_CONSUMER = (WELCOME, FRAME, PONG, ERROR, GOODBYE, SNAPSHOT)

# error codes
E_GENERATION, E_ENCODING, E_LIMIT, E_VERSION = "generation", "encoding", "limit", "version"
E_UNKNOWN_CONSUMER = "unknown_consumer"

N_ROWS = N_SENSORS * N_U
#: Above this many digits a frame is smaller dense than in any sparse encoding.
SPARSE_MAX_DIGITS = (FRAME_PIXELS - 2 * N_ROWS) // 3
ENCODINGS = {"sensors": 4, "rows": 3, "dense": 1}  # encoding -> number of raw buffers
_ROW_SENSOR = (np.arange(N_ROWS) // N_U).astype(np.uint8)
_ROW_U = (np.arange(N_ROWS) % N_U).astype(np.uint8)
_SENSOR_IDS = np.arange(N_SENSORS, dtype=np.uint8)


class ProtocolError(PxdbgError, ValueError):
    """A message is malformed, truncated, oversized, unexpected or fails its checksum."""


# -- schema -----------------------------------------------------------------------------------------------
_SEED = integer(SEED_MIN, SEED_MAX)
_INDEX = integer(0, 2**63 - 1)
_VERSION = integer(0, 65535)
_NAME = text(64)
_dropped_entry = list_of(lambda x: None, 2, 2)  # [seed, [idx...]], refined below


def _dropped(value) -> str | None:
    why = list_of(_dropped_entry, 64)(value)
    if why is not None:
        return why
    for seed, indices in value:
        why = _SEED(seed) or list_of(_INDEX, MAX_INDICES_PER_REQUEST)(indices)
        if why is not None:
            return f"a list of [seed, [frame indices]] pairs, with {why}"
    return None


#: Per kind: field -> (check, required). Fields not listed are ignored (a newer peer may add some).
SCHEMA: dict[str, dict[str, tuple]] = {
    HELLO: {
        "want": (nullable(map_of_scalars(8)), False),
        "client": (text(128), False),
        "versions": (list_of(_VERSION, 2, 2), False),
        "codecs": (list_of(_NAME, 16), False),
    },
    REQUEST: {"seed": (_SEED, True), "idx": (list_of(_INDEX, MAX_INDICES_PER_REQUEST, 1), True)},
    PING: {},
    BYE: {},
    STATUS: {},
    PONG: {},
    WELCOME: {
        "identity": (map_of_scalars(8), True),
        "producer": (map_of_scalars(), False),
        "version": (_VERSION, False),
        "codec": (nullable(_NAME), False),
    },
    FRAME: {
        "seed": (_SEED, True),
        "idx": (_INDEX, True),
        "id": (text(256), True),
        "enc": (_NAME, True),
        "n": (integer(0, FRAME_PIXELS), True),
        "codec": (nullable(_NAME), False),
        "crc": (integer(0, 2**32 - 1), True),
    },
    ERROR: {
        "msg": (text(MAX_TEXT), True),
        "fatal": (boolean, False),
        "code": (_NAME, False),
        "seed": (_SEED, False),
        "idx": (list_of(_INDEX, MAX_INDICES_PER_REQUEST), False),
        "rehello": (boolean, False),
    },
    GOODBYE: {"reason": (text(MAX_TEXT), True), "final": (boolean, True), "dropped": (_dropped, True)},
    SNAPSHOT: {"snapshot": (any_map, True)},
}


def check_schema(header: dict) -> dict:
    """Check the fields of a known message kind; raise :class:`ProtocolError` naming the first bad field."""
    schema = SCHEMA.get(header["t"])
    if schema is None:
        return header
    for name, (check, required) in schema.items():
        if name not in header:
            if required:
                raise ProtocolError(f"a {header['t']!r} message without its {name!r} field")
            continue
        why = check(header[name])
        if why is not None:
            raise ProtocolError(f"field {name!r} of a {header['t']!r} message must be {why}")
    return header


def pack(header: dict, *, version: int = PROTOCOL_VERSION) -> bytes:
    """A header as sent: ``header`` with the protocol version ``v``."""
    return msgpack.packb({"v": version, **header}, use_bin_type=True)


def unpack(raw, *, any_version: bool = False) -> dict:
    """Parse and schema-check a header frame; raise :class:`ProtocolError` for anything malformed.

    Unless ``any_version`` (a producer reading a ``hello``, to answer a version it does not speak), the header
    must carry a protocol version in ``MIN_PROTOCOL_VERSION..PROTOCOL_VERSION``. Kinds this module does not know
    pass with ``v`` and ``t`` checked (the receiver counts them as unexpected).
    """
    try:
        header = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input; its texts quote no values
        raise ProtocolError(f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict) or _NAME(header.get("t")) is not None:
        raise ProtocolError("header is not a map with a message type")
    why = _VERSION(header.get("v"))
    if why is not None:
        raise ProtocolError(f"the protocol version must be {why}")
    if not any_version and not MIN_PROTOCOL_VERSION <= header["v"] <= PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {header['v']}, this side speaks {_range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)}"
        )
    return check_schema(header)


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


# -- builders -------------------------------------------------------------------------------------------
def hello(
    want: dict | None,
    client: str,
    *,
    versions: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
    codec_names: list[str] | None = None,
) -> bytes:
    """A consumer's hello. ``codec_names`` defaults to the wire codecs installed here."""
    names = codecs.available() if codec_names is None else list(codec_names)
    return pack({"t": HELLO, "want": want, "client": client[:128], "versions": list(versions), "codecs": names})


def request(seed: int, indices: list[int]) -> bytes:
    return pack({"t": REQUEST, "seed": seed, "idx": list(indices)})


def ping() -> bytes:
    return pack({"t": PING})


def pong() -> bytes:
    return pack({"t": PONG})


def bye() -> bytes:
    return pack({"t": BYE})


def status() -> bytes:
    return pack({"t": STATUS})


def snapshot(numbers: dict) -> bytes:
    return pack({"t": SNAPSHOT, "snapshot": numbers})


def welcome(identity: dict, producer: dict, *, version: int, codec: str | None) -> bytes:
    return pack({"t": WELCOME, "identity": identity, "producer": producer, "version": version, "codec": codec})


def error(
    msg: str,
    *,
    code: str,
    fatal: bool = True,
    seed: int | None = None,
    indices: list[int] | None = None,
    rehello: bool = False,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    header = {"t": ERROR, "msg": msg[:MAX_TEXT], "fatal": fatal, "code": code}
    if seed is not None:
        header["seed"] = seed
    if indices is not None:
        header["idx"] = list(indices)
    if rehello:
        header["rehello"] = True
    return pack(header, version=version)


def goodbye(reason: str, *, final: bool, dropped: dict[int, list[int]] | None = None) -> bytes:
    """The producer is shutting down; ``dropped`` maps a stream seed to the frame indices that will not come."""
    pairs = [[seed, sorted(indices)] for seed, indices in (dropped or {}).items() if indices]
    return pack({"t": GOODBYE, "reason": reason[:MAX_TEXT], "final": final, "dropped": pairs})


# -- parsers (for fields whose meaning goes beyond their type) ------------------------------------------
@dataclass(frozen=True)
class Hello:
    want: dict | None
    client: str
    versions: tuple[int, int]
    codecs: tuple[str, ...] = field(default_factory=tuple)


def parse_hello(header: dict) -> Hello:
    """A hello's fields, with the defaults of a consumer that offers no range (its own ``v``) and no codec."""
    v = header["v"]
    lo, hi = header.get("versions", [v, v])
    if lo > hi:
        raise ProtocolError("field 'versions' of a 'hello' message must be a range [lo, hi] with lo <= hi")
    return Hello(header.get("want"), header.get("client", "?"), (lo, hi), tuple(header.get("codecs", ())))


def negotiate_version(offered: tuple[int, int]) -> int | None:
    """The highest version both sides speak, or None."""
    best = min(offered[1], PROTOCOL_VERSION)
    return best if best >= max(offered[0], MIN_PROTOCOL_VERSION) else None


def version_mismatch(offered: tuple[int, int]) -> str:
    """The error text for a consumer whose versions this producer does not speak: both ranges named."""
    older = "consumer" if offered[1] < MIN_PROTOCOL_VERSION else "producer"
    return (
        f"protocol versions do not meet: this producer speaks version "
        f"{_range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)}, the consumer {_range(*offered)}; "
        f"upgrade the {older}"
    )


def parse_goodbye(header: dict) -> tuple[bool, dict[int, list[int]]]:
    """(final, {seed: [dropped frame indices]}) of a goodbye."""
    dropped: dict[int, list[int]] = {}
    for seed, indices in header["dropped"]:
        dropped.setdefault(seed, []).extend(indices)
    return header["final"], dropped


_SNAPSHOT_FIELDS = {
    "identity": text(256),
    "host": text(256),
    "pid": integer(0, 2**31),
    "device": text(64),
    "endpoints": list_of(text(256), 16),
    "uptime_s": number,
    "ready": boolean,
    "last_progress_s": number,
    "consumers": integer(0, 2**31),
    "pending": integer(0, 2**63 - 1),
}
_HISTOGRAM_FIELDS = {
    "buckets": list_of(number, 64),
    "counts": list_of(integer(0, 2**63 - 1), 65),
    "sum": number,
    "count": integer(0, 2**63 - 1),
}


def parse_snapshot(header: dict) -> dict:
    """The numbers of a ``snapshot`` message, checked against the shape of ``ProducerServer.snapshot()`` (so a
    farm status table can print them as they are); raise :class:`ProtocolError` naming the first bad field."""
    snap = header["snapshot"]
    for name, check in _SNAPSHOT_FIELDS.items():
        why = "missing" if name not in snap else check(snap[name])
        if why is not None:
            raise ProtocolError(f"snapshot field {name!r}: {why}")
    counters, histograms = snap.get("counters"), snap.get("histograms")
    if not isinstance(counters, dict) or len(counters) > 256:
        raise ProtocolError("snapshot field 'counters' must be a map of at most 256 counters")
    for k, v in counters.items():
        if _NAME(k) is not None or integer(0, 2**63 - 1)(v) is not None:
            raise ProtocolError("snapshot counters must map short names to non-negative integers")
    if not isinstance(histograms, dict) or len(histograms) > 16:
        raise ProtocolError("snapshot field 'histograms' must be a map of at most 16 histograms")
    for k, h in histograms.items():
        if _NAME(k) is not None or not isinstance(h, dict):
            raise ProtocolError("snapshot histograms must map short names to maps")
        for name, check in _HISTOGRAM_FIELDS.items():
            why = "missing" if name not in h else check(h[name])
            if why is not None:
                raise ProtocolError(f"snapshot histogram field {name!r}: {why}")
        if len(h["counts"]) != len(h["buckets"]) + 1:
            raise ProtocolError("a snapshot histogram has one count per bucket and one for +Inf")
    return snap


# -- frames ---------------------------------------------------------------------------------------------
def _crc(seed: int, idx: int, identity: str, enc: str, n: int, codec: str | None, buffers) -> int:
    crc = zlib.crc32(msgpack.packb([seed, idx, identity, enc, n, codec], use_bin_type=True))
    for b in buffers:
        crc = zlib.crc32(b, crc)
    return crc


def check_seed_index(seed, idx) -> None:
    why = _SEED(seed)
    if why is not None:
        raise ProtocolError(f"a stream seed must be {why}")
    why = _INDEX(idx)
    if why is not None:
        raise ProtocolError(f"a frame index must be {why}")


@dataclass
class EncodedFrame:
    header: dict
    buffers: list

    @property
    def nbytes(self) -> int:
        return sum(memoryview(b).nbytes for b in self.buffers)

    def parts(self) -> list:
        return [pack(self.header), *self.buffers]


def encode_frame(
    seed: int, idx: int, identity: str, frame: SparseFrame | np.ndarray, *, codec: str | None = None
) -> EncodedFrame:
    """Encode a sparse frame (or a dense (40, 250, 768) uint8 array) in its smallest encoding; compress the
    sparse encodings with ``codec`` (a name of :mod:`pxdbg.shared.codecs`) when given."""
    if isinstance(frame, np.ndarray):
        dense = frame
        if dense.shape != FRAME_SHAPE or dense.dtype != np.uint8:
            raise FrameError(f"a dense frame is a {FRAME_SHAPE} uint8 array")
        n = int(np.count_nonzero(dense))
        if min(4 * n + 4 * N_SENSORS, 3 * n + 2 * N_ROWS) >= FRAME_PIXELS:
            return _finish(seed, idx, identity, "dense", n, [np.ascontiguousarray(dense).data], None)
        frame = SparseFrame.from_dense(dense)
    n = frame.n_digits
    size_sensors, size_rows = 4 * n + 4 * N_SENSORS, 3 * n + 2 * N_ROWS
    if min(size_sensors, size_rows) >= FRAME_PIXELS:
        return _finish(seed, idx, identity, "dense", n, [frame.to_dense().data], None)
    v = np.ascontiguousarray(frame.v, dtype=V_DTYPE)
    charge = np.ascontiguousarray(frame.charge, dtype=CHARGE_DTYPE)
    if size_rows < size_sensors:
        rows = frame.sensor.astype(np.intp) * N_U + frame.u
        counts = np.bincount(rows, minlength=N_ROWS).astype(np.uint16)
        return _finish(seed, idx, identity, "rows", n, [counts.data, v.data, charge.data], codec)
    counts = np.bincount(frame.sensor, minlength=N_SENSORS).astype(np.uint32)
    u = np.ascontiguousarray(frame.u, dtype=U_DTYPE)
    return _finish(seed, idx, identity, "sensors", n, [counts.data, u.data, v.data, charge.data], codec)


def _finish(seed: int, idx: int, identity: str, enc: str, n: int, buffers: list, codec: str | None) -> EncodedFrame:
    if codec is not None:
        buffers = codecs.get(codec).encode(enc, buffers)
    header = {
        "t": FRAME,
        "seed": seed,
        "idx": idx,
        "id": identity,
        "enc": enc,
        "n": n,
        "crc": _crc(seed, idx, identity, enc, n, codec, buffers),
    }
    if codec is not None:
        header["codec"] = codec
    return EncodedFrame(header, buffers)


def _raw_sizes(enc: str, n: int) -> list[int]:
    """Byte sizes of an encoding's raw buffers for ``n`` digits."""
    if enc == "rows":
        return [2 * N_ROWS, 2 * n, n]
    if enc == "sensors":
        return [4 * N_SENSORS, n, 2 * n, n]
    return [FRAME_PIXELS]


def _array(buf, dtype, count: int, what: str) -> np.ndarray:
    mv = memoryview(buf)
    if mv.nbytes != count * np.dtype(dtype).itemsize:
        raise ProtocolError(f"{what} buffer has {mv.nbytes} bytes, expected {count * np.dtype(dtype).itemsize}")
    return np.frombuffer(mv, dtype=dtype, count=count)


def decode_frame(header: dict, buffers: list, *, validate: bool = True) -> SparseFrame:
    """Decode a ``frame`` message's buffers into a :class:`SparseFrame` (read-only views where possible).

    Checks the schema of ``header`` (so a header from anywhere may be passed), the checksum over the frame's
    identifying fields and buffers, then the buffers' sizes and, with ``validate``, the digits themselves.
    """
    if header.get("t") != FRAME:
        raise ProtocolError("not a frame message")
    check_schema(header)
    enc, n, codec = header["enc"], header["n"], header.get("codec")
    expected_parts = ENCODINGS.get(enc)
    if expected_parts is None:
        raise ProtocolError("unknown frame encoding")
    if codec is not None and (enc == "dense" or codec not in codecs.CODECS):
        raise ProtocolError(f"frame {header['idx']} uses a wire codec this side does not know")
    if codec is None and len(buffers) != expected_parts:
        raise ProtocolError(f"{enc} frame has {len(buffers)} buffers, expected {expected_parts}")
    if _crc(header["seed"], header["idx"], header["id"], enc, n, codec, buffers) != header["crc"]:
        raise ProtocolError(f"checksum mismatch in frame {header['idx']}")
    if codec is not None:
        try:
            buffers = codecs.get(codec).decode(enc, buffers, _raw_sizes(enc, n))
        except codecs.CodecError as exc:
            raise ProtocolError(f"frame {header['idx']} does not decompress: {exc}") from None
    try:
        if enc == "dense":
            dense = _array(buffers[0], np.uint8, FRAME_PIXELS, "dense").reshape(FRAME_SHAPE)
            frame = SparseFrame.from_dense(dense)
            if frame.n_digits != n:
                raise ProtocolError(f"dense frame has {frame.n_digits} hits, header says {n}")
            return frame
        if enc == "rows":
            counts = _array(buffers[0], np.uint16, N_ROWS, "row counts")
            if int(counts.sum(dtype=np.int64)) != n:
                raise ProtocolError("row counts do not add up to the digit count")
            sensor, u = np.repeat(_ROW_SENSOR, counts), np.repeat(_ROW_U, counts)
            v, charge = _array(buffers[1], V_DTYPE, n, "v"), _array(buffers[2], CHARGE_DTYPE, n, "charge")
        else:
            counts = _array(buffers[0], np.uint32, N_SENSORS, "sensor counts")
            if int(counts.sum(dtype=np.int64)) != n:
                raise ProtocolError("sensor counts do not add up to the digit count")
            sensor = np.repeat(_SENSOR_IDS, counts)
            u = _array(buffers[1], U_DTYPE, n, "u")
            v, charge = _array(buffers[2], V_DTYPE, n, "v"), _array(buffers[3], CHARGE_DTYPE, n, "charge")
        frame = SparseFrame(sensor, u, v, charge)
        return frame.validate() if validate else frame
    except FrameError as exc:
        raise ProtocolError(f"frame {header['idx']} is inconsistent: {exc}") from None
