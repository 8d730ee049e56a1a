"""Writing a digits file: events are appended to a spool and the ``.npz`` appears, atomically, at close."""

from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from pxdbg.shared import digitsspool
from pxdbg.shared.digitscodec import COLUMNS, FORMAT_RAW, FORMAT_ZSTD, DigitsFileError, copy_exactly
from pxdbg.shared.digitscompressor import BackgroundCompressor
from pxdbg.shared.frame import FrameError, SparseFrame
from pxdbg.shared.version import __version__

log = logging.getLogger("pxdbg")
#: The zip entries' timestamp: fixed, so that a file's bytes depend on its events and metadata only (a resumed
#: output equals an unbroken one byte for byte).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


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


def _member(zf: zipfile.ZipFile, name: str):
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o600 << 16
    return zf.open(info, "w", force_zip64=True)


def _archive_file(zf: zipfile.ZipFile) -> IO[bytes]:
    assert zf.fp is not None  # None only once the archive is closed
    return zf.fp


def _archive_position(zf: zipfile.ZipFile) -> int:
    return _archive_file(zf).tell()


def _write_column(zf: zipfile.ZipFile, name: str, dtype, n: int, spool: Path, compress: bool) -> tuple[int, int]:
    """Write column ``name`` (``n`` items) from the spool as a member: the raw column as ``.npy``, or the blocks
    the background compressor wrote as ``.zst``. Returns (start, size) of its stored bytes in the archive, from
    where a failed assembly's :func:`~pxdbg.shared.digitsspool.restore_moved` takes it back."""
    if not compress:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
        nbytes = n * np.dtype(dtype).itemsize
        with _member(zf, name + ".npy") as member:
            np.lib.format.write_array_header_1_0(member, header)
            start = _archive_position(zf)
            # exactly n items: an append cut short by a signal may have left a tail
            with open(spool / name, "rb") as raw:
                copy_exactly(raw, member, nbytes, f"spool file {spool / name} is shorter than its {n} entries")
        return start, nbytes
    source = spool / f"{name}.zst"
    nbytes = source.stat().st_size
    with _member(zf, name + ".zst") as member, open(source, "rb") as blocks:
        start = _archive_position(zf)
        copy_exactly(blocks, member, nbytes, f"spool file {source} changed while being copied")
    return start, nbytes


def _with_path(exc: OSError, path: Path) -> OSError:
    """The same OSError, saying which output it happened to (``[Errno 28] No space left on device`` alone
    does not say where)."""
    return type(exc)(exc.errno, f"{exc.strerror or exc} while writing {path}", str(path))


class DigitsWriter(AtomicWriter):
    """Append frames one at a time; the ``.npz`` appears (atomically) at :meth:`close`.

    The digits go to a spool directory ``.<name>.spool`` beside the output (:mod:`pxdbg.shared.digitsspool`) and
    are compressed there in the background, a block at a time, while the run goes on
    (:mod:`pxdbg.shared.digitscompressor`). A run stopped by SIGTERM or SIGINT closes the writer with
    ``complete=False``: the events so far become a valid digits file whose metadata says it is partial. A run
    killed outright leaves the spool, and its consistent, verified prefix is recovered on ``resume``.

    ``resume=True`` continues an interrupted output of the same stream: from its spool if there is one, else from
    a partial ``.npz`` at ``path``. The metadata keys in :data:`RESUME_KEYS` must match; :attr:`n_events` then
    counts the events already there. Without ``resume``, a leftover spool is an error (never silently dropped).
    ``compress=False`` writes the uncompressed format (``pxdbg-digits-1``, plain ``numpy.load``).

    Disk: during a run the spool holds the raw columns and, compressed, their blocks so far (about 1.35x the raw
    size). At close the columns move from the spool into the ``.npz`` one at a time, so that needs room for the
    largest column once more; that is checked first, and a shortage is an error that keeps the spool (nothing is lost;
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
        self._spool = digitsspool.spool_of(self.path)
        self._closed = False
        self._files: dict = {}
        self._compressor: BackgroundCompressor | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._spool.exists() and not resume:
                raise DigitsFileError(
                    f"{self._spool} holds the events of an interrupted run writing {self.path}; continue it with "
                    f"--resume (DigitsWriter(..., resume=True)), or delete that directory to start over"
                )
            if resume and self._spool.exists():
                self._offsets = digitsspool.recover(self._spool, self.path, self.meta, self.RESUME_KEYS)
            elif resume and self.path.exists():
                self._offsets = digitsspool.unpack_partial(self._spool, self.path, self.meta, self.RESUME_KEYS)
            else:
                if resume and not self.path.exists():
                    log.info("nothing to resume at %s; starting it", self.path)
                self._offsets = digitsspool.start(self._spool, self.meta)
            self._files = {name: open(self._spool / name, "ab") for name, _ in COLUMNS}
            self._crcs = open(self._spool / "crc32", "ab")
            self._counts = open(self._spool / "counts", "ab")
            if compress:
                self._compressor = BackgroundCompressor(self._spool, self.path, ready=self._offsets[-1])
                # a writer dropped without close or abort (an error before its owner took it) must not leave
                # threads polling for the life of the process
                weakref.finalize(self, self._compressor.cancel)
        except OSError as exc:
            raise _with_path(exc, self.path) from None

    @property
    def n_events(self) -> int:
        return len(self._offsets) - 1

    def append(self, frame: SparseFrame) -> None:
        if self._closed:
            raise DigitsFileError("the writer is closed")
        for name, dtype in COLUMNS:
            if getattr(frame, name).dtype != dtype:
                raise FrameError(f"{name} must be {dtype}, got {getattr(frame, name).dtype}")
        try:
            crc = 0
            for name, _ in COLUMNS:
                column = np.ascontiguousarray(getattr(frame, name)).view(np.uint8)
                f = self._files[name]
                f.write(column.data)
                f.flush()  # an event is on disk (for a killed run's recovery) once its count is
                crc = zlib.crc32(column.data, crc)
            self._crcs.write(np.uint32(crc).tobytes())
            self._crcs.flush()
            self._counts.write(np.int64(frame.n_digits).tobytes())
            self._counts.flush()
        except OSError as exc:
            raise _with_path(exc, self.path) from None
        self._offsets.append(self._offsets[-1] + frame.n_digits)
        if self._compressor is not None:
            self._compressor.advance(self._offsets[-1])

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
        spooled = (*self._files.values(), self._crcs, self._counts)
        for f in spooled:
            f.flush()
        if self._compressor is not None:
            try:
                self._compressor.finish(n)  # the last, partial block; the others are done or in progress
            except BaseException:
                self._closed = True
                self._compressor.stop()
                for f in spooled:
                    f.close()
                raise
            # a member is copied from its .zst, which then goes: room for the largest one more
            largest = max((self._spool / f"{name}.zst").stat().st_size for name, _ in COLUMNS)
        else:
            largest = n * max(np.dtype(dt).itemsize for _, dt in COLUMNS)
        need = largest + 8 * len(self._offsets) + (1 << 20)
        free = shutil.disk_usage(self.path.parent).free
        if free < need:  # say so before writing anything: the spool stays, nothing is lost
            raise DigitsFileError(
                f"not enough free disk space to write {self.path}: it needs {need / 1e6:.1f} MB more, "
                f"{free / 1e6:.1f} MB are free. Its {self.n_events} events are kept in {self._spool}; free "
                f"some space and run the same command with --resume to finish it"
            )
        for f in spooled:
            f.close()
        self._closed = True
        self.meta["complete"] = bool(complete)
        self.meta["format"] = FORMAT_ZSTD if self.compress else FORMAT_RAW  # the writer's, not a joined part's
        tmp = self.path.with_name(self.path.name + ".part")
        moved: dict[str, list[int]] = {}
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                offsets = np.asarray(self._offsets, dtype=np.int64)
                with _member(zf, "offsets.npy") as member:
                    np.lib.format.write_array(member, offsets, allow_pickle=False)
                with _member(zf, "meta.npy") as member:
                    np.lib.format.write_array(member, np.array(json.dumps(self.meta, sort_keys=True)))
                for name, dtype in COLUMNS:
                    start, nbytes = _write_column(zf, name, dtype, n, self._spool, self.compress)
                    _archive_file(zf).flush()
                    os.fsync(_archive_file(zf).fileno())
                    moved[name] = [start, nbytes]
                    digitsspool.note_moved(self._spool, tmp, self.meta["format"], n, moved)
                    (self._spool / name).unlink()
                    (self._spool / f"{name}.zst").unlink(missing_ok=True)
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
        if self._compressor is not None:
            self._compressor.stop()
        for f in (*self._files.values(), *(getattr(self, a) for a in ("_crcs", "_counts") if hasattr(self, a))):
            f.close()
        shutil.rmtree(self._spool, ignore_errors=True)


def write_digits(path: str | os.PathLike, frames, meta: dict | None = None, *, compress: bool = True) -> Path:
    """Write an iterable of :class:`SparseFrame` to ``path``."""
    with DigitsWriter(path, meta, compress=compress) as writer:
        for frame in frames:
            writer.append(frame)
    return writer.path
