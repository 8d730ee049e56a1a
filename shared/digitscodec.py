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
from collections.abc import Callable, Iterator

import numpy as np

from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE
from pxdbg.shared.geometry import N_SENSORS, N_U, N_V

COLUMNS = (("sensor", SENSOR_DTYPE), ("u", U_DTYPE), ("v", V_DTYPE), ("charge", CHARGE_DTYPE))
LIMITS = {"sensor": N_SENSORS, "u": N_U, "v": N_V}  # coordinates are below these

FORMAT_RAW = "pxdbg-digits-1"
FORMAT_ZSTD = "pxdbg-digits-2"
#: Digits per transform block of a compressed column (v's byte planes are split per block; one zstd frame each).
BLOCK_DIGITS = 1 << 20
ZSTD_LEVEL = 1
_READ_BYTES = 1 << 20
_ZSTD_HEADER_MAX = 18  # a zstd frame header is at most 18 bytes: enough to read its declared size


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


def inflate_frames(read: Callable[[int], bytes], nbytes: int, total: int, what: str) -> Iterator[bytes]:
    """The decompressed bytes of the zstd frames in the next ``nbytes`` of ``read``, in pieces; together they must
    be exactly ``total`` bytes. Every frame must declare its size, and no frame may declare more than is still
    expected, so that a damaged or hostile member never inflates past what its column holds."""
    z = zstd()
    pending, left, produced = b"", nbytes, 0
    while True:
        while left and len(pending) < _ZSTD_HEADER_MAX:  # the next frame's header, for its declared size
            data = read(min(_READ_BYTES, left))
            if not data:
                raise DigitsFileError(f"{what} ends early")
            left -= len(data)
            pending += data
        if not pending:
            break
        try:
            declared = z.zstandard.frame_content_size(pending)
        except z.zstandard.ZstdError:
            raise DigitsFileError(f"{what} is not a sequence of zstd frames") from None
        if declared < 0 or produced + declared > total:
            raise DigitsFileError(f"{what} declares more than its {total} bytes (or no size)")
        dobj, frame_out = z.dctx.decompressobj(), 0
        while True:
            try:
                out = dobj.decompress(pending)
            except z.zstandard.ZstdError as exc:
                raise DigitsFileError(f"{what} is damaged ({str(exc)[:200]})") from None
            frame_out += len(out)
            if frame_out > declared:
                raise DigitsFileError(f"{what} holds a frame larger than it declares")
            if out:
                yield out
            if dobj.eof:
                pending = dobj.unused_data
                break
            if not left:
                raise DigitsFileError(f"{what} ends inside a zstd frame")
            pending = read(min(_READ_BYTES, left))
            if not pending:
                raise DigitsFileError(f"{what} ends early")
            left -= len(pending)
        if frame_out != declared:
            raise DigitsFileError(f"{what} holds a frame smaller than it declares")
        produced += declared
    if produced != total:
        raise DigitsFileError(f"{what} holds {produced} bytes, its digits are {total} bytes")


def inflate_column(
    read: Callable[[int], bytes], nbytes: int, name: str, dtype, n: int, emit: Callable[[np.ndarray], None], what: str
) -> None:
    """Decompress and decode a compressed column of ``n`` digits (``nbytes`` of ``read``), passing its digits to
    ``emit`` a block at a time: memory stays at one block however long the column."""
    dtype = np.dtype(dtype)
    pending = bytearray()
    prev, done = 0, 0
    for piece in inflate_frames(read, nbytes, n * dtype.itemsize, what):
        pending += piece
        while done < n and len(pending) >= min(BLOCK_DIGITS, n - done) * dtype.itemsize:
            k = min(BLOCK_DIGITS, n - done)
            out = np.empty(k, dtype)
            prev = decode_block(name, bytes(pending[: k * dtype.itemsize]), prev, out)
            emit(out)
            del pending[: k * dtype.itemsize]
            done += k


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
        crc = zlib.crc32(np.ascontiguousarray(col).view(np.uint8), crc)
    return crc
