"""The wire protocol between consumers (DEALER) and producers (ROUTER).

Every message is a msgpack header (a map with the protocol version ``v`` and type ``t``) followed, for
frames, by raw array buffers. Nothing is ever pickled.

consumer -> producer: ``hello`` {want: identity or None}, ``req`` {seed, idx: [frame indices]}, ``ping``,
``bye``. producer -> consumer: ``welcome`` {identity, producer: {...}}, ``frame`` {seed, idx, id, enc, n,
crc} + buffers, ``pong``, ``error`` {seed, idx, msg} (a generation failure, shipped back to be raised).

Frame encodings (digits in canonical order; the encoder picks the smallest):
- ``sensors``: per-sensor counts (40 x uint32), u (uint8), v (uint16), charge (uint8): 4 bytes per digit;
- ``rows``: per-(sensor, u) row counts (10,000 x uint16), v (uint16), charge (uint8): 3 bytes per digit,
  smaller above ~20,000 digits (a typical frame has ~69,000);
- ``dense``: the (40, 250, 768) uint8 array, when it is smaller than either (an untrained GAN hits every
  pixel), so no frame is ever larger than 7.68 MB on the wire.
``crc`` is the CRC-32 of the buffers, checked by the receiver.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import msgpack
import numpy as np

from pxdbg.shared.frame import CHARGE_DTYPE, U_DTYPE, V_DTYPE, FrameError, SparseFrame
from pxdbg.shared.geometry import FRAME_PIXELS, FRAME_SHAPE, N_SENSORS, N_U
from pxdbg.shared.seeding import SEED_MAX, SEED_MIN

PROTOCOL_VERSION = 1
#: Largest message a consumer accepts (a dense frame plus headroom), bytes.
MAX_FRAME_MESSAGE = 16 * 1024 * 1024
#: Largest message a producer accepts (requests are small), bytes.
MAX_REQUEST_MESSAGE = 1024 * 1024
#: Most frame indices in one request.
MAX_INDICES_PER_REQUEST = 4096

N_ROWS = N_SENSORS * N_U
#: Above this many digits a frame is smaller dense than in any sparse encoding.
SPARSE_MAX_DIGITS = (FRAME_PIXELS - 2 * N_ROWS) // 3
_ROW_SENSOR = (np.arange(N_ROWS) // N_U).astype(np.uint8)
_ROW_U = (np.arange(N_ROWS) % N_U).astype(np.uint8)
_SENSOR_IDS = np.arange(N_SENSORS, dtype=np.uint8)


class ProtocolError(ValueError):
    """A message is malformed, truncated, oversized, unexpected or fails its checksum."""


def pack(header: dict) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, **header}, use_bin_type=True)


def unpack(raw) -> dict:
    """Parse a header frame; raise :class:`ProtocolError` unless it is a map of our protocol version."""
    try:
        header = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("header is not a map with a message type")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    return header


def _crc(buffers) -> int:
    crc = 0
    for b in buffers:
        crc = zlib.crc32(b, crc)
    return crc


def check_seed_index(seed, idx) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_MIN <= seed <= SEED_MAX:
        raise ProtocolError(f"bad stream seed {seed!r}")
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise ProtocolError(f"bad frame index {idx!r}")


@dataclass
class EncodedFrame:
    header: dict
    buffers: list

    @property
    def nbytes(self) -> int:
        return sum(memoryview(b).nbytes for b in self.buffers)

    def parts(self) -> list:
        return [pack(self.header), *self.buffers]


def encode_frame(seed: int, idx: int, identity: str, frame: SparseFrame | np.ndarray) -> EncodedFrame:
    """Encode a sparse frame (or a dense (40, 250, 768) uint8 array) in its smallest encoding."""
    if isinstance(frame, np.ndarray):
        dense = frame
        if dense.shape != FRAME_SHAPE or dense.dtype != np.uint8:
            raise FrameError(f"a dense frame is a {FRAME_SHAPE} uint8 array")
        n = int(np.count_nonzero(dense))
        if min(4 * n + 4 * N_SENSORS, 3 * n + 2 * N_ROWS) >= FRAME_PIXELS:
            return _finish(seed, idx, identity, "dense", n, [np.ascontiguousarray(dense).data])
        frame = SparseFrame.from_dense(dense)
    n = frame.n_digits
    size_sensors, size_rows = 4 * n + 4 * N_SENSORS, 3 * n + 2 * N_ROWS
    if min(size_sensors, size_rows) >= FRAME_PIXELS:
        return _finish(seed, idx, identity, "dense", n, [frame.to_dense().data])
    v = np.ascontiguousarray(frame.v, dtype=V_DTYPE)
    charge = np.ascontiguousarray(frame.charge, dtype=CHARGE_DTYPE)
    if size_rows < size_sensors:
        rows = frame.sensor.astype(np.intp) * N_U + frame.u
        counts = np.bincount(rows, minlength=N_ROWS).astype(np.uint16)
        return _finish(seed, idx, identity, "rows", n, [counts.data, v.data, charge.data])
    counts = np.bincount(frame.sensor, minlength=N_SENSORS).astype(np.uint32)
    u = np.ascontiguousarray(frame.u, dtype=U_DTYPE)
    return _finish(seed, idx, identity, "sensors", n, [counts.data, u.data, v.data, charge.data])


def _finish(seed: int, idx: int, identity: str, enc: str, n: int, buffers: list) -> EncodedFrame:
    header = {"t": "frame", "seed": seed, "idx": idx, "id": identity, "enc": enc, "n": n, "crc": _crc(buffers)}
    return EncodedFrame(header, buffers)


def _array(buf, dtype, count: int, what: str) -> np.ndarray:
    mv = memoryview(buf)
    if mv.nbytes != count * np.dtype(dtype).itemsize:
        raise ProtocolError(f"{what} buffer has {mv.nbytes} bytes, expected {count * np.dtype(dtype).itemsize}")
    return np.frombuffer(mv, dtype=dtype, count=count)


def decode_frame(header: dict, buffers: list, *, validate: bool = True) -> SparseFrame:
    """Decode a ``frame`` message's buffers into a :class:`SparseFrame` (read-only views where possible)."""
    enc, n = header.get("enc"), header.get("n")
    check_seed_index(header.get("seed"), header.get("idx"))
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= FRAME_PIXELS:
        raise ProtocolError(f"bad digit count {n!r}")
    expected_parts = {"sensors": 4, "rows": 3, "dense": 1}.get(enc)
    if expected_parts is None:
        raise ProtocolError(f"unknown frame encoding {enc!r}")
    if len(buffers) != expected_parts:
        raise ProtocolError(f"{enc} frame has {len(buffers)} buffers, expected {expected_parts}")
    if _crc(buffers) != header.get("crc"):
        raise ProtocolError(f"checksum mismatch in frame {header.get('idx')}")
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
        raise ProtocolError(f"frame {header.get('idx')} is inconsistent: {exc}") from None
