"""The digits file: many events' sparse frames in one ``.npz``.

Arrays: ``offsets`` (int64, n_events + 1; event i's digits are ``offsets[i]:offsets[i+1]``), ``sensor``
(uint8, generator index), ``u`` (uint8), ``v`` (uint16), ``charge`` (uint8, ADC) and ``meta`` (a 0-d unicode
array holding a JSON object: model, checkpoint_sha256, precision, seed, first_frame, pxdbg_version, ...).
The file loads with ``numpy.load(path)`` and no pickle.

:class:`DigitsWriter` streams: digits go to spool files next to the output and are assembled into the
``.npz`` at :meth:`DigitsWriter.close`, so memory stays flat however many events are written.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE, FrameError, SparseFrame
from pxdbg.shared.version import __version__

log = logging.getLogger("pxdbg")
_COLUMNS = (("sensor", SENSOR_DTYPE), ("u", U_DTYPE), ("v", V_DTYPE), ("charge", CHARGE_DTYPE))


class DigitsFileError(PxdbgError, ValueError):
    """A digits file is missing, malformed or inconsistent."""


def _write_npy_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, n: int, source: Path | None) -> int:
    """Write one column as ``<name>.npy`` (stored, not compressed); return where its data starts in the file."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
    with zf.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        start = zf.fp.tell()
        if source is not None:  # exactly n items: an append cut short by a signal may have left a tail
            with open(source, "rb") as raw:
                _copy(raw, member, n * np.dtype(dtype).itemsize, f"spool file {source} is shorter than its {n} entries")
    return start


def _copy(src, dst, nbytes: int, short: str) -> None:
    """Copy exactly ``nbytes`` from ``src``'s position to ``dst``, in blocks; ``short`` is the error if it ends."""
    while nbytes:
        block = src.read(min(nbytes, 1 << 20))
        if not block:
            raise DigitsFileError(short)
        dst.write(block)
        nbytes -= len(block)


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

    The digits go to a spool directory ``.<name>.spool`` beside the output: the four columns, the digit count
    of each event (written after its columns) and the metadata. A run stopped by SIGTERM or SIGINT closes the
    writer with ``complete=False``: the events so far become a valid digits file whose metadata says it is
    partial. A run killed outright leaves the spool, and its consistent prefix is recovered on ``resume``.

    ``resume=True`` continues an interrupted output of the same stream: from its spool if there is one, else from
    a partial ``.npz`` at ``path``. The metadata keys in :data:`RESUME_KEYS` must match; :attr:`n_events` then
    counts the events already there. Without ``resume``, a leftover spool is an error (never silently dropped).

    Disk: the assembly copies the spool into the ``.npz``, so it needs free space for the output once more; that
    is checked first, and a shortage is an error that keeps the spool (nothing is lost; ``resume`` finishes it).
    Resuming from a partial ``.npz`` copies it into the spool first (the old file stays until the new one
    replaces it).
    """

    #: Metadata that must agree for a resumed output to be one stream.
    RESUME_KEYS = ("model", "checkpoint_sha256", "precision", "seed", "first_frame")

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, *, resume: bool = False) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise DigitsFileError(f"a digits file name ends in .npz, got {self.path.name!r}")
        self.meta = dict(meta or {})
        self.meta.setdefault("pxdbg_version", __version__)
        self.meta.setdefault("format", "pxdbg-digits-1")
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
        """Take the consistent prefix of a spool: events whose counts and columns were all written."""
        try:
            theirs = json.loads((self._spool / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise DigitsFileError(f"cannot resume from {self._spool}: its meta.json is unreadable ({exc})") from None
        self._check_resumable(theirs, self._spool)
        self._restore_moved()
        raw = (self._spool / "counts").read_bytes() if (self._spool / "counts").exists() else b""
        counts = np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        sizes = {
            name: (self._spool / name).stat().st_size // np.dtype(dt).itemsize if (self._spool / name).exists() else 0
            for name, dt in _COLUMNS
        }
        n = int(np.searchsorted(offsets, min(sizes.values()), side="right")) - 1  # events fully on disk
        for name, dt in _COLUMNS:
            with open(self._spool / name, "ab") as f:
                f.truncate(int(offsets[n]) * np.dtype(dt).itemsize)
        with open(self._spool / "counts", "ab") as f:
            f.truncate(8 * n)
        self._offsets = offsets[: n + 1].tolist()
        log.info("resuming %s from its spool: %d events recovered", self.path, n)

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
                    _copy(src, dst, nbytes, f"{part} is shorter than the columns noted in {note}")
                os.replace(self._spool / f"{name}.part", self._spool / name)
        note.unlink()
        part.unlink()
        log.info("put back the columns a failed assembly of %s had moved", self.path)

    def _unpack_partial(self) -> None:
        old = DigitsFile(self.path)
        self._check_resumable(old.meta, self.path)
        if old.meta.get("complete", True):
            raise DigitsFileError(f"{self.path} is complete ({old.n_events} events); there is nothing to resume")
        self._spool.mkdir()
        for name, _ in _COLUMNS:
            getattr(old, name).tofile(self._spool / name)
        np.diff(old.offsets).astype(np.int64).tofile(self._spool / "counts")
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
            for name, _ in _COLUMNS:
                f = self._files[name]
                f.write(np.ascontiguousarray(getattr(frame, name)).data)
                f.flush()  # an event is on disk (for a killed run's recovery) once its count is
            self._counts.write(np.int64(frame.n_digits).tobytes())
            self._counts.flush()
        except OSError as exc:
            raise _with_path(exc, self.path) from None
        self._offsets.append(self._offsets[-1] + frame.n_digits)

    def sync(self) -> None:
        """Make what was appended durable (fsync the spool), e.g. before deleting the source of those events."""
        for f in (*self._files.values(), self._counts):
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
            for f in (*self._files.values(), self._counts):
                f.flush()
            raise DigitsFileError(
                f"not enough free disk space to write {self.path}: it needs {need / 1e6:.1f} MB more, "
                f"{free / 1e6:.1f} MB are free. Its {self.n_events} events are kept in {self._spool}; free "
                f"some space and run the same command with --resume to finish it"
            )
        self._closed = True
        self.meta["complete"] = bool(complete)
        tmp = self.path.with_name(self.path.name + ".part")
        moved: dict[str, list[int]] = {}
        try:
            for f in (*self._files.values(), self._counts):
                f.close()
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                offsets = np.asarray(self._offsets, dtype=np.int64)
                with zf.open("offsets.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, offsets, allow_pickle=False)
                with zf.open("meta.npy", "w") as member:
                    np.lib.format.write_array(member, np.array(json.dumps(self.meta, sort_keys=True)))
                for name, dtype in _COLUMNS:
                    start = _write_npy_member(zf, name, dtype, n, self._spool / name)
                    zf.fp.flush()
                    os.fsync(zf.fp.fileno())
                    moved[name] = [start, n * np.dtype(dtype).itemsize]
                    note = self._spool / "moved.json.part"
                    note.write_text(json.dumps({"part": tmp.name, "columns": moved}))
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
        for f in (*self._files.values(), *([self._counts] if hasattr(self, "_counts") else [])):
            f.close()
        shutil.rmtree(self._spool, ignore_errors=True)


def _with_path(exc: OSError, path: Path) -> OSError:
    """The same OSError, saying which output it happened to (``[Errno 28] No space left on device`` alone
    does not say where)."""
    return type(exc)(exc.errno, f"{exc.strerror or exc} while writing {path}", str(path))


class DigitsFile:
    """A digits file opened for reading (arrays are loaded into memory)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DigitsFileError(f"no digits file at {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                missing = {"offsets", "meta", *(name for name, _ in _COLUMNS)} - set(npz.files)
                if missing:
                    raise DigitsFileError(f"{self.path} is not a pxdbg digits file: missing {sorted(missing)}")
                self.offsets = npz["offsets"]
                self.meta = json.loads(str(npz["meta"]))
                for name, _ in _COLUMNS:
                    setattr(self, name, npz[name])
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DigitsFileError):
                raise
            raise DigitsFileError(f"cannot read digits file {self.path}: {exc}") from exc
        self._check()

    def _check(self) -> None:
        off = self.offsets
        if off.dtype != np.int64 or off.ndim != 1 or off.size < 1 or off[0] != 0 or np.any(np.diff(off) < 0):
            raise DigitsFileError(f"{self.path}: offsets must be non-decreasing int64 starting at 0")
        for name, dtype in _COLUMNS:
            arr = getattr(self, name)
            if arr.dtype != dtype or arr.shape != (int(off[-1]),):
                raise DigitsFileError(
                    f"{self.path}: {name} must be {dtype} with offsets[-1]={int(off[-1])} entries, "
                    f"got {arr.dtype} {arr.shape}"
                )

    @property
    def n_events(self) -> int:
        return int(self.offsets.size - 1)

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


def write_digits(path: str | os.PathLike, frames, meta: dict | None = None) -> Path:
    """Write an iterable of :class:`SparseFrame` to ``path``."""
    with DigitsWriter(path, meta) as writer:
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
            return json.loads((spool / "meta.json").read_text())
        if path.suffix == ".npz" and path.is_file():
            meta = DigitsFile(path).meta
            return None if meta.get("complete", True) else meta
    except (OSError, ValueError) as exc:
        raise DigitsFileError(f"cannot read the interrupted output {path}: {exc}") from None
    return None


def join(out: str | os.PathLike, parts: list[str | os.PathLike], *, remove_parts: bool = False) -> DigitsFile:
    """Write the digits files ``parts`` of one stream (consecutive frames, in any order) as one file ``out``.

    They must agree on model, checkpoint, precision and stream seed, and their frames must follow each other
    without gap or overlap. ``remove_parts`` deletes each part once its events are safely in the new file's
    spool, so joining needs room for the largest part and one column more, not twice the output. The output
    is complete when every part is.
    """
    files = sorted((DigitsFile(p) for p in parts), key=lambda f: int(f.meta.get("first_frame", 0)))
    if not files:
        raise DigitsFileError("join needs at least one part")
    first = files[0]
    keys = ("model", "checkpoint_sha256", "precision", "seed")
    for f in files[1:]:
        wrong = [f"{k} {f.meta.get(k)!r} vs {first.meta.get(k)!r}" for k in keys if f.meta.get(k) != first.meta.get(k)]
        if wrong:
            raise DigitsFileError(f"{f.path} is not of the stream of {first.path}: {'; '.join(wrong)}")
    expected = int(first.meta.get("first_frame", 0))
    for f in files:
        start = int(f.meta.get("first_frame", 0))
        if start != expected:
            what = "a gap" if start > expected else "an overlap"
            raise DigitsFileError(f"{f.path} starts at frame {start}, but frame {expected} comes next: {what}")
        expected += f.n_events
    if Path(out).resolve() in {f.path.resolve() for f in files}:
        raise DigitsFileError(f"the output {out} is one of the parts; name a new file")
    meta = {k: v for k, v in first.meta.items() if k not in ("complete", "pxdbg_version")}
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
