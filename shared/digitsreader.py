"""Reading a digits file (either format), every part of it checked before use."""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pxdbg.shared.digitscodec import (
    BLOCK_DIGITS,
    COLUMNS,
    FORMAT_RAW,
    LIMITS,
    DigitsFileError,
    decode_column,
    inflate_into,
)
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import FRAME_PIXELS, N_U, N_V

#: A member of a digits file may inflate to at most this many times the file's own size (plus
#: :data:`INFLATE_SLACK`): real columns compress ~2-4x; a zip bomb's 1000x is refused from the zip directory.
INFLATE_RATIO = 64
INFLATE_SLACK = 64 << 20
_MAX_MEMBERS = 64
MAX_META_CHARS = 1 << 20


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, kind: str, ndim: int) -> np.ndarray:
    """One ``.npy`` member, its header checked against the member's size before anything is allocated."""
    with zf.open(info) as fp:
        assert isinstance(fp, zipfile.ZipExtFile)  # what open() gives in read mode; its readinto fills the array
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
        view = arr.reshape(-1).view(np.uint8).data if arr.size else memoryview(b"")
        got = 0
        while got < nbytes:
            k = fp.readinto(view[got:])
            if not k:
                raise DigitsFileError(f"{path}: member {info.filename} ends early")
            got += k
    return arr


def _read_zst(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str, dtype: np.dtype, n: int):
    """One compressed column of ``n`` digits; its frames must hold exactly that many bytes, and that size must
    be one a file of this size can hold (zeros compress 30,000-fold: a small file must not inflate to GBs)."""
    nbytes = n * np.dtype(dtype).itemsize
    limit = INFLATE_RATIO * path.stat().st_size + INFLATE_SLACK
    if nbytes > limit:
        raise DigitsFileError(
            f"{path}: member {info.filename} would inflate to {nbytes / 1e9:.1f} GB from a "
            f"{path.stat().st_size / 1e6:.1f} MB file; refused (a damaged file or a zip bomb)"
        )
    raw = np.empty(nbytes, np.uint8)
    with zf.open(info) as fp:
        inflate_into(fp.read, info.file_size, raw.data, f"{path}: member {info.filename}")
    out = np.empty(n, dtype)
    decode_column(raw, name, out)
    return out


def check_meta(meta, path: Path) -> dict:
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

    # the digit columns (one per entry of COLUMNS), set by _load
    sensor: np.ndarray
    u: np.ndarray
    v: np.ndarray
    charge: np.ndarray

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
        limit = INFLATE_RATIO * self.path.stat().st_size + INFLATE_SLACK
        members = {i.filename: i for i in infos}
        for info in infos:
            if info.file_size > limit:
                raise DigitsFileError(
                    f"{self.path}: member {info.filename} would inflate to {info.file_size / 1e9:.1f} GB from a "
                    f"{self.path.stat().st_size / 1e6:.1f} MB file; refused (a damaged file or a zip bomb)"
                )
        raw = all(f"{name}.npy" in members for name, _ in COLUMNS)
        zst = all(f"{name}.zst" in members for name, _ in COLUMNS)
        if "offsets.npy" not in members or "meta.npy" not in members or not (raw or zst):
            want = {"offsets.npy", "meta.npy", *(f"{name}.npy" for name, _ in COLUMNS)}
            missing = sorted(m.removesuffix(".npy") for m in want - set(members))
            raise DigitsFileError(f"{self.path} is not a pxdbg digits file: missing {missing}")
        self.offsets = _read_npy(zf, members["offsets.npy"], self.path, "i", 1)
        if self.offsets.dtype != np.int64:
            raise DigitsFileError(f"{self.path}: offsets must be int64, got {self.offsets.dtype}")
        self._check_offsets()
        meta_info = members["meta.npy"]
        if meta_info.file_size > 4 * MAX_META_CHARS + 1024:
            raise DigitsFileError(f"{self.path}: its meta is {meta_info.file_size} bytes, beyond any digits file's")
        text = _read_npy(zf, meta_info, self.path, "U", 0)
        try:
            meta = json.loads(str(text))
        except ValueError:
            raise DigitsFileError(f"{self.path}: its meta is not JSON") from None
        self.meta = check_meta(meta, self.path)
        n = int(self.offsets[-1])
        for name, dtype in COLUMNS:
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
            for name, limit in LIMITS.items():
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


def read_digits(path: str | os.PathLike) -> DigitsFile:
    return DigitsFile(path)
