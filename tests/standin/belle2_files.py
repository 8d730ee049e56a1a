"""basf2 ROOT files as RootOutput writes them, for fixtures: the persistent classes declared from basf2's headers and
a writer that follows ``framework/modules/rootio/src/RootOutputModule.cc``.

Classes (ClassDef versions as in the headers, so the streamer info in the files is the one basf2 writes):
``Mergeable`` (``framework/pcore/include/Mergeable.h``), ``BackgroundMetaData``
(``framework/dataobjects/include/BackgroundMetaData.h``), ``FileMetaData``
(``framework/dataobjects/include/FileMetaData.h``, defaults from ``framework/dataobjects/src/FileMetaData.cc``).
``PXDDigit``, ``VxdID`` and ``EventMetaData`` come from ``belle2_root`` (imported first).

What RootOutput does and the writer copies: a ``TTree`` "tree" for event durability and "persistent" for persistent
durability; one branch per store entry in the order of the store's ``std::map`` (by name), made with
``TTree::Branch(name, &object, basketSize = 32000, splitLevel = 99)``, so a ``TClonesArray`` is split into one
sub-branch per member (``PXDDigits.m_charge`` ...); auto-flush and auto-save every 10 MB; ``EventMetaData``
always written; the persistent tree filled once, at the end, with ``FileMetaData`` holding the event count and the
lowest and highest (experiment, run, event); both trees written with ``TObject::kWriteDelete``.
"""

from __future__ import annotations

import belle2_root  # declares EventMetaData, VxdID and PXDDigit first
import numpy as np
import ROOT

_CODE = r"""
#include <TObject.h>
#include <TClonesArray.h>
#include <TFile.h>
#include <TTree.h>
#include <climits>
#include <map>
#include <string>
#include <vector>

namespace Belle2 {
// framework/pcore/include/Mergeable.h
class Mergeable : public TObject {
 public:
  Mergeable() {}
  virtual ~Mergeable() {}
  virtual void merge(const Mergeable* other) = 0;
  virtual void clear() = 0;
  virtual void removeSideEffects() {}
 private:
  ClassDef(Mergeable, 0);
};

// framework/dataobjects/include/BackgroundMetaData.h
class BackgroundMetaData : public Mergeable {
 public:
  enum BG_TAG { bg_none = 0, bg_Coulomb_LER = 1, bg_Coulomb_HER = 2, bg_RBB_LER = 3, bg_RBB_HER = 4,
                bg_Touschek_LER = 5, bg_Touschek_HER = 6, bg_twoPhoton = 7, bg_RBB_gamma = 8, bg_RBB_LER_far = 9,
                bg_RBB_HER_far = 10, bg_Touschek_LER_far = 11, bg_Touschek_HER_far = 12, bg_SynchRad_LER = 13,
                bg_SynchRad_HER = 14, bg_BHWide_LER = 15, bg_BHWide_HER = 16, bg_RBB = 17, bg_BHWide = 18,
                bg_BHWideLargeAngle = 19, bg_InjectionLER = 21, bg_InjectionHER = 22, bg_Brems_LER = 23,
                bg_Brems_HER = 24, bg_other = 99 };
  enum EFileType { c_Usual = 0, c_ECL = 1, c_PXD = 2 };
  BackgroundMetaData() {}
  void setBackgroundType(const std::string& type) { m_backgroundType = type; }
  void setBackgroundTag(BG_TAG tag) { m_backgroundTag = tag; }
  void setRealTime(float time) { m_realTime = time; }
  void setFileType(EFileType type) { m_fileType = type; }
  const std::string& getBackgroundType() const { return m_backgroundType; }
  BG_TAG getBackgroundTag() const { return m_backgroundTag; }
  float getRealTime() const { return m_realTime; }
  EFileType getFileType() const { return m_fileType; }
  void merge(const Mergeable*) override {}
  void clear() override {}
 private:
  std::string m_backgroundType;
  BG_TAG m_backgroundTag = bg_other;
  float m_realTime = 0;
  EFileType m_fileType = c_Usual;
  ClassDefOverride(BackgroundMetaData, 4);
};

// framework/dataobjects/include/FileMetaData.h (ClassDef 11); constructor defaults from FileMetaData.cc
class FileMetaData : public TObject {
 public:
  FileMetaData(): m_lfn(""), m_nEvents(0), m_nFullEvents(0), m_experimentLow(0), m_runLow(0), m_eventLow(0),
    m_experimentHigh(0), m_runHigh(0), m_eventHigh(0), m_date(""), m_site(""), m_user(""), m_release(""),
    m_steering(""), m_isMC(true), m_mcEvents(0) {}
  const std::string& getLfn() const { return m_lfn; }
  unsigned int getNEvents() const { return m_nEvents; }
  unsigned int getNFullEvents() const { return m_nFullEvents; }
  int getExperimentLow() const { return m_experimentLow; }
  int getRunLow() const { return m_runLow; }
  unsigned int getEventLow() const { return m_eventLow; }
  int getExperimentHigh() const { return m_experimentHigh; }
  int getRunHigh() const { return m_runHigh; }
  unsigned int getEventHigh() const { return m_eventHigh; }
  bool isMC() const { return m_isMC; }
  unsigned int getMcEvents() const { return m_mcEvents; }
  void setLfn(const std::string& lfn) { m_lfn = lfn; }
  void setNEvents(unsigned int nEvents) { m_nEvents = nEvents; }
  void setNFullEvents(unsigned int nEvents) { m_nFullEvents = nEvents; }
  void setLow(int experiment, int run, unsigned int event) {
    m_experimentLow = experiment; m_runLow = run; m_eventLow = event;
  }
  void setHigh(int experiment, int run, unsigned int event) {
    m_experimentHigh = experiment; m_runHigh = run; m_eventHigh = event;
  }
  void setParents(const std::vector<std::string>& parents) { m_parentLfns = parents; }
  void setCreationData(const std::string& date, const std::string& site, const std::string& user,
                       const std::string& release) { m_date = date; m_site = site; m_user = user; m_release = release; }
  void setRandomSeed(const std::string& seed) { m_randomSeed = seed; }
  void setRelease(const std::string& release) { m_release = release; }
  void setSteering(const std::string& steering) { m_steering = steering; }
  void setMcEvents(unsigned int nEvents) { m_mcEvents = nEvents; }
  void setDatabaseGlobalTag(const std::string& globalTag) { m_databaseGlobalTag = globalTag; }
  void setDataDescription(const std::string& key, const std::string& value) { m_dataDescription[key] = value; }
 private:
  std::string m_lfn;
  unsigned int m_nEvents;
  unsigned int m_nFullEvents;
  int m_experimentLow;
  int m_runLow;
  unsigned int m_eventLow;
  int m_experimentHigh;
  int m_runHigh;
  unsigned int m_eventHigh;
  std::vector<std::string> m_parentLfns;
  std::string m_date;
  std::string m_site;
  std::string m_user;
  std::string m_randomSeed;
  std::string m_release;
  std::string m_steering;
  bool m_isMC;
  unsigned int m_mcEvents;
  std::string m_databaseGlobalTag;
  std::map<std::string, std::string> m_dataDescription;
  ClassDefOverride(FileMetaData, 11);
};

namespace standin {
// A basf2 output file as RootOutput writes it (see the module docstring). digits4: (VxdID, u, v, charge) per
// digit, events one after the other, counts[e] digits in event e; the digits are written in the array branch
// `arrayName` of class `digitClass` (another class, e.g. for a file whose PXDDigits hold something else).
// backgroundType non-empty: a BG mixing sample (BackgroundMetaData in the persistent tree).
void write_basf2_file(const char* path, const std::vector<unsigned short>& digits4, const std::vector<int>& counts,
                      int experiment, int run, const std::string& arrayName, const std::string& backgroundType,
                      bool withEventMetaData) {
  TFile file(path, "RECREATE", "basf2 Event File");
  file.SetCompressionLevel(1);
  TTree tree("tree", "tree");
  tree.SetAutoFlush(-10000000);
  tree.SetAutoSave(-10000000);
  auto* eventMetaData = new EventMetaData();
  auto* digits = new TClonesArray("Belle2::PXDDigit");
  // the store's std::map orders the branches by name
  std::map<std::string, int> order{{"EventMetaData", 0}, {arrayName, 1}};
  for (const auto& entry : order) {
    if (entry.second == 0 && withEventMetaData)
      tree.Branch("EventMetaData", "Belle2::EventMetaData", &eventMetaData, 32000, 99);
    if (entry.second == 1) tree.Branch(arrayName.c_str(), &digits, 32000, 99);
  }
  size_t next = 0;
  unsigned int event = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    digits->Clear("C");
    for (int i = 0; i < counts[e]; ++i, next += 4)
      new ((*digits)[digits->GetEntriesFast()]) PXDDigit(VxdID(digits4[next]), digits4[next + 1], digits4[next + 2],
                                                         digits4[next + 3]);
    event = e + 1;  // EventInfoSetter numbers events from 1
    eventMetaData->setEvent(event);
    eventMetaData->setRun(run);
    eventMetaData->setExperiment(experiment);
    tree.Fill();
  }
  TTree persistent("persistent", "persistent");
  persistent.SetAutoFlush(-10000000);
  persistent.SetAutoSave(-10000000);
  auto* background = new BackgroundMetaData();
  auto* fileMetaData = new FileMetaData();
  if (!backgroundType.empty()) {
    background->setBackgroundType(backgroundType);
    background->setRealTime(1000.0 * counts.size());
    persistent.Branch("BackgroundMetaData", "Belle2::BackgroundMetaData", &background, 32000, 99);
  }
  persistent.Branch("FileMetaData", "Belle2::FileMetaData", &fileMetaData, 32000, 99);
  fileMetaData->setNEvents(counts.size());
  if (counts.empty()) { fileMetaData->setLow(-1, -1, 0); fileMetaData->setHigh(-1, -1, 0); }
  else { fileMetaData->setLow(experiment, run, 1); fileMetaData->setHigh(experiment, run, event); }
  fileMetaData->setLfn(path);
  fileMetaData->setCreationData("2026-01-01 00:00:00", "standin", "standin", "release-standin");
  persistent.Fill();
  tree.Write("tree", TObject::kWriteDelete);
  persistent.Write("persistent", TObject::kWriteDelete);
  file.Close();
  delete digits; delete eventMetaData; delete background; delete fileMetaData;
}
}  // namespace standin
}  // namespace Belle2
"""

if not hasattr(ROOT.Belle2.standin, "write_basf2_file"):
    assert ROOT.gInterpreter.Declare(_CODE), "the basf2 file classes did not compile"
    _level, ROOT.gErrorIgnoreLevel = ROOT.gErrorIgnoreLevel, ROOT.kError
    for _cls in ("Belle2::Mergeable", "Belle2::BackgroundMetaData", "Belle2::FileMetaData", "Belle2::EventMetaData"):
        ROOT.TClass.GetClass(_cls).GetStreamerInfo()
    ROOT.gErrorIgnoreLevel = _level


def write_basf2_file(
    path,
    events: list[np.ndarray],
    *,
    experiment: int = 0,
    run: int = 0,
    array_name: str = "PXDDigits",
    background_type: str = "",
    event_meta_data: bool = True,
) -> None:
    """A basf2 output file with one event per entry of ``events``, each an (n, 4) array of (VxdID, u, v, charge)."""
    counts = ROOT.std.vector["int"]([len(e) for e in events])
    flat = np.concatenate([np.asarray(e, np.uint16).reshape(-1) for e in events]) if events else np.zeros(0)
    digits = ROOT.std.vector["unsigned short"](flat.astype(np.uint16).tolist())
    ROOT.Belle2.standin.write_basf2_file(
        str(path), digits, counts, int(experiment), int(run), array_name, background_type, bool(event_meta_data)
    )


def read_basf2_digits(path) -> list[np.ndarray]:
    """The PXDDigits of every event of a basf2 file, read with ROOT (for comparison with other readers)."""
    f = ROOT.TFile.Open(str(path))
    tree = f.Get("tree")
    arr = ROOT.TClonesArray("Belle2::PXDDigit")
    tree.SetBranchAddress("PXDDigits", ROOT.AddressOf(arr))
    out = []
    for i in range(tree.GetEntries()):
        tree.GetEntry(i)
        out.append(belle2_root.read_digits(arr).copy())
    f.Close()
    return out
