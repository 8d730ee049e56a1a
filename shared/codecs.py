"""Wire codecs for frame payloads: a registry table, one entry per codec, negotiated in hello/welcome.

A codec turns the raw buffers of a sparse frame encoding (``rows`` or ``sensors``, see
:mod:`pxdbg.shared.protocol`) into one compressed buffer and back. A consumer offers the codecs installed on its
side; the producer picks the first of its own table that the consumer offers, or none. Dense frames are sent as
they are. Adding a codec = one :class:`Codec` entry in :data:`CODECS` (its Python package is optional: a side
without it simply does not offer it).

``zstd`` (package ``zstandard``): the ``v`` coordinates become differences within each pixel row (small numbers),
every 16-bit array is split into a low-byte and a high-byte plane, and the result is compressed at level 1. On
the default parametric model's frames this is about 1.7 bytes per digit instead of 3.0.

Torch-free; the consumer side imports it.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pxdbg.shared.errors import PxdbgError


class CodecError(PxdbgError, ValueError):
    """A compressed buffer is not what its header says (size, content)."""


@dataclass(frozen=True)
class Codec:
    """One wire codec: ``encode(enc, raw buffers) -> [wire buffer]``, ``decode(enc, wire buffers, raw sizes)
    -> raw buffers``; ``package`` is the Python package it needs."""

    name: str
    package: str
    summary: str
    encode: Callable[[str, list], list]
    decode: Callable[[str, list, list[int]], list]

    def installed(self) -> bool:
        try:
            importlib.import_module(self.package)
        except ImportError:
            return False
        return True


# -- zstd with row-delta and byte planes -----------------------------------------------------------------
_local = threading.local()  # zstandard's (de)compression contexts are not safe to share between threads
ZSTD_LEVEL = 1


def _zstd():
    if not hasattr(_local, "cctx"):
        import zstandard

        _local.zstandard = zstandard
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.dctx = zstandard.ZstdDecompressor()
    return _local


def _row_starts(enc: str, counts: np.ndarray, u: np.ndarray | None, n: int) -> np.ndarray:
    """Indices of the first digit of each non-empty pixel row (sensor, u)."""
    if enc == "rows":
        ends = np.cumsum(counts, dtype=np.int64)
        return (ends - counts)[counts > 0]
    first = np.zeros(n, dtype=bool)
    assert u is not None, "every encoding but 'rows' carries the u column"
    if n:
        first[0] = True
        first[1:] = u[1:] != u[:-1]
        sensor_starts = (np.cumsum(counts, dtype=np.int64) - counts)[counts > 0]
        first[sensor_starts] = True
    return np.flatnonzero(first)


def _split_raw(enc: str, buffers: list) -> tuple:
    if enc == "rows":
        counts, v, charge = buffers
        return counts, None, np.frombuffer(v, np.uint16), charge
    counts, u, v, charge = buffers
    return counts, np.frombuffer(u, np.uint8), np.frombuffer(v, np.uint16), charge


def _zstd_encode(enc: str, buffers: list) -> list:
    if enc not in ("rows", "sensors"):
        raise CodecError(f"the zstd codec compresses sparse encodings, not {enc!r}")
    counts_raw, u, v, charge = _split_raw(enc, buffers)
    counts = np.frombuffer(counts_raw, np.uint16 if enc == "rows" else np.uint32)
    n = v.shape[0]
    d = np.empty(n, dtype=np.uint16)
    if n:
        d[0] = v[0]
        np.subtract(v[1:], v[:-1], out=d[1:])  # wraps across row boundaries; those are reset next
        starts = _row_starts(enc, counts, u, n)
        d[starts] = v[starts]
    planes = [(d & 0xFF).astype(np.uint8), (d >> 8).astype(np.uint8)]  # low bytes, then high bytes
    parts = [counts_raw, b"" if u is None else u, *planes, charge]
    size = sum(memoryview(p).nbytes for p in parts)
    cobj = _zstd().cctx.compressobj(size=size)
    out = [cobj.compress(p) for p in parts]
    out.append(cobj.flush())
    return [b"".join(out)]


def _zstd_decode(enc: str, buffers: list, sizes: list[int]) -> list:
    if enc not in ("rows", "sensors") or len(buffers) != 1:
        raise CodecError("a zstd frame is one buffer of a sparse encoding")
    z = _zstd()
    blob = buffers[0]
    total = sum(sizes)
    try:
        declared = z.zstandard.frame_content_size(blob)
    except z.zstandard.ZstdError:
        raise CodecError("not a zstd frame") from None
    if declared != total:  # also refuses a frame without a declared size: nothing is inflated unbounded
        raise CodecError(f"it declares {declared} bytes, the header implies {total}")
    try:
        raw = z.dctx.decompress(blob, max_output_size=total)
    except z.zstandard.ZstdError as exc:
        raise CodecError(str(exc)[:200]) from None
    if len(raw) != total:
        raise CodecError(f"it gave {len(raw)} bytes, the header implies {total}")
    mv = memoryview(raw)
    if enc == "rows":
        n = sizes[2]
        counts_raw, u_raw, planes_raw, charge = mv[: sizes[0]], None, mv[sizes[0] : sizes[0] + 2 * n], mv[-n:]
        counts = np.frombuffer(counts_raw, np.uint16)
    else:
        n = sizes[1]
        c = sizes[0]
        counts_raw, u_raw = mv[:c], mv[c : c + n]
        planes_raw, charge = mv[c + n : c + 3 * n], mv[c + 3 * n :]
        counts = np.frombuffer(counts_raw, np.uint32)
    planes = np.frombuffer(planes_raw, np.uint8).reshape(2, n)
    d = planes[1].astype(np.uint16)
    d <<= 8
    d |= planes[0]
    if int(counts.sum(dtype=np.int64)) != n:
        raise CodecError("its counts do not add up to the digit count")
    if n:
        # 16-bit arithmetic wraps, and so does every step here: the true coordinates come out exactly (a
        # forged stream gives coordinates that the frame's validation refuses)
        u = None if u_raw is None else np.frombuffer(u_raw, np.uint8)
        starts = _row_starts(enc, counts, u, n)
        cs = np.cumsum(d, dtype=np.uint16)
        base = cs[starts] - d[starts]
        if enc == "rows":
            v = cs - np.repeat(base, counts[counts > 0])
        else:
            first = np.zeros(n, dtype=bool)
            first[starts] = True
            v = cs - base[np.cumsum(first) - 1]
    else:
        v = d
    out = [counts_raw]
    if u_raw is not None:
        out.append(u_raw)
    return [*out, v.data, charge]


#: The wire codecs, in order of preference.
CODECS: dict[str, Codec] = {
    "zstd": Codec("zstd", "zstandard", "row-delta v, byte planes, zstd level 1", _zstd_encode, _zstd_decode),
}


def get(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise CodecError(f"unknown wire codec {name!r}; the codecs are: {', '.join(CODECS)}") from None


def available() -> list[str]:
    """The codecs installed on this side, in order of preference (what a hello offers)."""
    return [name for name, codec in CODECS.items() if codec.installed()]


def negotiate(offered: Sequence[str], ours: Sequence[str] | None = None) -> str | None:
    """The first of our codecs that the peer offers, or None (frames go uncompressed)."""
    ours = available() if ours is None else ours
    return next((name for name in ours if name in offered), None)


def measure(frames: Sequence, names: Sequence[str] | None = None, repeat: int = 3) -> list[dict]:
    """Bytes per digit and CPU time per frame of each codec (and of none) on ``frames`` (SparseFrames), measured
    here, in this thread (CPU time, so that other processes on a busy machine do not count):
    ``{"codec", "bytes_per_digit", "encode_ms", "decode_ms", "added_encode_ms", "added_decode_ms"}`` per row;
    the added times are relative to sending uncompressed."""
    from pxdbg.shared import protocol

    digits = sum(f.n_digits for f in frames)
    rows = []
    for name in [None, *(available() if names is None else names)]:
        enc_s = dec_s = float("inf")
        size = 0
        for _ in range(repeat):  # best of a few passes: the figure is the cost, not the machine's noise
            t0 = time.thread_time()
            encoded = [protocol.encode_frame(1, i, "measure", f, codec=name) for i, f in enumerate(frames)]
            t1 = time.thread_time()
            for e in encoded:
                protocol.decode_frame(protocol.unpack(protocol.pack(e.header)), e.buffers, validate=False)
            t2 = time.thread_time()
            enc_s, dec_s = min(enc_s, t1 - t0), min(dec_s, t2 - t1)
            size = sum(e.nbytes for e in encoded)
        rows.append(
            {
                "codec": name or "none",
                "bytes_per_digit": size / max(digits, 1),
                "encode_ms": 1e3 * enc_s / len(frames),
                "decode_ms": 1e3 * dec_s / len(frames),
            }
        )
    for row in rows:
        row["added_encode_ms"] = row["encode_ms"] - rows[0]["encode_ms"]
        row["added_decode_ms"] = row["decode_ms"] - rows[0]["decode_ms"]
    return rows
