"""Helpers of the digits-file tests (tests/test_files.py, tests/test_digits_format.py): the CLI as a subprocess,
the spool's path, frames to write and files to damage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pxdbg.models import load
from pxdbg.shared.digitsfile import DigitsFile

PXDBG = [sys.executable, "-m", "pxdbg"]


def pxdbg(*args, check=True, **kw):
    proc = subprocess.run([*PXDBG, *args], capture_output=True, text=True, timeout=180, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"pxdbg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def spool_of(out: Path) -> Path:
    return out.parent / f".{out.name}.spool"


def frames_equal(a: DigitsFile, b: DigitsFile) -> bool:
    fa, fb = list(a), list(b)
    return len(fa) == len(fb) > 0 and all(x == y for x, y in zip(fa, fb))


def parametric_frames(n: int):
    return load("parametric").frames(77, range(n))


def write_digits_file(path: Path, meta: dict | None = None, **columns) -> Path:
    """A small uncompressed digits file whose columns (and meta) can be replaced by wrong ones."""
    frames = parametric_frames(2)
    cols = {k: np.concatenate([getattr(f, k) for f in frames]) for k in ("sensor", "u", "v", "charge")}
    cols.update(columns)
    offsets = np.array([0, frames[0].n_digits, frames[0].n_digits + frames[1].n_digits], np.int64)
    text = json.dumps({"seed": 77, "first_frame": 0} if meta is None else meta)
    np.savez(path, offsets=offsets, meta=np.array(text), **cols)
    return path
