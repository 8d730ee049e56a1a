"""Background samples on disk, read one event at a time: a digits file (``.npz``) or a ROOT file.

A ROOT file is either basf2's own (a TTree ``tree`` with the ``PXDDigits`` array: beam-background overlay
samples, any basf2 output; :mod:`pxdbg.basf2files`) or ours: one entry per event in a TTree with jagged branches
``vxd_id`` (Belle II VxdID), ``u``, ``v`` and ``charge`` (ADC), as ``pxdbg generate --out x.root`` writes them;
any tree with those four branches is read. Charges above 255 ADC are clipped at 255, repeated pixels add up.
Reading ROOT needs uproot and awkward (``pip install 'pxdbg[root]'``), not ROOT.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pxdbg.shared.errors import PxdbgError, require
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import N_U, N_V, VXD_IDS

BRANCHES = ("vxd_id", "u", "v", "charge")
ROOT_STEP = 100  # events per read from a ROOT file


class SampleError(PxdbgError, ValueError):
    """A background sample file is missing, unreadable or not made of PXD digits."""


@dataclass
class Sample:
    """A background sample: what it is, how many events it has, and its frames (read on each call)."""

    description: str
    n_events: int
    meta: dict
    _frames: Callable[[int], Iterator[SparseFrame]]

    def frames(self, limit: int | None = None) -> Iterator[SparseFrame]:
        """The first ``limit`` events (default: all), in file order."""
        return self._frames(self.n_events if limit is None else min(limit, self.n_events))


def is_sample_path(spec: str) -> bool:
    return spec.endswith((".npz", ".root")) or os.path.exists(spec)


def open_sample(path: str | os.PathLike) -> Sample:
    """Open a digits file (``.npz``) or a ROOT file of PXD digits."""
    path = Path(path)
    if not path.is_file():
        raise SampleError(f"no background sample at {path}: give a digits file (.npz) or a ROOT file (.root)")
    if path.suffix == ".root":
        from pxdbg.basf2files import Basf2FileError, looks_like_basf2, open_basf2

        if looks_like_basf2(path):
            try:
                b = open_basf2(path)
            except Basf2FileError as exc:
                raise SampleError(str(exc)) from None
            return Sample(b.description, b.n_events, {**b.meta, "basf2": b.file_meta}, b.frames)
        return _open_root(path)
    from pxdbg.shared.digitsfile import DigitsFile, DigitsFileError

    try:
        f = DigitsFile(path)
    except DigitsFileError as exc:
        raise SampleError(str(exc)) from exc

    def frames(n: int) -> Iterator[SparseFrame]:
        return (f.frame(i) for i in range(n))

    return Sample(f"digits file {path} ({f.meta.get('model', '?')})", f.n_events, dict(f.meta), frames)


def _sensor_of_vxd_id() -> np.ndarray:
    table = np.full(1 << 16, -1, np.int64)
    table[VXD_IDS] = np.arange(VXD_IDS.size)
    return table


def _open_root(path: Path) -> Sample:
    uproot = require("uproot", "root", "reading ROOT background samples")
    ak = require("awkward", "root", "reading ROOT background samples")
    try:
        with uproot.open(path) as f:
            trees = [k for k, cls in f.classnames().items() if cls == "TTree"]
            tree_name = next((k for k in trees if set(BRANCHES) <= set(f[k].keys())), None)
            if tree_name is None:
                raise SampleError(
                    f"{path} has no TTree with the branches {', '.join(BRANCHES)} (one entry per "
                    f"event, jagged: Belle II VxdID, u, v, charge in ADC) and is not a basf2 file (no tree 'tree')"
                )
            n_events = int(f[tree_name].num_entries)
    except (OSError, ValueError) as exc:
        if isinstance(exc, SampleError):
            raise
        raise SampleError(f"cannot read ROOT file {path}: {exc}") from exc
    sensor_of = _sensor_of_vxd_id()

    def frames(n: int) -> Iterator[SparseFrame]:
        with uproot.open(path) as f:
            tree = f[tree_name]
            for batch in tree.iterate(list(BRANCHES), step_size=ROOT_STEP, entry_stop=n, library="ak"):
                counts = ak.to_numpy(ak.num(batch["charge"]))
                cols = {b: ak.to_numpy(ak.flatten(batch[b])).astype(np.int64) for b in BRANCHES}
                sensor = sensor_of[cols["vxd_id"] & ~0x1F]  # the segment bits do not name a sensor
                bad = (sensor < 0) | (cols["u"] >= N_U) | (cols["v"] >= N_V) | (cols["u"] < 0) | (cols["v"] < 0)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise SampleError(
                        f"{path}: digit with VxdID {cols['vxd_id'][i]:#06x}, u {cols['u'][i]}, v {cols['v'][i]} "
                        f"is not a pixel of the 40 PXD sensors (250 x 768 each)"
                    )
                ends = np.cumsum(counts)
                for a, b in zip(ends - counts, ends):
                    yield SparseFrame.from_pixels(
                        sensor[a:b], cols["u"][a:b], cols["v"][a:b], np.minimum(cols["charge"][a:b], 255)
                    )

    return Sample(f"ROOT file {path} (tree {tree_name})", n_events, {}, frames)
