"""ROOT output for people who analyse with ROOT (our layout): one TTree entry per event, written with uproot.

Tree ``pxd_background``: ``frame`` (int64, the frame index in its stream) and jagged branches ``vxd_id``
(uint16, Belle II VxdID), ``u`` (uint8), ``v`` (uint16), ``charge`` (uint8, ADC), with the counter
branches ``nvxd_id``, ``nu``, ``nv``, ``ncharge`` (int32: the event's number of digits, all four equal) that
uproot writes for jagged arrays. The same JSON metadata as the ``.npz`` is a ``TObjString`` named ``meta``
beside the tree (a key of the file, not a branch). uproot and awkward are optional dependencies
(``pip install pxdbg[root]``). basf2's own file layout is :mod:`pxdbg.basf2files`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pxdbg.shared.digitsfile import AtomicWriter, DigitsFileError
from pxdbg.shared.errors import require
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import VXD_IDS
from pxdbg.shared.version import __version__

TREE = "pxd_background"
CHUNK = 100  # events per basket


class RootDigitsWriter(AtomicWriter):
    """Same interface as :class:`pxdbg.shared.digitsfile.DigitsWriter`, writing a ROOT file atomically."""

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, *, resume: bool = False) -> None:
        require("awkward", "root", "writing .root files")
        uproot = require("uproot", "root", "writing .root files")
        self.path = Path(path)
        if self.path.suffix != ".root":
            raise DigitsFileError(f"a ROOT output file name ends in .root, got {self.path.name!r}")
        if resume:
            raise DigitsFileError(
                f"--resume continues .npz outputs only; for {self.path.name} start a new file at "
                f"the next frame with --first-frame (its frames are numbered in the tree)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._file = uproot.recreate(self._tmp)
        self._meta = {"pxdbg_version": __version__, "format": "pxdbg-digits-root-1", **(meta or {})}
        self._first = int((meta or {}).get("first_frame", 0))
        self._pending: list[SparseFrame] = []
        self._tree = None
        self.n_events = 0

    def append(self, frame: SparseFrame) -> None:
        self._pending.append(frame)
        if len(self._pending) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        import awkward as ak

        if not self._pending:
            return
        counts = np.array([f.n_digits for f in self._pending])

        def jagged(parts):
            return ak.unflatten(np.concatenate(parts), counts)

        data = {
            "frame": np.arange(
                self._first + self.n_events, self._first + self.n_events + len(self._pending), dtype=np.int64
            ),
            "vxd_id": jagged([VXD_IDS[f.sensor] for f in self._pending]),
            "u": jagged([f.u for f in self._pending]),
            "v": jagged([f.v for f in self._pending]),
            "charge": jagged([f.charge for f in self._pending]),
        }
        if self._tree is None:  # mktree: a TTree (a plain assignment makes an RNTuple in recent uproot)
            self._tree = self._file.mktree(
                TREE,
                {
                    "frame": "int64",
                    "vxd_id": "var * uint16",
                    "u": "var * uint8",
                    "v": "var * uint16",
                    "charge": "var * uint8",
                },
            )
        self._tree.extend(data)
        self.n_events += len(self._pending)
        self._pending = []

    def close(self, complete: bool = True) -> Path:
        """Write the pending events and the metadata (``complete=False``: a stopped run's partial output)."""
        try:
            self._flush()
            self._file["meta"] = json.dumps({**self._meta, "complete": bool(complete)}, sort_keys=True)
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            raise type(exc)(exc.errno, f"{exc.strerror or exc} while writing {self.path}", str(self.path)) from None
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def digits_writer(path: str, meta: dict, *, resume: bool = False):
    """The writer for a file name: ``.npz`` (always available) or ``.root`` (with uproot)."""
    if str(path).endswith(".root"):
        return RootDigitsWriter(path, meta, resume=resume)
    from pxdbg.shared.digitsfile import DigitsWriter

    return DigitsWriter(path, meta, resume=resume)
