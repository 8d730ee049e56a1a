"""Real ROOT classes and Python data-store stand-ins for ``ROOT.Belle2`` (see README.md)."""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the PyPI ROOT build announces its alpha stage
    import ROOT

_CODE = r"""
#include <TObject.h>
#include <TClonesArray.h>
namespace Belle2 {
class VxdID {
 public:
  typedef unsigned short baseType;
  VxdID(baseType id = 0): m_id(id) {}
  VxdID(baseType layer, baseType ladder, baseType sensor, baseType segment = 0):
    m_id((layer << 13) | (ladder << 8) | (sensor << 5) | segment) {}
  operator baseType() const { return m_id; }
  baseType getID() const { return m_id; }
  baseType getLayerNumber() const { return m_id >> 13; }
  baseType getLadderNumber() const { return (m_id >> 8) & 0x1f; }
  baseType getSensorNumber() const { return (m_id >> 5) & 0x7; }
 private:
  baseType m_id;
};
class PXDDigit : public TObject {
 public:
  PXDDigit(): m_sensorID(0), m_uCellID(0), m_vCellID(0), m_charge(0) {}
  PXDDigit(VxdID sensorID, unsigned short uCellID, unsigned short vCellID, unsigned short charge):
    m_sensorID(sensorID), m_uCellID(uCellID), m_vCellID(vCellID), m_charge(charge) {}
  VxdID getSensorID() const { return m_sensorID; }
  unsigned short getUCellID() const { return m_uCellID; }
  unsigned short getVCellID() const { return m_vCellID; }
  unsigned short getCharge() const { return m_charge; }
  void setCharge(unsigned short charge) { m_charge = charge; }
 private:
  unsigned short m_sensorID, m_uCellID, m_vCellID, m_charge;
  ClassDef(PXDDigit, 5)
};
}
namespace standin {
// copy the digits of a TClonesArray of PXDDigit into out[4 * n]: (sensor id, u, v, charge) per digit
long read_digits(TClonesArray* arr, unsigned short* out, long capacity) {
  long n = arr->GetEntriesFast();
  for (long i = 0; i < n && i < capacity; ++i) {
    auto* d = static_cast<Belle2::PXDDigit*>(arr->At(i));
    out[4 * i] = d->getSensorID().getID(); out[4 * i + 1] = d->getUCellID();
    out[4 * i + 2] = d->getVCellID(); out[4 * i + 3] = d->getCharge();
  }
  return n;
}
long append_digit(TClonesArray* arr, unsigned short id, unsigned short u, unsigned short v, unsigned short c) {
  long n = arr->GetEntriesFast();
  new ((*arr)[n]) Belle2::PXDDigit(Belle2::VxdID(id), u, v, c);
  return n + 1;
}
}
"""

if not hasattr(ROOT, "standin"):
    assert ROOT.gInterpreter.Declare(_CODE), "the stand-in classes did not compile"

Belle2 = ROOT.Belle2
STORE: dict = {}


def read_digits(arr) -> np.ndarray:
    """(n, 4) uint16: sensor id, u, v, charge of every digit in a TClonesArray of PXDDigit."""
    n = arr.GetEntriesFast()
    out = np.zeros(4 * max(n, 1), np.uint16)
    ROOT.standin.read_digits(arr, out, n)
    return out[: 4 * n].reshape(n, 4)


class DataStore:
    c_Event = 0
    c_Persistent = 1
    c_DontWriteOut = 2


class BackgroundInfo:
    def __init__(self, extension: str = "_beamBG") -> None:
        self._extension = extension

    def getExtensionName(self) -> str:
        return self._extension


class PyStoreObj:
    def __init__(self, name: str, durability: int = DataStore.c_Event) -> None:
        self._name = name

    def isValid(self) -> bool:
        return self._name in STORE

    def obj(self):
        return STORE[self._name]

    def __getattr__(self, attr):
        if self._name not in STORE:
            raise AttributeError(f"{self._name} is not in the data store")
        return getattr(STORE[self._name], attr)


class PyStoreArray:
    def __init__(self, name: str, durability: int = DataStore.c_Event) -> None:
        self._name = name

    def registerInDataStore(self, name: str | None = None, flags: int = 0) -> bool:
        self._name = name or self._name
        if self._name not in STORE:
            STORE[self._name] = ROOT.TClonesArray("Belle2::PXDDigit")
        return True

    def isValid(self) -> bool:
        return self._name in STORE

    def getPtr(self):
        return STORE[self._name]

    def getEntries(self) -> int:
        return STORE[self._name].GetEntriesFast()

    def appendNew(self):
        arr = STORE[self._name]
        return arr.ConstructedAt(arr.GetEntriesFast())


class DBStoreEntry:
    c_RawFile = 1


class DBAccessorBase:
    """Resolves a raw-file payload through pxdbg's payload store under the global tags of basf2.conditions."""

    def __init__(self, entry_type: int, name: str, required: bool = True) -> None:
        import basf2

        from pxdbg.shared import payloads

        self._filename = ""
        prefix = "PXDBackgroundGenerator_"
        for tag in basf2.conditions.globaltags:
            try:
                self._filename = str(payloads.find(name[len(prefix):], tag).path)
                break
            except payloads.PayloadError:
                continue
        if not self._filename and required:
            basf2.B2ERROR(f"required payload {name} not found in global tags {basf2.conditions.globaltags}")

    def getFilename(self) -> str:
        return self._filename


for _name in ("DataStore", "PyStoreObj", "PyStoreArray", "DBStoreEntry", "DBAccessorBase", "BackgroundInfo"):
    setattr(Belle2, _name, globals()[_name])
