"""basf2's own ROOT files of PXD digits: read with uproot (no ROOT needed), written with ROOT.

The layout is RootOutput's (``framework/modules/rootio/src/RootOutputModule.cc`` in basf2): a TTree ``tree``
with one entry per event and a TTree ``persistent`` with exactly one entry. In ``tree``, ``PXDDigits`` is a
``TClonesArray`` of ``Belle2::PXDDigit`` split into one branch per member (``PXDDigits.m_sensorID`` (a VxdID),
``PXDDigits.m_uCellID``, ``PXDDigits.m_vCellID``, ``PXDDigits.m_charge``, all 16-bit), beside
``EventMetaData``; ``persistent`` holds ``FileMetaData`` and, in BG *mixing* samples, ``BackgroundMetaData``.

Reading accepts any such file with PXDDigits: beam-background overlay samples and any basf2 output. Charges
above 255 ADC are clipped to 255 (the generator's range) and repeated pixels add up. Writing makes a file that
BGOverlayInput accepts (``background/modules/BGOverlayInput/src/BGOverlayInputModule.cc``, ``initialize()``):
exactly one persistent entry, ``FileMetaData`` whose lowest experiment is the simulation's (BGOverlayInput
refuses a file of another experiment) and no ``BackgroundMetaData`` (BGOverlayInput refuses mixing samples).
Writing needs ROOT's Python bindings: inside basf2's environment its own dictionaries are used; elsewhere the
classes are declared from basf2's headers (same members and ClassDef versions, so the same streamer info).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pxdbg.shared.digitsfile import AtomicWriter
from pxdbg.shared.errors import PxdbgError, require
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import N_U, N_V, VXD_IDS
from pxdbg.shared.version import __version__

EVENT_TREE = "tree"
PERSISTENT_TREE = "persistent"
ARRAY = "PXDDigits"
DIGIT_CLASS = "Belle2::PXDDigit"
MEMBERS = ("m_sensorID", "m_uCellID", "m_vCellID", "m_charge")
STEP = 100  # events per read
DESCRIPTION_KEY = "pxdbg"  # FileMetaData data description entry holding pxdbg's JSON metadata


class Basf2FileError(PxdbgError, ValueError):
    """A basf2 ROOT file that cannot be read as PXD digits (one line, naming the file)."""


def _sensor_of_vxd_id() -> np.ndarray:
    table = np.full(1 << 16, -1, np.int64)
    table[VXD_IDS] = np.arange(VXD_IDS.size)
    return table


def _text(values) -> str:
    names = sorted(str(v).split(";")[0] for v in values)
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else "nothing"


def looks_like_basf2(path: str | os.PathLike) -> bool:
    """Whether a ROOT file has basf2's event tree ``tree`` (uproot only)."""
    uproot = require("uproot", "root", "reading ROOT files")
    try:
        with uproot.open(path) as f:
            return any(k.split(";")[0] == EVENT_TREE for k in f.keys(recursive=False))
    except (OSError, ValueError):
        return False


@dataclass
class Basf2File:
    """A basf2 file of PXD digits: its events, what its persistent tree says, and its frames (read on each call)."""

    path: Path
    n_events: int
    #: FileMetaData's members without the ``m_`` prefix (nEvents, experimentLow, runLow, ..., lfn, release)
    file_meta: dict = field(default_factory=dict)
    #: BackgroundMetaData's members (backgroundType, backgroundTag, realTime, fileType) of a BG mixing sample
    background_meta: dict | None = None
    #: pxdbg's own metadata, for files pxdbg wrote (model, seed, complete, ...)
    meta: dict = field(default_factory=dict)
    has_event_meta_data: bool = False

    @property
    def description(self) -> str:
        what = "BG mixing sample" if self.background_meta is not None else "basf2 file"
        return f"{what} {self.path} (tree '{EVENT_TREE}', {ARRAY})"

    def frames(self, limit: int | None = None) -> Iterator[SparseFrame]:
        """The first ``limit`` events (default: all), in file order."""
        uproot = require("uproot", "root", "reading basf2 files")
        ak = require("awkward", "root", "reading basf2 files")
        n = self.n_events if limit is None else min(limit, self.n_events)
        sensor_of = _sensor_of_vxd_id()
        names = [f"{ARRAY}.{m}" for m in MEMBERS]
        with uproot.open(self.path) as f:
            tree = f[EVENT_TREE]
            start = 0
            for batch in tree[ARRAY].iterate(names, step_size=STEP, entry_stop=n, library="ak"):
                counts = ak.to_numpy(ak.num(batch[names[0]]))
                vid, u, v, charge = (ak.to_numpy(ak.flatten(batch[b])).astype(np.int64) for b in names)
                sensor = sensor_of[vid & ~0x1F]  # the segment bits (the readout frame) do not name a sensor
                bad = (sensor < 0) | (u >= N_U) | (v >= N_V)
                if bad.any():
                    i = int(np.argmax(bad))
                    event = start + int(np.searchsorted(np.cumsum(counts), i, side="right"))
                    raise Basf2FileError(
                        f"{self.path}: event {event} has a digit with VxdID {vid[i]:#06x}, u {u[i]}, v {v[i]} that is "
                        f"not a pixel of the 40 PXD sensors (250 x 768 each)"
                    )
                ends = np.cumsum(counts)
                for a, b in zip(ends - counts, ends):
                    yield SparseFrame.from_pixels(sensor[a:b], u[a:b], v[a:b], np.minimum(charge[a:b], 255))
                start += counts.size


def _read_meta(f, path: Path) -> tuple[dict, dict | None, dict]:
    """(FileMetaData, BackgroundMetaData or None, pxdbg's metadata) from the persistent tree, if there is one."""
    keys = {k.split(";")[0] for k in f.keys(recursive=False)}
    if PERSISTENT_TREE not in keys:
        return {}, None, {}
    persistent = f[PERSISTENT_TREE]
    if persistent.num_entries != 1:
        raise Basf2FileError(
            f"{path}: the persistent tree has {persistent.num_entries} entries; basf2 writes exactly one"
        )

    def members(branch: str) -> dict:
        if branch not in persistent.keys(recursive=False):
            return {}
        out = {}
        for sub in persistent[branch].keys(recursive=False):
            name = sub.split("/")[-1]
            if not name.startswith("m_") or name == "m_dataDescription":
                continue
            try:
                value = persistent[branch][sub].array(library="np", entry_stop=1)[0]
            except Exception:  # a member uproot cannot read is left out of the summary
                continue
            if isinstance(value, np.generic):
                value = value.item()
            elif not isinstance(value, str):
                value = [str(x) for x in value] if hasattr(value, "__iter__") else str(value)
            out[name[2:]] = value
        return out

    file_meta = members("FileMetaData")
    background = members("BackgroundMetaData") if "BackgroundMetaData" in persistent.keys(recursive=False) else None
    meta = {}
    if "FileMetaData" in persistent.keys(recursive=False):
        sub = persistent["FileMetaData"]
        first = "m_dataDescription/m_dataDescription.first"
        second = "m_dataDescription/m_dataDescription.second"
        if first in sub.keys() and second in sub.keys():
            keys_ = list(sub[first].array(library="np", entry_stop=1)[0])
            values = list(sub[second].array(library="np", entry_stop=1)[0])
            description = dict(zip((str(k) for k in keys_), (str(v) for v in values)))
            if DESCRIPTION_KEY in description:
                try:
                    meta = json.loads(description[DESCRIPTION_KEY])
                except ValueError:
                    meta = {}
            file_meta["dataDescription"] = description
    return file_meta, background, meta


def open_basf2(path: str | os.PathLike) -> Basf2File:
    """Open a basf2 ROOT file of PXD digits and check it; a file that is not one is a one-line error."""
    uproot = require("uproot", "root", "reading basf2 files")
    require("awkward", "root", "reading basf2 files")
    path = Path(path)
    try:
        with uproot.open(path) as f:
            keys = {k.split(";")[0] for k in f.keys(recursive=False)}
            if EVENT_TREE not in keys or f.classnames().get(f"{EVENT_TREE};1", "TTree") != "TTree":
                raise Basf2FileError(
                    f"{path} is not a basf2 file: it has no event tree '{EVENT_TREE}' (it holds {_text(keys)})"
                )
            tree = f[EVENT_TREE]
            branches = tree.keys(recursive=False)
            if ARRAY not in branches:
                raise Basf2FileError(
                    f"{path}: the event tree has no {ARRAY} branch (its branches: {_text(branches)}); "
                    f"pxdbg reads the PXD digits of basf2 files"
                )
            branch = tree[ARRAY]
            clones = branch.member("fClonesName", none_if_missing=True)
            if clones is None:
                raise Basf2FileError(
                    f"{path}: {ARRAY} is not a TClonesArray (it is {branch.typename}); basf2 writes "
                    f"{ARRAY} as a TClonesArray of {DIGIT_CLASS}"
                )
            if clones != DIGIT_CLASS:
                raise Basf2FileError(f"{path}: {ARRAY} is a TClonesArray of {clones}, not of {DIGIT_CLASS}")
            missing = [m for m in MEMBERS if f"{ARRAY}.{m}" not in branch.keys(recursive=False)]
            if missing:
                raise Basf2FileError(
                    f"{path}: {ARRAY} has no member branch {ARRAY}.{missing[0]}: pxdbg reads split arrays as "
                    f"RootOutput writes them (splitLevel 99)"
                )
            n_events = int(tree.num_entries)
            if n_events == 0:
                raise Basf2FileError(f"{path}: the event tree has no events: an empty {ARRAY} branch")
            # the array branch itself holds each event's number of digits
            if int(np.sum(branch.array(library="np"), dtype=np.int64)) == 0:
                raise Basf2FileError(f"{path}: the {ARRAY} branch is empty: no digits in any of its {n_events} events")
            has_emd = "EventMetaData" in branches
            file_meta, background, meta = _read_meta(f, path)
    except Basf2FileError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise Basf2FileError(f"cannot read ROOT file {path}: {exc}") from exc
    return Basf2File(path, n_events, file_meta, background, meta, has_emd)


# -- writing -----------------------------------------------------------------------------------------------------
# The classes as basf2's headers declare them (members, ClassDef versions), for ROOTs without basf2's dictionaries:
# vxd/dataobjects/include/VxdID.h (PXDDigit stores its baseType), framework/dataobjects/include/DigitBase.h,
# pxd/dataobjects/include/PXDDigit.h, framework/dataobjects/include/EventMetaData.h,
# framework/dataobjects/include/FileMetaData.h.
_CLASSES = {
    "Belle2::RelationsObject": """
namespace Belle2 { class RelationsObject : public TObject {
 public: RelationsObject() {} ClassDef(RelationsObject, 1) }; }
""",
    "Belle2::DigitBase": """
namespace Belle2 { class DigitBase : public RelationsObject {
 public: DigitBase() {} virtual unsigned int getUniqueChannelID() const { return 0; } ClassDef(DigitBase, 2) }; }
""",
    "Belle2::PXDDigit": """
namespace Belle2 { class PXDDigit : public DigitBase {
 public:
  PXDDigit(unsigned short sensorID, unsigned short uCellID, unsigned short vCellID, unsigned short charge):
    m_sensorID(sensorID), m_uCellID(uCellID), m_vCellID(vCellID), m_charge(charge) {}
  PXDDigit(): PXDDigit(0, 0, 0, 0) {}
 private:
  unsigned short m_sensorID; unsigned short m_uCellID; unsigned short m_vCellID; unsigned short m_charge;
  ClassDef(PXDDigit, 5)
}; }
""",
    "Belle2::EventMetaData": """
namespace Belle2 { class EventMetaData : public TObject {
 public:
  explicit EventMetaData(unsigned int event = 1, int run = 0, int experiment = 0): m_event(event), m_run(run),
    m_subrun(0), m_experiment(experiment), m_production(0), m_time(0), m_generatedWeight(1.0), m_errorFlag(0) {}
  void setEvent(unsigned int event) { m_event = event; }
  void setRun(int run) { m_run = run; }
  void setExperiment(int experiment) { m_experiment = experiment; }
 private:
  unsigned int m_event; int m_run; int m_subrun; int m_experiment; int m_production; unsigned long long int m_time;
  std::string m_parentLfn; double m_generatedWeight; unsigned int m_errorFlag;
  ClassDef(EventMetaData, 4)
}; }
""",
    "Belle2::FileMetaData": """
namespace Belle2 { class FileMetaData : public TObject {
 public:
  FileMetaData(): m_nEvents(0), m_nFullEvents(0), m_experimentLow(0), m_runLow(0), m_eventLow(0),
    m_experimentHigh(0), m_runHigh(0), m_eventHigh(0), m_isMC(true), m_mcEvents(0) {}
  void setLfn(const std::string& lfn) { m_lfn = lfn; }
  void setNEvents(unsigned int nEvents) { m_nEvents = nEvents; }
  void setLow(int experiment, int run, unsigned int event) {
    m_experimentLow = experiment; m_runLow = run; m_eventLow = event; }
  void setHigh(int experiment, int run, unsigned int event) {
    m_experimentHigh = experiment; m_runHigh = run; m_eventHigh = event; }
  void setCreationData(const std::string& date, const std::string& site, const std::string& user,
                       const std::string& release) { m_date = date; m_site = site; m_user = user; m_release = release; }
  void setRandomSeed(const std::string& seed) { m_randomSeed = seed; }
  void setDataDescription(const std::string& key, const std::string& value) { m_dataDescription[key] = value; }
 private:
  std::string m_lfn; unsigned int m_nEvents; unsigned int m_nFullEvents; int m_experimentLow; int m_runLow;
  unsigned int m_eventLow; int m_experimentHigh; int m_runHigh; unsigned int m_eventHigh;
  std::vector<std::string> m_parentLfns; std::string m_date; std::string m_site; std::string m_user;
  std::string m_randomSeed; std::string m_release; std::string m_steering; bool m_isMC; unsigned int m_mcEvents;
  std::string m_databaseGlobalTag; std::map<std::string, std::string> m_dataDescription;
  ClassDef(FileMetaData, 11)
}; }
""",
}

# RootOutput's way of writing (see the module docstring): branches in the store's name order, basket 32000, split
# 99, auto-flush and auto-save every 10 MB, the persistent tree filled once at the end, kWriteDelete.
_WRITER = r"""
#include <TFile.h>
#include <TTree.h>
#include <TClonesArray.h>
#include <string>
namespace pxdbg_basf2 {
class Writer {
 public:
  Writer(const char* path, int experiment, int run): m_experiment(experiment), m_run(run) {
    m_file = TFile::Open(path, "RECREATE", "basf2 Event File");
    if (!m_file || m_file->IsZombie()) throw std::runtime_error(std::string("cannot create ") + path);
    m_file->SetCompressionLevel(1);
    m_tree = new TTree("tree", "tree");
    m_tree->SetAutoFlush(-10000000);
    m_tree->SetAutoSave(-10000000);
    m_eventMetaData = new Belle2::EventMetaData();
    m_digits = new TClonesArray("Belle2::PXDDigit");
    m_tree->Branch("EventMetaData", "Belle2::EventMetaData", &m_eventMetaData, 32000, 99);
    m_tree->Branch("PXDDigits", &m_digits, 32000, 99);
  }
  void fill(const unsigned short* sensor, const unsigned short* u, const unsigned short* v,
            const unsigned short* charge, long n) {
    m_digits->Clear("C");
    for (long i = 0; i < n; ++i) new ((*m_digits)[i]) Belle2::PXDDigit(sensor[i], u[i], v[i], charge[i]);
    ++m_events;
    m_eventMetaData->setEvent(m_events);  // EventInfoSetter numbers events from 1
    m_eventMetaData->setRun(m_run);
    m_eventMetaData->setExperiment(m_experiment);
    m_tree->Fill();
    if (m_file->TestBit(TFile::kWriteError)) throw std::runtime_error("write error (is the disk full?)");
  }
  void close(const std::string& lfn, const std::string& date, const std::string& release, const std::string& seed,
             const std::string& description) {
    TTree persistent("persistent", "persistent");
    persistent.SetAutoFlush(-10000000);
    persistent.SetAutoSave(-10000000);
    auto* fileMetaData = new Belle2::FileMetaData();
    persistent.Branch("FileMetaData", "Belle2::FileMetaData", &fileMetaData, 32000, 99);
    fileMetaData->setNEvents(m_events);
    if (m_events == 0) { fileMetaData->setLow(-1, -1, 0); fileMetaData->setHigh(-1, -1, 0); }
    else { fileMetaData->setLow(m_experiment, m_run, 1); fileMetaData->setHigh(m_experiment, m_run, m_events); }
    fileMetaData->setLfn(lfn);
    fileMetaData->setCreationData(date, "", "", release);
    fileMetaData->setRandomSeed(seed);
    fileMetaData->setDataDescription("pxdbg", description);
    persistent.Fill();
    m_file->cd();
    m_tree->Write("tree", TObject::kWriteDelete);
    persistent.Write("persistent", TObject::kWriteDelete);
    bool failed = m_file->TestBit(TFile::kWriteError);
    m_file->Close();
    delete m_file; m_file = nullptr;
    delete fileMetaData;
    if (failed) throw std::runtime_error("write error (is the disk full?)");
  }
  void abort() { if (m_file) { m_file->Close(); delete m_file; m_file = nullptr; } }
  unsigned int events() const { return m_events; }
 private:
  TFile* m_file = nullptr;
  TTree* m_tree = nullptr;
  Belle2::EventMetaData* m_eventMetaData = nullptr;
  TClonesArray* m_digits = nullptr;
  int m_experiment, m_run;
  unsigned int m_events = 0;
};
}
"""


def _root():
    """PyROOT with the basf2 classes and the writer declared (basf2's own classes where ROOT has them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the PyPI ROOT build announces its alpha stage
            import ROOT
    except ImportError:
        raise Basf2FileError(
            "writing basf2 files needs ROOT's Python bindings: run inside basf2's environment, or pip install ROOT"
        ) from None
    if not hasattr(ROOT, "pxdbg_basf2"):
        for name, code in _CLASSES.items():
            if not ROOT.TClass.GetClass(name):
                if not ROOT.gInterpreter.Declare("#include <TObject.h>\n#include <map>\n#include <string>\n" + code):
                    raise RuntimeError(f"declaring {name} failed")
        assert ROOT.gInterpreter.Declare(_WRITER), "the basf2 writer did not compile"
        # build the streamer info once, quietly: ROOT notes that the data-less bases (RelationsObject, DigitBase)
        # have no streamer of their own, which is true and harmless
        level, ROOT.gErrorIgnoreLevel = ROOT.gErrorIgnoreLevel, ROOT.kError
        for name in _CLASSES:
            ROOT.TClass.GetClass(name).GetStreamerInfo()
        ROOT.gErrorIgnoreLevel = level
    return ROOT


class Basf2DigitsWriter(AtomicWriter):
    """Frames into a basf2 file that BGOverlayInput accepts (see the module docstring), written atomically.

    ``experiment`` and ``run`` go into each event's EventMetaData and the FileMetaData's lowest and highest
    event: BGOverlayInput refuses a file whose lowest experiment is not the simulation's (EventInfoSetter's
    default is experiment 0, run 0).
    """

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, *, experiment: int = 0, run: int = 0) -> None:
        self.path = Path(path)
        if self.path.suffix != ".root":
            raise Basf2FileError(f"a basf2 file name ends in .root, got {self.path.name!r}")
        if not (0 <= experiment <= 1023):  # EventMetaData.h: valid experiments are [0, 1023]
            raise Basf2FileError(f"experiment must be within 0..1023 (EventMetaData), got {experiment}")
        if run < 0:
            raise Basf2FileError(f"run must be non-negative, got {run}")
        ROOT = _root()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._meta = {"pxdbg_version": __version__, "format": "basf2-pxddigits", **(meta or {})}
        try:
            self._writer = ROOT.pxdbg_basf2.Writer(str(self._tmp), int(experiment), int(run))
        except Exception as exc:  # ROOT's C++ exceptions arrive as several Python types
            raise Basf2FileError(f"cannot write {self.path}: {str(exc).splitlines()[0]}") from None
        self.n_events = 0

    def append(self, frame: SparseFrame) -> None:
        cols = [
            np.ascontiguousarray(VXD_IDS[frame.sensor], dtype=np.uint16),
            np.ascontiguousarray(frame.u, dtype=np.uint16),
            np.ascontiguousarray(frame.v, dtype=np.uint16),
            np.ascontiguousarray(frame.charge, dtype=np.uint16),
        ]
        n = frame.n_digits
        if n == 0:  # a null pointer for an empty array is fine: nothing is read
            cols = [np.zeros(1, np.uint16)] * 4
        self._writer.fill(*cols, n)
        self.n_events += 1

    def close(self, complete: bool = True) -> Path:
        """Write the persistent tree and put the file in place (``complete=False``: a stopped run's events)."""
        import datetime

        meta = json.dumps({**self._meta, "complete": bool(complete)}, sort_keys=True)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        try:
            self._writer.close(
                str(self.path.resolve()), date, f"pxdbg-{__version__}", str(self._meta.get("seed", "")), meta
            )
        except Exception as exc:  # ROOT's C++ exceptions arrive as several Python types
            self._tmp.unlink(missing_ok=True)
            raise Basf2FileError(f"writing {self.path} failed: {str(exc).splitlines()[0]}") from None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.abort()
        self._tmp.unlink(missing_ok=True)
