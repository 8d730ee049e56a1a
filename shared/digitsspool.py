"""A digits writer's spool: the directory ``.<name>.spool`` beside the output, and resuming from it.

Layout: the four raw columns (``sensor``, ``u``, ``v``, ``charge``), each event's CRC-32 (``crc32``, uint32) and
digit count (``counts``, int64; written last: an event is on disk once its count is), ``meta.json``, the
compressed blocks so far (``<column>.zst``, made again on resume) and, while the output is being assembled,
``moved.json`` (which columns already went into the ``.part`` file, and where).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pxdbg.shared.digitscodec import (
    BLOCK_DIGITS,
    COLUMNS,
    FORMAT_ZSTD,
    LIMITS,
    DigitsFileError,
    copy_exactly,
    event_crc,
    inflate_column,
)
from pxdbg.shared.digitsreader import DigitsFile
from pxdbg.shared.geometry import FRAME_PIXELS

log = logging.getLogger("pxdbg")


def spool_of(path: Path) -> Path:
    """The spool directory of the output ``path``."""
    return path.parent / f".{path.name}.spool"


def check_resumable(mine: dict, theirs: dict, keys: tuple[str, ...], where: Path) -> None:
    """One line naming every key of ``keys`` on which an interrupted output ``theirs`` is another stream."""
    differ = [k for k in keys if k in mine and theirs.get(k) != mine.get(k)]
    wrong = [f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in differ]
    if wrong:
        raise DigitsFileError(f"cannot resume {where}: it is another stream ({'; '.join(wrong)})")


def start(spool: Path, meta: dict) -> list[int]:
    """A new, empty spool; returns its offsets."""
    spool.mkdir()
    (spool / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    return [0]


def recover(spool: Path, path: Path, meta: dict, keys: tuple[str, ...]) -> list[int]:
    """Take the consistent, verified prefix of a spool: events whose checksum, count and columns were all
    written and agree, with every digit in range. A torn last event is cut silently (a kill does that); a
    damaged event is cut with a warning, and everything from it on is made again. Returns the offsets kept."""
    try:
        theirs = json.loads((spool / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise DigitsFileError(f"cannot resume from {spool}: its meta.json is unreadable ({exc})") from None
    if not isinstance(theirs, dict):
        raise DigitsFileError(f"cannot resume from {spool}: its meta.json is not a JSON object")
    check_resumable(meta, theirs, keys, spool)
    restore_moved(spool, path)
    raw = (spool / "counts").read_bytes() if (spool / "counts").exists() else b""
    counts = np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.int64)
    crc_path = spool / "crc32"
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
        name: (spool / name).stat().st_size // np.dtype(dt).itemsize if (spool / name).exists() else 0
        for name, dt in COLUMNS
    }
    n = min(n, int(np.searchsorted(offsets, min(sizes.values()), side="right")) - 1)  # events fully on disk
    cut, why = _verify(spool, offsets[: n + 1], crcs)
    if cut < n:
        n, damage = cut, why
    if damage is not None:
        log.warning(
            "%s: event %d of its spool is damaged (%s): keeping the %d events before it, making the rest again",
            spool,
            n,
            damage,
            n,
        )
    for name, dt in COLUMNS:
        with open(spool / name, "ab") as f:
            f.truncate(int(offsets[n]) * np.dtype(dt).itemsize)
    with open(spool / "counts", "ab") as f:
        f.truncate(8 * n)
    with open(crc_path, "ab") as f:
        if crcs is None:  # checksums for the events kept, so that the spool is whole from here on
            f.write(crcs_of(spool, offsets[: n + 1]).tobytes())
        f.truncate(4 * n)
    log.info("resuming %s from its spool: %d events recovered", path, n)
    return offsets[: n + 1].tolist()


def unpack_partial(spool: Path, path: Path, meta: dict, keys: tuple[str, ...]) -> list[int]:
    """A spool holding the events of the partial digits file ``path``; returns its offsets."""
    old = DigitsFile(path)
    if old.meta.get("complete", True):  # said before any stream check: a new seed is not the cause
        raise DigitsFileError(
            f"{path} is complete ({old.n_events} events); there is nothing to resume. Write a new file, "
            f"or replace this one with --force (without --resume)"
        )
    check_resumable(meta, old.meta, keys, path)
    spool.mkdir()
    for name, _ in COLUMNS:
        getattr(old, name).tofile(spool / name)
    np.diff(old.offsets).astype(np.int64).tofile(spool / "counts")
    crcs_of(spool, old.offsets).tofile(spool / "crc32")
    (spool / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    log.info("resuming %s: %d events there", path, old.n_events)
    return old.offsets.tolist()


def columns(spool: Path, n_digits: int) -> dict[str, np.ndarray]:
    """The spool's columns, memory-mapped read-only (the first ``n_digits`` of each)."""
    return {
        name: np.memmap(spool / name, dtype=dt, mode="r", shape=(n_digits,)) if n_digits else np.empty(0, dt)
        for name, dt in COLUMNS
    }


def crcs_of(spool: Path, offsets: np.ndarray) -> np.ndarray:
    cols = columns(spool, int(offsets[-1]))
    return np.array(
        [event_crc(cols[name][a:b] for name, _ in COLUMNS) for a, b in zip(offsets[:-1], offsets[1:])],
        dtype=np.uint32,
    )


def _verify(spool: Path, offsets: np.ndarray, crcs: np.ndarray | None) -> tuple[int, str]:
    """The first event of the spool that fails its checksum or holds a digit out of range (else the event
    count), and why."""
    n = len(offsets) - 1
    cols = columns(spool, int(offsets[-1]))
    first_bad, why = n, ""
    for a in range(0, int(offsets[-1]), BLOCK_DIGITS):  # ranges, a block at a time
        b = min(a + BLOCK_DIGITS, int(offsets[-1]))
        out = np.zeros(b - a, dtype=bool)
        for name, limit in LIMITS.items():
            out |= np.asarray(cols[name][a:b]) >= limit
        out |= np.asarray(cols["charge"][a:b]) == 0
        if out.any():
            first_bad = int(np.searchsorted(offsets, a + int(np.argmax(out)), side="right")) - 1
            why = "a digit outside the 40 x 250 x 768 pixels or of charge 0"
            break
    if crcs is not None:
        for i in range(first_bad):
            a, b = int(offsets[i]), int(offsets[i + 1])
            if event_crc(cols[name][a:b] for name, _ in COLUMNS) != int(crcs[i]):
                return i, "its checksum does not match its digits"
    return first_bad, why


def note_moved(spool: Path, part: Path, fmt: str, digits: int, moved: dict) -> None:
    """Record (atomically) which columns an assembly has moved into ``part``, and where they are in it."""
    note = spool / "moved.json.part"
    note.write_text(json.dumps({"part": part.name, "format": fmt, "digits": digits, "columns": moved}))
    os.replace(note, spool / "moved.json")


def restore_moved(spool: Path, path: Path) -> None:
    """An assembly that failed half-way (a full disk): copy the columns it had moved back from its ``.part``."""
    note = spool / "moved.json"
    if not note.exists():
        return
    moved = json.loads(note.read_text())
    part = path.parent / moved["part"]
    with open(part, "rb") as src:
        for name, (begin, nbytes) in moved["columns"].items():
            if (spool / name).exists():
                continue  # deleted only after it was noted: a column noted but still here is whole
            src.seek(begin)
            with open(spool / f"{name}.part", "wb") as dst:
                if moved.get("format") == FORMAT_ZSTD:
                    dtype = dict(COLUMNS)[name]
                    inflate_column(
                        src.read,
                        nbytes,
                        name,
                        dtype,
                        int(moved["digits"]),
                        lambda block: dst.write(block.data),
                        str(part),
                    )
                else:
                    copy_exactly(src, dst, nbytes, f"{part} is shorter than the columns noted in {note}")
            os.replace(spool / f"{name}.part", spool / name)
    note.unlink()
    part.unlink()
    log.info("put back the columns a failed assembly of %s had moved", path)
