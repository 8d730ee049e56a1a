"""What a file of PXD digits is, and the same events in another format (``pxdbg info``, ``pxdbg convert``).

Three formats: the digits file (``.npz``: a sensor index per digit), our ROOT layout (``.root``, tree
``pxd_background``: a Belle II VxdID per digit, the metadata a TObjString ``meta`` beside the tree) and basf2's
own files (``.root``, tree ``tree`` with the ``PXDDigits`` array of ``Belle2::PXDDigit``; :mod:`pxdbg.basf2files`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pxdbg.shared.errors import ConfigError, require


def kind(path: str | os.PathLike) -> str:
    """``npz``, ``root`` (ours) or ``basf2``, from the name and, for ROOT files, the trees inside."""
    path = Path(path)
    if path.suffix == ".npz":
        return "npz"
    if path.suffix == ".root":
        from pxdbg.basf2files import looks_like_basf2

        return "basf2" if looks_like_basf2(path) else "root"
    raise ConfigError(f"{path}: a file of PXD digits ends in .npz or .root")


def _model_rows(meta: dict) -> list[tuple[str, str]]:
    return [
        ("model", f"{meta.get('model', '?')} (checkpoint sha256 {meta.get('checkpoint_sha256', '?')})"),
        ("stream", f"seed {meta.get('seed', '?')}, first frame {meta.get('first_frame', 0)}"),
    ]


def _size(path: Path, n_events: int) -> str:
    size = path.stat().st_size
    per = f", {size / n_events / 1e3:.1f} kB per event" if n_events else ""
    return f"{size / 1e6:.2f} MB{per}"


def describe(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, value) lines about a file: format, events, stream, model, complete or not, size per event."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no file at {path}")
    what = kind(path)
    if what == "basf2":
        from pxdbg.basf2files import open_basf2

        b = open_basf2(path)
        fm = b.file_meta
        rows = [
            ("format", "basf2 ROOT file (tree 'tree', PXDDigits of Belle2::PXDDigit, 'persistent')"),
            ("events", str(b.n_events)),
        ]
        if fm:
            rows.append(
                (
                    "experiment/run",
                    f"{fm.get('experimentLow')}/{fm.get('runLow')} .. {fm.get('experimentHigh')}/{fm.get('runHigh')}",
                )
            )
            rows.append(("written by", f"{fm.get('release') or '?'} on {fm.get('date') or '?'}"))
        if b.background_meta is not None:
            bg = b.background_meta
            rows.append(("kind", f"BG mixing sample ({bg.get('backgroundType') or '?'}): BGOverlayInput refuses it"))
        elif fm:
            rows.append(("kind", f"overlay sample for experiment {fm.get('experimentLow')} (BGOverlayInput)"))
        if b.meta:  # written by pxdbg
            rows += _model_rows(b.meta)
        complete = b.meta.get("complete", bool(fm)) if b.meta else bool(fm)
        rows.append(("complete", "yes" if complete else "no (no persistent tree with FileMetaData, or a stopped run)"))
        rows.append(("size", _size(path, b.n_events)))
        return rows
    if what == "npz":
        from pxdbg.shared.digitsfile import DigitsFile

        f = DigitsFile(path)
        meta, n, fmt = dict(f.meta), f.n_events, "digits file (.npz: sensor index, u, v, charge per digit)"
    else:
        uproot = require("uproot", "root", "reading ROOT files")
        from pxdbg.rootio import TREE

        with uproot.open(path) as rf:
            keys = {k.split(";")[0] for k in rf.keys(recursive=False)}
            if TREE not in keys:
                raise ConfigError(f"{path} is neither our ROOT layout (tree {TREE}) nor a basf2 file (tree 'tree')")
            n = int(rf[TREE].num_entries)
            meta = json.loads(str(rf["meta"])) if "meta" in keys else {}
        fmt = f"ROOT file, our layout (tree {TREE}: VxdID, u, v, charge per digit; metadata TObjString 'meta')"
    rows = [("format", fmt), ("events", str(n)), *_model_rows(meta)]
    complete = meta.get("complete", True)
    rows.append(("complete", "yes" if complete else "no (a stopped run's events: continue with --resume)"))
    rows.append(("size", _size(path, n)))
    return rows


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    force: bool = False,
    basf2: bool = False,
    experiment: int = 0,
    run: int = 0,
) -> int:
    """Write the events of ``src`` (any of the three formats) to ``dst``: a digits file (``.npz``), our ROOT layout
    (``.root``) or, with ``basf2``, a basf2 file BGOverlayInput accepts (of ``experiment`` and ``run``). The
    metadata travels along. Returns the number of events."""
    from pxdbg.validate.samples import open_sample

    dst = Path(dst)
    _refuse_existing(dst, force)
    sample = open_sample(src)
    meta = {k: v for k, v in sample.meta.items() if k != "basf2"}
    meta["converted_from"] = str(src)
    if basf2:
        from pxdbg.basf2files import Basf2DigitsWriter

        writer = Basf2DigitsWriter(dst, meta, experiment=experiment, run=run)
    else:
        if dst.suffix not in (".npz", ".root"):
            raise ConfigError(f"{dst}: the output ends in .npz or .root")
        from pxdbg.rootio import digits_writer

        writer = digits_writer(str(dst), meta)
    with writer as w:
        for frame in sample.frames():
            w.append(frame)
    return sample.n_events


def _refuse_existing(dst: Path, force: bool) -> None:
    if dst.exists() and not force:
        raise ConfigError(f"{dst} exists; pass --force to overwrite it")
