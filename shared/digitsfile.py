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
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pxdbg.shared.frame import CHARGE_DTYPE, SENSOR_DTYPE, U_DTYPE, V_DTYPE, FrameError, SparseFrame
from pxdbg.shared.version import __version__

_COLUMNS = (("sensor", SENSOR_DTYPE), ("u", U_DTYPE), ("v", V_DTYPE), ("charge", CHARGE_DTYPE))


class DigitsFileError(ValueError):
    """A digits file is missing, malformed or inconsistent."""


def _write_npy_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, n: int, source: Path | None) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
    with zf.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        if source is not None:
            with open(source, "rb") as raw:
                shutil.copyfileobj(raw, member, 1 << 20)


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

    Use as a context manager. If the block raises, no output file is written and the spool is removed.
    """

    def __init__(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise DigitsFileError(f"a digits file name ends in .npz, got {self.path.name!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.meta.setdefault("pxdbg_version", __version__)
        self.meta.setdefault("format", "pxdbg-digits-1")
        self._spool = Path(tempfile.mkdtemp(prefix=".pxdbg-spool-", dir=self.path.parent))
        self._files = {name: open(self._spool / name, "wb") for name, _ in _COLUMNS}
        self._offsets = [0]
        self._closed = False

    @property
    def n_events(self) -> int:
        return len(self._offsets) - 1

    def append(self, frame: SparseFrame) -> None:
        if self._closed:
            raise DigitsFileError("the writer is closed")
        for name, dtype in _COLUMNS:
            arr = getattr(frame, name)
            if arr.dtype != dtype:
                raise FrameError(f"{name} must be {dtype}, got {arr.dtype}")
            self._files[name].write(np.ascontiguousarray(arr).data)
        self._offsets.append(self._offsets[-1] + frame.n_digits)

    def close(self) -> Path:
        """Assemble the ``.npz`` and remove the spool. Returns the path written."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            for f in self._files.values():
                f.close()
            n = self._offsets[-1]
            tmp = self.path.with_name(self.path.name + ".part")
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                offsets = np.asarray(self._offsets, dtype=np.int64)
                with zf.open("offsets.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, offsets, allow_pickle=False)
                for name, dtype in _COLUMNS:
                    _write_npy_member(zf, name, dtype, n, self._spool / name)
                with zf.open("meta.npy", "w") as member:
                    np.lib.format.write_array(member, np.array(json.dumps(self.meta, sort_keys=True)))
            os.replace(tmp, self.path)
        finally:
            shutil.rmtree(self._spool, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; no output file appears."""
        self._closed = True
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._spool, ignore_errors=True)


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
