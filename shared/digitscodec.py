"""The stored bytes of a digits file's columns: the column transform, zstd frames per block, and their reading.

A compressed column (``<name>.zst`` in ``pxdbg-digits-2``) is the column cut into blocks of
:data:`BLOCK_DIGITS` digits, each block transformed the way the wire codec does it (:mod:`pxdbg.shared.codecs`:
``sensor``, ``u`` and ``v`` as wrapping differences from the digit before, ``v``'s differences as a low-byte
and a high-byte plane, ``charge`` as it is) and stored as zstd frames (level :data:`ZSTD_LEVEL`) that each
declare their size. The frames decompress, one after the other, to the transformed column (``zstd -d`` reads
them as one stream). Files written before the background compression hold one frame per column, files written
since one frame per block; readers take both. A block depends only on its own digits and the digit before it,
so it can be compressed as soon as it is on disk, in any thread, and always gives the same bytes.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable

import numpy as np

from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE
from pxdbg.shared.geometry import N_SENSORS, N_U, N_V

COLUMNS: tuple[tuple[str, np.dtype], ...] = (
    ("sensor", SENSOR_DTYPE),
    ("u", U_DTYPE),
    ("v", V_DTYPE),
    ("charge", CHARGE_DTYPE),
)
LIMITS = {"sensor": N_SENSORS, "u": N_U, "v": N_V}  # coordinates are below these

FORMAT_RAW = "pxdbg-digits-1"
FORMAT_ZSTD = "pxdbg-digits-2"
#: Digits per transform block of a compressed column (v's byte planes are split per block; one zstd frame each).
BLOCK_DIGITS = 1 << 20
ZSTD_LEVEL = 1
_READ_BYTES = 1 << 20


class DigitsFileError(PxdbgError, ValueError):
    """A digits file is missing, malformed or inconsistent."""


_local = threading.local()  # zstandard's contexts are not safe to share between threads


def zstd():
    """This thread's zstd module, compressor and decompressor."""
    if not hasattr(_local, "cctx"):
        import zstandard

        _local.zstandard = zstandard
        # one thread per context: a frame's bytes must not depend on how many CPUs wrote it
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)
        _local.dctx = zstandard.ZstdDecompressor()
    return _local


def encode_block(name: str, block: np.ndarray, prev: int) -> np.ndarray:
    """The transformed bytes of one block of column ``name``; ``prev`` is the digit before the block (0 for the
    first block)."""
    if name == "charge" or block.size == 0:
        return block
    d = np.empty_like(block)
    d[0] = (int(block[0]) - prev) % (1 << (8 * block.itemsize))
    np.subtract(block[1:], block[:-1], out=d[1:])  # wraps below zero (a new sensor or row): decoding wraps back
    if name == "v":  # the low bytes, then the high bytes: long runs of zero high bytes compress to nothing
        planes = np.empty((2, d.size), np.uint8)
        np.copyto(planes[0], d, casting="unsafe")  # the cast keeps the low byte
        np.right_shift(d, 8, out=planes[1], casting="unsafe")
        return planes
    return d


def decode_block(name: str, raw, prev: int, out: np.ndarray) -> int:
    """Invert :func:`encode_block` into ``out`` (the block's length); return the next block's ``prev``."""
    if name == "charge":
        out[:] = np.frombuffer(raw, out.dtype)
        return prev
    if out.size == 0:
        return prev
    if name == "v":
        planes = np.frombuffer(raw, np.uint8).reshape(2, out.size)
        d = planes[1].astype(np.uint16)
        d <<= 8
        d |= planes[0]
    else:
        d = np.frombuffer(raw, out.dtype)
    np.cumsum(d, dtype=out.dtype, out=out)  # wrapping sums undo the wrapping differences exactly
    out += out.dtype.type(prev)
    return int(out[-1])


def compress_block(name: str, block: np.ndarray, prev: int) -> bytes:
    """One block of a column as the zstd frame stored for it (declaring its size)."""
    return zstd().cctx.compress(encode_block(name, block, prev).data)


class _Bounded:
    """The next ``nbytes`` of a reader, and no more (a member's bytes inside a larger file)."""

    def __init__(self, read: Callable[[int], bytes], nbytes: int) -> None:
        self._read, self._left = read, nbytes

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._read(size) if size else b""
        self._left -= len(data)
        return data


def inflate_into(read: Callable[[int], bytes], nbytes: int, out: memoryview, what: str) -> None:
    """Decompress the zstd frames in the next ``nbytes`` of ``read`` into ``out``, which they must fill exactly:
    reading stops at its size, so a damaged or hostile member never inflates past what its column holds."""
    z = zstd()
    try:
        with z.dctx.stream_reader(_Bounded(read, nbytes), read_size=_READ_BYTES, read_across_frames=True) as reader:
            got = 0
            while got < len(out):
                k = reader.readinto(out[got:])
                if not k:
                    raise DigitsFileError(f"{what} holds {got} bytes, its digits are {len(out)} bytes")
                got += k
            if reader.read(1):
                raise DigitsFileError(f"{what} holds more than its digits' {len(out)} bytes")
    except z.zstandard.ZstdError as exc:
        raise DigitsFileError(f"{what} is damaged ({str(exc)[:200]})") from None


def decode_column(raw: np.ndarray, name: str, out: np.ndarray) -> None:
    """The digits ``out`` of a column from its transformed bytes ``raw`` (uint8), block by block."""
    prev, itemsize = 0, out.dtype.itemsize
    for a in range(0, out.size, BLOCK_DIGITS):
        b = min(a + BLOCK_DIGITS, out.size)
        prev = decode_block(name, raw[a * itemsize : b * itemsize], prev, out[a:b])


def inflate_column(
    read: Callable[[int], bytes], nbytes: int, name: str, dtype, n: int, emit: Callable[[np.ndarray], object], what: str
) -> None:
    """Decompress and decode a compressed column of ``n`` digits (``nbytes`` of ``read``), passing its digits to
    ``emit`` a block at a time: memory stays at one block however long the column."""
    dtype = np.dtype(dtype)
    z = zstd()
    prev = 0
    try:
        with z.dctx.stream_reader(_Bounded(read, nbytes), read_size=_READ_BYTES, read_across_frames=True) as reader:
            for a in range(0, n, BLOCK_DIGITS):
                k = min(BLOCK_DIGITS, n - a)
                raw = np.empty(k * dtype.itemsize, np.uint8)
                view, got = raw.data, 0  # .data: a memoryview the type checker accepts on 3.10 too
                while got < raw.size:
                    step = reader.readinto(view[got:])
                    if not step:
                        raise DigitsFileError(f"{what}: its {name} column holds fewer than its {n} digits")
                    got += step
                out = np.empty(k, dtype)
                prev = decode_block(name, raw, prev, out)
                emit(out)
            if reader.read(1):
                raise DigitsFileError(f"{what}: its {name} column holds more than its {n} digits")
    except z.zstandard.ZstdError as exc:
        raise DigitsFileError(f"{what}: its {name} column is damaged ({str(exc)[:200]})") from None


def copy_exactly(src, dst, nbytes: int, short: str) -> None:
    """Copy exactly ``nbytes`` from ``src``'s position to ``dst``, in blocks; ``short`` is the error if it ends."""
    while nbytes:
        block = src.read(min(nbytes, _READ_BYTES))
        if not block:
            raise DigitsFileError(short)
        dst.write(block)
        nbytes -= len(block)


def event_crc(columns) -> int:
    """CRC-32 of one event's four columns, in column order (the spool's per-event checksum)."""
    crc = 0
    for col in columns:
        crc = zlib.crc32(np.ascontiguousarray(col).view(np.uint8).data, crc)
    return crc
