"""The digits file: many events' sparse frames in one ``.npz`` (a zip archive).

Members: ``offsets.npy`` (int64, n_events + 1; event i's digits are ``offsets[i]:offsets[i+1]``),
``meta.npy`` (a 0-d unicode array holding a JSON object: model, checkpoint_sha256, precision, seed,
first_frame, pxdbg_version, format, complete, ...) and the four digit columns ``sensor`` (uint8, generator
index), ``u`` (uint8), ``v`` (uint16) and ``charge`` (uint8, ADC, 1..255), in one of two formats:

- ``pxdbg-digits-2`` (the default): each column is ``<name>.zst``, zstd frames (level 1), one per block of
  :data:`BLOCK_DIGITS` digits, of the column transformed the way the wire codec does it
  (:mod:`pxdbg.shared.digitscodec`). About 1.8 bytes per digit against 4 uncompressed. Read it with
  :class:`DigitsFile`; ``numpy.load`` opens it without pickle too and gives ``offsets`` and ``meta`` (the
  columns as zstd bytes; ``zstd -d`` gives the transformed column).
- ``pxdbg-digits-1`` (``DigitsWriter(..., compress=False)``, and every file before): each column is a plain
  ``<name>.npy``; ``numpy.load(path)["v"]`` gives the array.

The parts, along their seams: :mod:`~pxdbg.shared.digitscodec` (the column's stored bytes),
:mod:`~pxdbg.shared.digitsreader` (:class:`DigitsFile`, every part checked before use),
:mod:`~pxdbg.shared.digitswriter` (:class:`DigitsWriter`: a spool beside the output, assembled at close),
:mod:`~pxdbg.shared.digitsspool` (the spool's layout and resuming from it) and
:mod:`~pxdbg.shared.digitscompressor` (compressing the spool in the background during the run). This module
keeps the public names in one place, and joins parts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pxdbg.shared.digitscodec import BLOCK_DIGITS, FORMAT_RAW, FORMAT_ZSTD, ZSTD_LEVEL, DigitsFileError
from pxdbg.shared.digitsreader import DigitsFile, check_meta, read_digits
from pxdbg.shared.digitsspool import spool_of
from pxdbg.shared.digitswriter import AtomicWriter, DigitsWriter, write_digits

__all__ = [
    "BLOCK_DIGITS",
    "FORMAT_RAW",
    "FORMAT_ZSTD",
    "ZSTD_LEVEL",
    "AtomicWriter",
    "DigitsFile",
    "DigitsFileError",
    "DigitsWriter",
    "interrupted_meta",
    "join",
    "read_digits",
    "write_digits",
]


def interrupted_meta(path: str | os.PathLike) -> dict | None:
    """The metadata of an interrupted output at ``path`` (its spool, or a partial ``.npz``), else ``None``.

    ``pxdbg run/generate --resume`` reads the stream seed from it when none is given.
    """
    path = Path(path)
    spool = spool_of(path)
    try:
        if spool.is_dir():
            meta = json.loads((spool / "meta.json").read_text())
            return check_meta(meta, spool / "meta.json")
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
