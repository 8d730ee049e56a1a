"""The digits file: many events' sparse frames in one ``.npz`` (a zip archive).

Members: ``offsets.npy`` (int64, n_events + 1; event i's digits are ``offsets[i]:offsets[i+1]``),
``meta.npy`` (a 0-d unicode array holding a JSON object: model, checkpoint_sha256, precision, seed,
first_frame, pxdbg_version, format, complete, ...) and the four digit columns ``sensor`` (uint8, generator
index), ``u`` (uint8), ``v`` (uint16) and ``charge`` (uint8, ADC, 1..255), in one of two formats:

- ``pxdbg-digits-2`` (the default): each column is ``<name>.zst``, one zstd frame (level 1) of the column
  transformed the way the wire codec does it (:mod:`pxdbg.shared.codecs`): ``sensor``, ``u`` and ``v`` as
  differences from the digit before (wrapping; small numbers, since digits are sorted by sensor, u, v), ``v``'s
  differences split into a low-byte and a high-byte plane per block of :data:`BLOCK_DIGITS` digits, ``charge``
  as it is. About 1.8 bytes per digit against 4 uncompressed. Read it with :class:`DigitsFile`;
  ``numpy.load`` opens it without pickle too and gives ``offsets`` and ``meta`` (the columns as zstd bytes).
- ``pxdbg-digits-1`` (``DigitsWriter(..., compress=False)``, and every file before): each column is a plain
  ``<name>.npy``; ``numpy.load(path)["v"]`` gives the array.

:class:`DigitsWriter` streams: digits go to spool files next to the output and are assembled into the
``.npz`` at :meth:`DigitsWriter.close`, so memory stays flat however many events are written.
:class:`DigitsFile` checks what it reads before it allocates anything (sizes from the zip directory and the
array headers, against the file's own size) and then the content (ranges, order, metadata types).
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import shutil
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE, FrameError, SparseFrame
from pxdbg.shared.geometry import FRAME_PIXELS, N_SENSORS, N_U, N_V
from pxdbg.shared.version import __version__

log = logging.getLogger("pxdbg")
_COLUMNS = (("sensor", SENSOR_DTYPE), ("u", U_DTYPE), ("v", V_DTYPE), ("charge", CHARGE_DTYPE))
_LIMITS = {"sensor": N_SENSORS, "u": N_U, "v": N_V}  # coordinates are below these

FORMAT_RAW = "pxdbg-digits-1"
FORMAT_ZSTD = "pxdbg-digits-2"
#: Digits per transform block of a compressed column (v's byte planes are split per block).
BLOCK_DIGITS = 1 << 20
ZSTD_LEVEL = 1
#: A member of a digits file may inflate to at most this many times the file's own size (plus
#: :data:`_INFLATE_SLACK`): real columns compress ~2-4x; a zip bomb's 1000x is refused from the zip directory.
_INFLATE_RATIO = 64
_INFLATE_SLACK = 64 << 20
_MAX_MEMBERS = 64
_MAX_META_CHARS = 1 << 20


class DigitsFileError(PxdbgError, ValueError):
    """A digits file is missing, malformed or inconsistent."""


# -- the column transform of the compressed format ---------------------------------------------------------
_local = threading.local()  # zstandard's contexts are not safe to share between threads


def _zstd():
    if not hasattr(_local, "cctx"):
        import zstandard

        _local.zstandard = zstandard
        # every CPU for the compression at close: 0.79 instead of 1.01-1.12 ms per event here (2 CPUs, 150 events)
        _local.cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
        _local.dctx = zstandard.ZstdDecompressor()
    return _local


def _encode_block(name: str, block: np.ndarray, prev: int) -> tuple[list, int]:
    """The stored bytes of one block of a column, and the value the next block's first difference is from."""
    if name == "charge" or block.size == 0:
        return [block], prev
    d = np.empty_like(block)
    d[0] = (int(block[0]) - prev) % (1 << (8 * block.itemsize))
    np.subtract(block[1:], block[:-1], out=d[1:])  # wraps below zero (a new sensor or row): decoding wraps back
    if name == "v":
        return [(d & 0xFF).astype(np.uint8), (d >> 8).astype(np.uint8)], int(block[-1])
    return [d], int(block[-1])


def _decode_block(name: str, raw, prev: int, out: np.ndarray) -> int:
    """Invert :func:`_encode_block` into ``out`` (the block's length); return the next block's ``prev``."""
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


def _write_column(zf: zipfile.ZipFile, name: str, dtype: np.dtype, n: int, source: Path, compress: bool) -> tuple:
    """Write column ``name`` (``n`` items of ``source``) as a member; return (start, size) of its stored bytes
    in the archive, from where a failed assembly's :meth:`DigitsWriter._restore_moved` takes it back."""
    itemsize = np.dtype(dtype).itemsize
    short = f"spool file {source} is shorter than its {n} entries"
    if not compress:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
        with zf.open(name + ".npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            start = zf.fp.tell()
            with open(source, "rb") as raw:  # exactly n items: an append cut short by a signal may have left a tail
                _copy(raw, member, n * itemsize, short)
        return start, n * itemsize
    cobj = _zstd().cctx.compressobj(size=n * itemsize)  # the frame declares its size: readers bound by it
    written = 0
    with zf.open(name + ".zst", "w", force_zip64=True) as member, open(source, "rb") as raw:
        start = zf.fp.tell()
        prev, left = 0, n
        while left:
            k = min(BLOCK_DIGITS, left)
            buf = raw.read(k * itemsize)
            if len(buf) < k * itemsize:
                raise DigitsFileError(short)
            parts, prev = _encode_block(name, np.frombuffer(buf, dtype), prev)
            for part in parts:
                chunk = cobj.compress(part)
                member.write(chunk)
                written += len(chunk)
            left -= k
        chunk = cobj.flush()
        member.write(chunk)
        written += len(chunk)
    return start, written


def _decode_column_to(src, nbytes: int, name: str, dtype: np.dtype, n: int, dst, what: str) -> None:
    """Decompress ``nbytes`` of a compressed column at ``src``'s position into ``dst`` (raw items), block by
    block: memory stays at one block however long the column."""
    dtype = np.dtype(dtype)
    dobj = _zstd().dctx.decompressobj()
    pending = bytearray()
    prev, left = 0, n
    while nbytes or pending:
        if nbytes:
            data = src.read(min(1 << 20, nbytes))
            if not data:
                raise DigitsFileError(f"{what} is shorter than its {name} column")
            nbytes -= len(data)
            pending += dobj.decompress(data)
        while left and len(pending) >= min(BLOCK_DIGITS, left) * dtype.itemsize:
            k = min(BLOCK_DIGITS, left)
            out = np.empty(k, dtype)
            prev = _decode_block(name, bytes(pending[: k * dtype.itemsize]), prev, out)
            dst.write(out.data)
            del pending[: k * dtype.itemsize]
            left -= k
        if not nbytes and pending:
            raise DigitsFileError(f"{what}: its {name} column holds more than its {n} digits")
    if left:
        raise DigitsFileError(f"{what}: its {name} column holds fewer than its {n} digits")


def _copy(src, dst, nbytes: int, short: str) -> None:
    """Copy exactly ``nbytes`` from ``src``'s position to ``dst``, in blocks; ``short`` is the error if it ends."""
    while nbytes:
        block = src.read(min(nbytes, 1 << 20))
        if not block:
            raise DigitsFileError(short)
        dst.write(block)
        nbytes -= len(block)


def _event_crc(columns) -> int:
    """CRC-32 of one event's four columns, in column order (the spool's per-event checksum)."""
    crc = 0
    for col in columns:
        crc = zlib.crc32(np.ascontiguousarray(col).view(np.uint8), crc)
    return crc


class AtomicWriter(abc.ABC):
    """Context-manager behaviour of the digits writers: :meth:`close` on success, :meth:`abort` on error."""

    @abc.abstractmethod
    def append(self, frame: SparseFrame) -> None: ...

    @abc.abstractmethod
    def close(self) -> Path: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DigitsWriter(AtomicWriter):
    """Append frames one at a time; the ``.npz`` appears (atomically) at :meth:`close`.

    The digits go to a spool directory ``.<name>.spool`` beside the output: the four columns, then each
    event's CRC-32 and digit count (the count last: an event is on disk once its count is) and the metadata. A
    run stopped by SIGTERM or SIGINT closes the writer with ``complete=False``: the events so far become a valid
    digits file whose metadata says it is partial. A run killed outright leaves the spool, and its consistent,
    verified prefix is recovered on ``resume``.

    ``resume=True`` continues an interrupted output of the same stream: from its spool if there is one, else from
    a partial ``.npz`` at ``path``. The metadata keys in :data:`RESUME_KEYS` must match; :attr:`n_events` then
    counts the events already there. Without ``resume``, a leftover spool is an error (never silently dropped).
    ``compress=False`` writes the uncompressed format (``pxdbg-digits-1``, plain ``numpy.load``).

    Disk: the columns move from the spool into the ``.npz`` one at a time, so writing needs room for the largest
    column once more; that is checked first, and a shortage is an error that keeps the spool (nothing is lost;
    ``resume`` finishes it). Resuming from a partial ``.npz`` copies it into the spool first (the old file stays
    until the new one replaces it).
    """

    #: Metadata that must agree for a resumed output to be one stream.
    RESUME_KEYS = ("model", "checkpoint_sha256", "precision", "seed", "first_frame")

    def __init__(
        self, path: str | os.PathLike, meta: dict | None = None, *, resume: bool = False, compress: bool = True
    ) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise DigitsFileError(f"a digits file name ends in .npz, got {self.path.name!r}")
        self.meta = dict(meta or {})
        self.meta.setdefault("pxdbg_version", __version__)
        self.compress = compress
        self._spool = self.path.parent / f".{self.path.name}.spool"
        self._closed = False
        self._files: dict = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._spool.exists() and not resume:
                raise DigitsFileError(
                    f"{self._spool} holds the events of an interrupted run writing {self.path}; continue it with "
                    f"--resume (DigitsWriter(..., resume=True)), or delete that directory to start over"
                )
            if resume and self._spool.exists():
                self._recover()
            elif resume and self.path.exists():
                self._unpack_partial()
            else:
                if resume and not self.path.exists():
                    log.info("nothing to resume at %s; starting it", self.path)
                self._spool.mkdir()
                (self._spool / "meta.json").write_text(json.dumps(self.meta, sort_keys=True))
                self._offsets = [0]
            self._files = {name: open(self._spool / name, "ab") for name, _ in _COLUMNS}
            self._crcs = open(self._spool / "crc32", "ab")
            self._counts = open(self._spool / "counts", "ab")
        except OSError as exc:
            raise _with_path(exc, self.path) from None

    # -- resuming -----------------------------------------------------------------------------------------
    def _check_resumable(self, theirs: dict, where: Path) -> None:
        wrong = [
            f"{k}: {theirs.get(k)!r} there, {self.meta.get(k)!r} now"
            for k in self.RESUME_KEYS
            if k in self.meta and theirs.get(k) != self.meta.get(k)
        ]
        if wrong:
            raise DigitsFileError(f"cannot resume {where}: it is another stream ({'; '.join(wrong)})")

    def _recover(self) -> None:
        """Take the consistent, verified prefix of a spool: events whose checksum, count and columns were all
        written and agree, with every digit in range. A torn last event is cut silently (a kill does that); a
        damaged event is cut with a warning, and everything from it on is made again."""
        try:
            theirs = json.loads((self._spool / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise DigitsFileError(f"cannot resume from {self._spool}: its meta.json is unreadable ({exc})") from None
        if not isinstance(theirs, dict):
            raise DigitsFileError(f"cannot resume from {self._spool}: its meta.json is not a JSON object")
        self._check_resumable(theirs, self._spool)
        self._restore_moved()
        raw = (self._spool / "counts").read_bytes() if (self._spool / "counts").exists() else b""
        counts = np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.int64)
        crc_path = self._spool / "crc32"
        crcs = None
        if crc_path.exists():  # a spool of an older pxdbg has none: ranges and counts are still checked
            raw = crc_path.read_bytes()
            crcs = np.frombuffer(raw[: len(raw) // 4 * 4], dtype=np.uint32)
        damage = None
        bad = np.flatnonzero((counts < 0) | (counts > FRAME_PIXELS))
        n = len(counts) if crcs is None else min(len(counts), len(crcs))
        if bad.size and bad[0] < n:
            n, damage = int(bad[0]), "a digit count that is negative or beyond a frame"
        offsets = np.concatenate([[0], np.cumsum(counts[:n], dtype=np.int64)])
        sizes = {
            name: (self._spool / name).stat().st_size // np.dtype(dt).itemsize if (self._spool / name).exists() else 0
            for name, dt in _COLUMNS
        }
        n = min(n, int(np.searchsorted(offsets, min(sizes.values()), side="right")) - 1)  # events fully on disk
        cut, why = self._verify(offsets[: n + 1], crcs)
        if cut < n:
            n, damage = cut, why
        if damage is not None:
            log.warning(
                "%s: event %d of its spool is damaged (%s): keeping the %d events before it, making the rest again",
                self._spool,
                n,
                damage,
                n,
            )
        for name, dt in _COLUMNS:
            with open(self._spool / name, "ab") as f:
                f.truncate(int(offsets[n]) * np.dtype(dt).itemsize)
        with open(self._spool / "counts", "ab") as f:
            f.truncate(8 * n)
        with open(crc_path, "ab") as f:
            if crcs is None:  # checksums for the events kept, so that the spool is whole from here on
                f.write(self._crcs_of(offsets[: n + 1]).tobytes())
            f.truncate(4 * n)
        self._offsets = offsets[: n + 1].tolist()
        log.info("resuming %s from its spool: %d events recovered", self.path, n)

    def _columns(self, n_digits: int) -> dict[str, np.ndarray]:
        """The spool's columns, memory-mapped read-only (the first ``n_digits`` of each)."""
        cols = {}
        for name, dt in _COLUMNS:
            cols[name] = (
                np.memmap(self._spool / name, dtype=dt, mode="r", shape=(n_digits,)) if n_digits else np.empty(0, dt)
            )
        return cols

    def _crcs_of(self, offsets: np.ndarray) -> np.ndarray:
        cols = self._columns(int(offsets[-1]))
        return np.array(
            [_event_crc(cols[name][a:b] for name, _ in _COLUMNS) for a, b in zip(offsets[:-1], offsets[1:])],
            dtype=np.uint32,
        )

    def _verify(self, offsets: np.ndarray, crcs: np.ndarray | None) -> tuple[int, str]:
        """The first event of the spool that fails its checksum or holds a digit out of range (else the event
        count), and why."""
        n = len(offsets) - 1
        cols = self._columns(int(offsets[-1]))
        first_bad, why = n, ""
        for a in range(0, int(offsets[-1]), BLOCK_DIGITS):  # ranges, a block at a time
            b = min(a + BLOCK_DIGITS, int(offsets[-1]))
            out = np.zeros(b - a, dtype=bool)
            for name, limit in _LIMITS.items():
                out |= np.asarray(cols[name][a:b]) >= limit
            out |= np.asarray(cols["charge"][a:b]) == 0
            if out.any():
                first_bad = int(np.searchsorted(offsets, a + int(np.argmax(out)), side="right")) - 1
                why = "a digit outside the 40 x 250 x 768 pixels or of charge 0"
                break
        if crcs is not None:
            for i in range(first_bad):
                a, b = int(offsets[i]), int(offsets[i + 1])
                if _event_crc(cols[name][a:b] for name, _ in _COLUMNS) != int(crcs[i]):
                    return i, "its checksum does not match its digits"
        return first_bad, why

    def _restore_moved(self) -> None:
        """An assembly that failed half-way (a full disk): copy the columns it had moved back from its ``.part``."""
        note = self._spool / "moved.json"
        if not note.exists():
            return
        moved = json.loads(note.read_text())
        part = self.path.parent / moved["part"]
        with open(part, "rb") as src:
            for name, (start, nbytes) in moved["columns"].items():
                if (self._spool / name).exists():
                    continue  # deleted only after it was noted: a column noted but still here is whole
                src.seek(start)
                with open(self._spool / f"{name}.part", "wb") as dst:
                    if moved.get("format") == FORMAT_ZSTD:
                        dtype = dict(_COLUMNS)[name]
                        _decode_column_to(src, nbytes, name, dtype, int(moved["digits"]), dst, str(part))
                    else:
                        _copy(src, dst, nbytes, f"{part} is shorter than the columns noted in {note}")
                os.replace(self._spool / f"{name}.part", self._spool / name)
        note.unlink()
        part.unlink()
        log.info("put back the columns a failed assembly of %s had moved", self.path)

    def _unpack_partial(self) -> None:
        old = DigitsFile(self.path)
        if old.meta.get("complete", True):  # said before any stream check: a new seed is not the cause
            raise DigitsFileError(
                f"{self.path} is complete ({old.n_events} events); there is nothing to resume. Write a new file, "
                f"or replace this one with --force (without --resume)"
            )
        self._check_resumable(old.meta, self.path)
        self._spool.mkdir()
        for name, _ in _COLUMNS:
            getattr(old, name).tofile(self._spool / name)
        np.diff(old.offsets).astype(np.int64).tofile(self._spool / "counts")
        self._crcs_of(old.offsets).tofile(self._spool / "crc32")
        (self._spool / "meta.json").write_text(json.dumps(self.meta, sort_keys=True))
        self._offsets = old.offsets.tolist()
        log.info("resuming %s: %d events there", self.path, old.n_events)

    # -- writing ------------------------------------------------------------------------------------------
    @property
    def n_events(self) -> int:
        return len(self._offsets) - 1

    def append(self, frame: SparseFrame) -> None:
        if self._closed:
            raise DigitsFileError("the writer is closed")
        for name, dtype in _COLUMNS:
            if getattr(frame, name).dtype != dtype:
                raise FrameError(f"{name} must be {dtype}, got {getattr(frame, name).dtype}")
        try:
            crc = 0
            for name, _ in _COLUMNS:
                column = np.ascontiguousarray(getattr(frame, name)).view(np.uint8)
                f = self._files[name]
                f.write(column.data)
                f.flush()  # an event is on disk (for a killed run's recovery) once its count is
                crc = zlib.crc32(column, crc)
            self._crcs.write(np.uint32(crc).tobytes())
            self._crcs.flush()
            self._counts.write(np.int64(frame.n_digits).tobytes())
            self._counts.flush()
        except OSError as exc:
            raise _with_path(exc, self.path) from None
        self._offsets.append(self._offsets[-1] + frame.n_digits)

    def sync(self) -> None:
        """Make what was appended durable (fsync the spool), e.g. before deleting the source of those events."""
        for f in (*self._files.values(), self._crcs, self._counts):
            f.flush()
            os.fsync(f.fileno())

    def close(self, complete: bool = True) -> Path:
        """Assemble the ``.npz`` and remove the spool. Returns the path written.

        ``complete=False`` marks the file as the partial output of an interrupted run (resumable). The columns
        move into the file one at a time: each is deleted from the spool once it is safely in the ``.part``
        file (synced, and its place noted in ``moved.json``), so the disk needs room for one column more than
        the output, not twice the output; a failure on the way leaves both, and ``resume`` puts them back.
        """
        if self._closed:
            return self.path
        n = self._offsets[-1]
        need = n * max(np.dtype(dt).itemsize for _, dt in _COLUMNS) + 8 * len(self._offsets) + (1 << 20)
        free = shutil.disk_usage(self.path.parent).free
        if free < need:  # say so before writing anything: the spool stays, nothing is lost
            for f in (*self._files.values(), self._crcs, self._counts):
                f.flush()
            raise DigitsFileError(
                f"not enough free disk space to write {self.path}: it needs {need / 1e6:.1f} MB more, "
                f"{free / 1e6:.1f} MB are free. Its {self.n_events} events are kept in {self._spool}; free "
                f"some space and run the same command with --resume to finish it"
            )
        self._closed = True
        self.meta["complete"] = bool(complete)
        self.meta["format"] = FORMAT_ZSTD if self.compress else FORMAT_RAW  # the writer's, not a joined part's
        tmp = self.path.with_name(self.path.name + ".part")
        moved: dict[str, list[int]] = {}
        try:
            for f in (*self._files.values(), self._crcs, self._counts):
                f.close()
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                offsets = np.asarray(self._offsets, dtype=np.int64)
                with zf.open("offsets.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, offsets, allow_pickle=False)
                with zf.open("meta.npy", "w") as member:
                    np.lib.format.write_array(member, np.array(json.dumps(self.meta, sort_keys=True)))
                for name, dtype in _COLUMNS:
                    start, nbytes = _write_column(zf, name, dtype, n, self._spool / name, self.compress)
                    zf.fp.flush()
                    os.fsync(zf.fp.fileno())
                    moved[name] = [start, nbytes]
                    note = self._spool / "moved.json.part"
                    note.write_text(
                        json.dumps({"part": tmp.name, "format": self.meta["format"], "digits": n, "columns": moved})
                    )
                    os.replace(note, self._spool / "moved.json")
                    (self._spool / name).unlink()
            os.replace(tmp, self.path)
        except OSError as exc:
            if not moved:
                tmp.unlink(missing_ok=True)
            kept = f"{self._spool} and {tmp}" if moved else str(self._spool)
            raise DigitsFileError(
                f"{exc.strerror or exc} while writing {self.path}; its {self.n_events} events are kept in {kept}: "
                f"free some space and run the same command with --resume to finish it"
            ) from None
        shutil.rmtree(self._spool, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; no output file appears."""
        self._closed = True
        for f in (*self._files.values(), *(getattr(self, a) for a in ("_crcs", "_counts") if hasattr(self, a))):
            f.close()
        shutil.rmtree(self._spool, ignore_errors=True)


def _with_path(exc: OSError, path: Path) -> OSError:
    """The same OSError, saying which output it happened to (``[Errno 28] No space left on device`` alone
    does not say where)."""
    return type(exc)(exc.errno, f"{exc.strerror or exc} while writing {path}", str(path))


# -- reading -------------------------------------------------------------------------------------------------
def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, kind: str, ndim: int) -> np.ndarray:
    """One ``.npy`` member, its header checked against the member's size before anything is allocated."""
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"npy format version {version}")
        except ValueError as exc:
            raise DigitsFileError(f"{path}: member {info.filename} is not a readable array ({exc})") from None
        if dtype.hasobject or dtype.kind != kind or len(shape) != ndim or fortran:
            raise DigitsFileError(f"{path}: member {info.filename} is a {dtype} array of shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != info.file_size - fp.tell():
            raise DigitsFileError(
                f"{path}: member {info.filename} declares shape {shape} ({nbytes} bytes) but holds "
                f"{info.file_size - fp.tell()} bytes"
            )
        arr = np.empty(shape, dtype)
        view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
        got = 0
        while got < nbytes:
            k = fp.readinto(view[got:])
            if not k:
                raise DigitsFileError(f"{path}: member {info.filename} ends early")
            got += k
    return arr


def _read_zst(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str, dtype: np.dtype, n: int):
    """One compressed column of ``n`` digits; the zstd frame must declare exactly that size, and that size must
    be one a file of this size can hold (zeros compress 30,000-fold: a small file must not inflate to GBs)."""
    z = _zstd()
    nbytes = n * np.dtype(dtype).itemsize
    limit = _INFLATE_RATIO * path.stat().st_size + _INFLATE_SLACK
    if nbytes > limit:
        raise DigitsFileError(
            f"{path}: member {info.filename} would inflate to {nbytes / 1e9:.1f} GB from a "
            f"{path.stat().st_size / 1e6:.1f} MB file; refused (a damaged file or a zip bomb)"
        )
    blob = zf.read(info)
    try:
        declared = z.zstandard.frame_content_size(blob)
    except z.zstandard.ZstdError:
        raise DigitsFileError(f"{path}: member {info.filename} is not a zstd frame") from None
    if declared != nbytes:
        raise DigitsFileError(
            f"{path}: member {info.filename} declares {declared} bytes, its {n} digits are {nbytes} bytes"
        )
    try:
        raw = z.dctx.decompress(blob, max_output_size=nbytes) if nbytes else b""
    except z.zstandard.ZstdError as exc:
        raise DigitsFileError(f"{path}: member {info.filename} is damaged ({str(exc)[:200]})") from None
    if len(raw) != nbytes:
        raise DigitsFileError(f"{path}: member {info.filename} gave {len(raw)} bytes, not {nbytes}")
    out = np.empty(n, dtype)
    prev, itemsize = 0, np.dtype(dtype).itemsize
    for a in range(0, n, BLOCK_DIGITS):
        b = min(a + BLOCK_DIGITS, n)
        prev = _decode_block(name, raw[a * itemsize : b * itemsize], prev, out[a:b])
    return out


def _check_meta(meta, path: Path) -> dict:
    """The metadata's types where a reader relies on them; one line naming the key otherwise."""
    if not isinstance(meta, dict):
        raise DigitsFileError(f"{path}: its meta is a JSON {type(meta).__name__}, not an object")
    for key, ok, what in (
        ("seed", lambda x: isinstance(x, int) and not isinstance(x, bool) and -(2**63) <= x < 2**64, "an integer"),
        ("first_frame", lambda x: isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63, "a frame index"),
        ("complete", lambda x: isinstance(x, bool), "true or false"),
        ("model", lambda x: isinstance(x, str), "a name"),
    ):
        if key in meta and not ok(meta[key]):
            raise DigitsFileError(f"{path}: its meta {key!r} must be {what}, got a {type(meta[key]).__name__}")
    return meta


class DigitsFile:
    """A digits file opened for reading (arrays are loaded into memory), either format.

    Everything is checked before use: member sizes against the file's own size (a member that would inflate
    to gigabytes is refused from the zip directory), array headers against member sizes, then offsets,
    digit ranges (sensor < 40, u < 250, v < 768, charge 1..255), each event's canonical order and the
    metadata's types. Any problem is one :class:`DigitsFileError` line naming the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DigitsFileError(f"no digits file at {self.path}")
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
            if magic == b"root":
                raise DigitsFileError(
                    f"{self.path} is a ROOT file; DigitsFile reads digits files (.npz). Convert it "
                    f"(pxdbg convert {self.path.name} {self.path.stem}.npz) or read its tree with uproot"
                )
            with zipfile.ZipFile(self.path) as zf:
                self._load(zf)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            if isinstance(exc, DigitsFileError):
                raise
            raise DigitsFileError(f"cannot read digits file {self.path}: {exc}") from None
        self._check()

    def _load(self, zf: zipfile.ZipFile) -> None:
        infos = zf.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise DigitsFileError(f"{self.path} is not a pxdbg digits file: {len(infos)} members")
        limit = _INFLATE_RATIO * self.path.stat().st_size + _INFLATE_SLACK
        members = {i.filename: i for i in infos}
        for info in infos:
            if info.file_size > limit:
                raise DigitsFileError(
                    f"{self.path}: member {info.filename} would inflate to {info.file_size / 1e9:.1f} GB from a "
                    f"{self.path.stat().st_size / 1e6:.1f} MB file; refused (a damaged file or a zip bomb)"
                )
        raw = all(f"{name}.npy" in members for name, _ in _COLUMNS)
        zst = all(f"{name}.zst" in members for name, _ in _COLUMNS)
        if "offsets.npy" not in members or "meta.npy" not in members or not (raw or zst):
            want = {"offsets.npy", "meta.npy", *(f"{name}.npy" for name, _ in _COLUMNS)}
            missing = sorted(m.removesuffix(".npy") for m in want - set(members))
            raise DigitsFileError(f"{self.path} is not a pxdbg digits file: missing {missing}")
        self.offsets = _read_npy(zf, members["offsets.npy"], self.path, "i", 1)
        if self.offsets.dtype != np.int64:
            raise DigitsFileError(f"{self.path}: offsets must be int64, got {self.offsets.dtype}")
        self._check_offsets()
        meta_info = members["meta.npy"]
        if meta_info.file_size > 4 * _MAX_META_CHARS + 1024:
            raise DigitsFileError(f"{self.path}: its meta is {meta_info.file_size} bytes, beyond any digits file's")
        text = _read_npy(zf, meta_info, self.path, "U", 0)
        try:
            meta = json.loads(str(text))
        except ValueError:
            raise DigitsFileError(f"{self.path}: its meta is not JSON") from None
        self.meta = _check_meta(meta, self.path)
        n = int(self.offsets[-1])
        for name, dtype in _COLUMNS:
            if raw:
                arr = _read_npy(zf, members[f"{name}.npy"], self.path, np.dtype(dtype).kind, 1)
                if arr.dtype != dtype or arr.shape != (n,):
                    raise DigitsFileError(
                        f"{self.path}: {name} must be {dtype} with offsets[-1]={n} entries, got {arr.dtype} {arr.shape}"
                    )
            else:
                arr = _read_zst(zf, members[f"{name}.zst"], self.path, name, dtype, n)
            setattr(self, name, arr)

    def _check_offsets(self) -> None:
        off = self.offsets
        if off.size < 1 or off[0] != 0:
            raise DigitsFileError(f"{self.path}: offsets must be non-decreasing int64 starting at 0")
        counts = np.diff(off)
        if np.any(counts < 0) or np.any(counts > FRAME_PIXELS):
            raise DigitsFileError(f"{self.path}: offsets must be non-decreasing, at most one digit per pixel an event")

    def _check(self) -> None:
        """Digit ranges and each event's canonical order, a block of digits at a time (flat memory)."""
        n = int(self.offsets[-1])
        starts = np.zeros(n + 1, dtype=bool)
        starts[self.offsets] = True
        for a in range(0, n, BLOCK_DIGITS):
            b = min(a + BLOCK_DIGITS, n)
            for name, limit in _LIMITS.items():
                if int(getattr(self, name)[a:b].max()) >= limit:
                    raise DigitsFileError(f"{self.path}: a digit's {name} is {limit} or more, outside the sensor")
            if int(self.charge[a:b].min()) == 0:
                raise DigitsFileError(f"{self.path}: a digit has charge 0 ADC (zero means no hit)")
            lo = max(a - 1, 0)  # the pair across the block boundary too
            key = (self.sensor[lo:b].astype(np.int64) * N_U + self.u[lo:b]) * N_V + self.v[lo:b]
            wrong = (key[1:] <= key[:-1]) & ~starts[lo + 1 : b]
            if wrong.any():
                i = int(np.searchsorted(self.offsets, lo + 1 + int(np.argmax(wrong)), side="right")) - 1
                raise DigitsFileError(
                    f"{self.path}: event {i}'s digits are not in (sensor, u, v) order or repeat a pixel"
                )

    @property
    def n_events(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def format(self) -> str:
        return str(self.meta.get("format", FORMAT_RAW))

    def __len__(self) -> int:
        return self.n_events

    def frame(self, i: int) -> SparseFrame:
        if not -self.n_events <= i < self.n_events:
            raise IndexError(f"event {i} out of range for {self.n_events} events")
        i %= self.n_events
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return SparseFrame(self.sensor[a:b], self.u[a:b], self.v[a:b], self.charge[a:b])

    def __iter__(self) -> Iterator[SparseFrame]:
        for i in range(self.n_events):
            yield self.frame(i)


def write_digits(path: str | os.PathLike, frames, meta: dict | None = None, *, compress: bool = True) -> Path:
    """Write an iterable of :class:`SparseFrame` to ``path``."""
    with DigitsWriter(path, meta, compress=compress) as writer:
        for frame in frames:
            writer.append(frame)
    return writer.path


def read_digits(path: str | os.PathLike) -> DigitsFile:
    return DigitsFile(path)


def interrupted_meta(path: str | os.PathLike) -> dict | None:
    """The metadata of an interrupted output at ``path`` (its spool, or a partial ``.npz``), else ``None``.

    ``pxdbg run/generate --resume`` reads the stream seed from it when none is given.
    """
    path = Path(path)
    spool = path.parent / f".{path.name}.spool"
    try:
        if spool.is_dir():
            meta = json.loads((spool / "meta.json").read_text())
            return _check_meta(meta, spool / "meta.json")
        if path.suffix == ".npz" and path.is_file():
            meta = DigitsFile(path).meta
            return None if meta.get("complete", True) else meta
    except (OSError, ValueError) as exc:
        if isinstance(exc, DigitsFileError):
            raise
        raise DigitsFileError(f"cannot read the interrupted output {path}: {exc}") from None
    return None


def join(out: str | os.PathLike, parts: list[str | os.PathLike], *, remove_parts: bool = False) -> DigitsFile:
    """Write the digits files ``parts`` of one stream (consecutive frames, in any order) as one file ``out``.

    They must agree on model, checkpoint, precision and stream seed (which each must name), and their frames
    must follow each other without gap or overlap. ``remove_parts`` deletes each part once its events are safely
    in the new file's spool, so joining needs room for the largest part and one column more, not twice the
    output. The output is complete when every part is.
    """
    files = [DigitsFile(p) for p in parts]
    if not files:
        raise DigitsFileError("join needs at least one part")
    for f in files:
        if "seed" not in f.meta:
            raise DigitsFileError(f"{f.path} names no stream seed in its metadata; join needs parts of one stream")
    files.sort(key=lambda f: f.meta.get("first_frame", 0))
    first = files[0]
    keys = ("model", "checkpoint_sha256", "precision", "seed")
    for f in files[1:]:
        wrong = [f"{k} {f.meta.get(k)!r} vs {first.meta.get(k)!r}" for k in keys if f.meta.get(k) != first.meta.get(k)]
        if wrong:
            raise DigitsFileError(f"{f.path} is not of the stream of {first.path}: {'; '.join(wrong)}")
    expected = first.meta.get("first_frame", 0)
    for f in files:
        start = f.meta.get("first_frame", 0)
        if start != expected:
            what = "a gap" if start > expected else "an overlap"
            raise DigitsFileError(f"{f.path} starts at frame {start}, but frame {expected} comes next: {what}")
        expected += f.n_events
    if Path(out).resolve() in {f.path.resolve() for f in files}:
        raise DigitsFileError(f"the output {out} is one of the parts; name a new file")
    meta = {k: v for k, v in first.meta.items() if k not in ("complete", "pxdbg_version", "format")}
    complete = all(f.meta.get("complete", True) for f in files)
    writer = DigitsWriter(out, meta)
    try:
        for f in files:
            for frame in f:
                writer.append(frame)
            if remove_parts:
                writer.sync()
                f.path.unlink()
    except BaseException:
        if not remove_parts:
            writer.abort()  # the parts are all still there
        raise
    writer.close(complete=complete)
    return DigitsFile(out)
