"""The ``ROOT.Belle2`` side of the basf2 stand-in, declared in C++ through cling (see README.md).

Everything a basf2 module touches through PyROOT is real C++ here, with the signatures, enum values and rules of
basf2's own headers, so that PyROOT converts arguments the way it does inside basf2: ``DataStore`` with its
separate event and persistent maps, ``StoreEntry``, ``StoreAccessorBase``, ``PyStoreArray``, ``PyStoreObj``,
``VxdID``, ``DigitBase``, ``PXDDigit``, ``BackgroundInfo`` and ``DBStoreEntry``; and the C++ bodies of the
``BGOverlayInput`` and ``BGOverlayExecutor`` modules. Messages of the C++ side are collected in a log that the
``basf2`` stand-in drains after every module call; ``B2FATAL`` throws (basf2 would end the process).

One file, past 500 lines, on purpose: it is one cling declaration of the C++ classes basf2's headers declare
together, each rule next to the header it comes from.
"""

from __future__ import annotations

import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the PyPI ROOT build announces its alpha stage
    import ROOT

_CODE = r"""
#include <TObject.h>
#include <TClonesArray.h>
#include <TClass.h>
#include <TChain.h>
#include <TFile.h>
#include <TTree.h>
#include <TBranch.h>
#include <TLeaf.h>
#include <TRandom.h>
#include <map>
#include <array>
#include <vector>
#include <string>
#include <sstream>
#include <stdexcept>
#include <utility>
#include <climits>

namespace Belle2 {
// ClassDef's Class() and IsA() of a class interpreted inside a namespace look the class up by its unqualified
// name and find nothing; the stand-in's own code therefore asks TClass by the qualified name (basf2's compiled
// dictionaries do not have this limitation).
inline TClass* standin_class(const std::string& name) { return TClass::GetClass(("Belle2::" + name).c_str()); }
namespace standin {
// Messages of the C++ side: (level, text), drained by the basf2 stand-in after each module call.
inline std::vector<std::pair<std::string, std::string>>& log() {
  static std::vector<std::pair<std::string, std::string>> messages;
  return messages;
}
inline void message(const char* level, const std::string& text) { log().emplace_back(level, text); }
inline void fatal(const std::string& text) { message("FATAL", text); throw std::runtime_error(text); }
}

// framework/datastore/include/StoreEntry.h, framework/datastore/src/StoreEntry.cc
struct StoreEntry {
  StoreEntry(): isArray(false), dontWriteOut(false), objClass(nullptr), object(nullptr), ptr(nullptr) {}
  StoreEntry(bool isArray_, TClass* cl, const std::string& name_, bool dontWriteOut_):
    isArray(isArray_), dontWriteOut(dontWriteOut_), objClass(cl), object(nullptr), ptr(nullptr), name(name_)
  { recoverFromNullObject(); }
  void recoverFromNullObject() {
    if (object) return;
    if (isArray) object = new TClonesArray(objClass);
    else object = static_cast<TObject*>(objClass->New());
  }
  void resetForGetEntry() {
    if (isArray) static_cast<TClonesArray*>(object)->Delete();
    else { delete object; object = nullptr; }
  }
  void recreate() { resetForGetEntry(); if (object == nullptr) recoverFromNullObject(); ptr = object; }
  void invalidate() { recreate(); ptr = nullptr; }
  TClonesArray* getPtrAsArray() const { return isArray ? static_cast<TClonesArray*>(ptr) : nullptr; }
  bool isArray;
  bool dontWriteOut;
  TClass* objClass;
  TObject* object;
  TObject* ptr;
  std::string name;
};

class StoreAccessorBase;

// framework/datastore/include/DataStore.h, framework/datastore/src/DataStore.cc
class DataStore {
 public:
  enum EDurability {
    c_Event,
    c_Persistent
  };
  const static int c_NDurabilityTypes = 2;
  enum EStoreFlags {
    c_WriteOut = 0,
    c_DontWriteOut = 1,
    c_ErrorIfAlreadyRegistered = 2,
  };
  typedef std::map<std::string, StoreEntry> StoreEntryMap;

  static DataStore& Instance() { static DataStore instance; return instance; }

  static TClass* getTClassFromDefaultObjectName(const std::string& objectName) {
    TClass* cl = TClass::GetClass(("Belle2::" + objectName).c_str());
    if (!cl) cl = TClass::GetClass(objectName.c_str());
    return cl;
  }
  static TClass* getTClassFromDefaultArrayName(const std::string& arrayName) {
    if (arrayName.empty() || arrayName.back() != 's') return nullptr;
    return getTClassFromDefaultObjectName(arrayName.substr(0, arrayName.size() - 1));
  }
  static std::string defaultObjectName(const std::string& classname) {
    size_t colon = classname.rfind(':');
    return colon != std::string::npos ? classname.substr(colon + 1) : classname;
  }
  static std::string defaultArrayName(const TClass* t) { return defaultObjectName(t->GetName()) + "s"; }

  bool registerEntry(const std::string& name, EDurability durability, TClass* objClass, bool array,
                     EStoreFlags storeFlags);
  StoreEntry* getEntry(const StoreAccessorBase& accessor);
  bool createObject(TObject* object, bool replace, const StoreAccessorBase& accessor);
  bool requireInput(const StoreAccessorBase& accessor);
  bool optionalInput(const StoreAccessorBase& accessor);
  StoreEntryMap& getStoreEntryMap(EDurability durability) { return m_storeEntryMap[durability]; }
  void invalidateData(EDurability durability) {
    for (auto& it : m_storeEntryMap[durability]) it.second.invalidate();
  }
  void setInitializeActive(bool active) { m_initializeActive = active; }
  bool getInitializeActive() const { return m_initializeActive; }
  void reset() {
    for (auto& map : m_storeEntryMap) {
      for (auto& it : map) { delete it.second.object; it.second.object = nullptr; it.second.ptr = nullptr; }
      map.clear();
    }
    m_initializeActive = true;
  }
  std::vector<std::string> getListOfArrays(EDurability durability) const {
    std::vector<std::string> names;
    for (const auto& it : m_storeEntryMap[durability]) if (it.second.isArray) names.push_back(it.first);
    return names;
  }

 private:
  DataStore(): m_initializeActive(true) {}
  bool checkType(const StoreEntry& entry, const StoreAccessorBase& accessor) const;
  bool m_initializeActive;
  std::array<StoreEntryMap, c_NDurabilityTypes> m_storeEntryMap;
};

// framework/datastore/include/StoreAccessorBase.h
class StoreAccessorBase {
 public:
  StoreAccessorBase(const std::string& name, DataStore::EDurability durability, TClass* objClass, bool isArray):
    m_name(name), m_durability(durability), m_class(objClass), m_isArray(isArray) {}
  virtual ~StoreAccessorBase() {}
  bool registerInDataStore(DataStore::EStoreFlags storeFlags = DataStore::c_WriteOut) {
    return DataStore::Instance().registerEntry(m_name, m_durability, getClass(), isArray(), storeFlags);
  }
  bool registerInDataStore(const std::string& name, DataStore::EStoreFlags storeFlags = DataStore::c_WriteOut) {
    if (!name.empty()) m_name = name;
    return DataStore::Instance().registerEntry(m_name, m_durability, getClass(), isArray(), storeFlags);
  }
  bool isRequired(const std::string& name = "") {
    if (!name.empty()) m_name = name;
    return DataStore::Instance().requireInput(*this);
  }
  bool isOptional(const std::string& name = "") {
    if (!name.empty()) m_name = name;
    return DataStore::Instance().optionalInput(*this);
  }
  bool create(bool replace = false) { return DataStore::Instance().createObject(0, replace, *this); }
  const std::string& getName() const { return m_name; }
  DataStore::EDurability getDurability() const { return m_durability; }
  TClass* getClass() const { return m_class; }
  bool isArray() const { return m_isArray; }
  std::string readableName() const {
    std::string s = m_isArray ? "array " : "object ";
    return s + m_name + " (durability: " + (m_durability == DataStore::c_Event ? "event" : "persistent") + ")";
  }
 protected:
  std::string m_name;
  DataStore::EDurability m_durability;
  TClass* m_class;
  bool m_isArray;
};

inline bool DataStore::checkType(const StoreEntry& entry, const StoreAccessorBase& accessor) const {
  if (entry.isArray != accessor.isArray())
    standin::fatal("Existing entry '" + entry.name + "' is an " + (entry.isArray ? "array" : "object")
                   + " and the requested one an " + (accessor.isArray() ? "array" : "object"));
  if (!entry.objClass->InheritsFrom(accessor.getClass()))
    standin::fatal("Existing " + accessor.readableName() + " of type " + entry.objClass->GetName()
                   + " doesn't match requested type " + accessor.getClass()->GetName());
  return true;
}

inline bool DataStore::registerEntry(const std::string& name, EDurability durability, TClass* objClass, bool array,
                                     EStoreFlags storeFlags) {
  const StoreAccessorBase accessor(name, durability, objClass, array);
  if (!m_initializeActive) {
    standin::message("ERROR", "Attempt to register " + accessor.readableName() + " outside of the initialization "
                     "phase. Please move calls to registerInDataStore() into your Module's initialize() function.");
    return false;
  }
  const bool dontwriteout = storeFlags & c_DontWriteOut;
  auto it = m_storeEntryMap[durability].find(name);
  if (it != m_storeEntryMap[durability].end()) {
    StoreEntry& entry = it->second;
    if (storeFlags & c_ErrorIfAlreadyRegistered) {
      standin::message("ERROR", "An " + accessor.readableName() + " of type " + entry.objClass->GetName()
                       + " was already registered before.");
      return false;
    }
    if (!checkType(entry, accessor)) return false;
    if (entry.dontWriteOut != dontwriteout) {
      standin::message("WARNING", "Existing " + accessor.readableName() + " has different persistency type than "
                       "requested. Changing to " + (dontwriteout ? "c_DontWriteOut" : "c_WriteOut") + ".");
      entry.dontWriteOut = dontwriteout;
    }
    return true;
  }
  if (array && name == "ALL") {
    standin::message("ERROR", "Creating an array with the reserved name 'ALL' is not allowed!");
    return false;
  }
  m_storeEntryMap[durability][name] = StoreEntry(array, objClass, name, dontwriteout);
  return true;
}

inline StoreEntry* DataStore::getEntry(const StoreAccessorBase& accessor) {
  auto it = m_storeEntryMap[accessor.getDurability()].find(accessor.getName());
  if (it != m_storeEntryMap[accessor.getDurability()].end() && checkType(it->second, accessor)) return &(it->second);
  return nullptr;
}

inline bool DataStore::createObject(TObject* object, bool replace, const StoreAccessorBase& accessor) {
  StoreEntry* entry = getEntry(accessor);
  if (!entry) {
    standin::message("ERROR", "No " + accessor.readableName() + " exists in the DataStore, did you forget to "
                     "register it in your Module's initialize() function?");
    return false;
  }
  if (entry->ptr && !replace && object != entry->object) {
    standin::message("ERROR", "An " + accessor.readableName() + " was already created in the DataStore.");
    return false;
  }
  if (object) {
    if (object != entry->object) { delete entry->object; entry->object = object; }
    entry->ptr = entry->object;
  } else {
    entry->recreate();
  }
  return true;
}

inline bool DataStore::requireInput(const StoreAccessorBase& accessor) {
  if (!m_initializeActive)
    standin::fatal("Attempt to require input " + accessor.readableName() + " outside of the initialization phase.");
  if (!getEntry(accessor)) {
    standin::message("ERROR", "The required " + accessor.readableName() + " does not exist. Maybe you forgot the "
                     "module that registers it?");
    return false;
  }
  return true;
}

inline bool DataStore::optionalInput(const StoreAccessorBase& accessor) { return getEntry(accessor) != nullptr; }

// framework/pybasf2/include/PyStoreArray.h, framework/pybasf2/src/PyStoreArray.cc
class PyStoreArray {
 public:
  static std::vector<std::string> list(DataStore::EDurability durability = DataStore::EDurability::c_Event) {
    return DataStore::Instance().getListOfArrays(durability);
  }
  explicit PyStoreArray(const std::string& name,
                        DataStore::EDurability durability = DataStore::EDurability::c_Event):
    PyStoreArray(DataStore::getTClassFromDefaultArrayName(name) ? DataStore::getTClassFromDefaultArrayName(name)
                 : TObject::Class(), name, durability) {}
  explicit PyStoreArray(TClass* objClass, DataStore::EDurability durability = DataStore::EDurability::c_Event):
    PyStoreArray(objClass, DataStore::defaultArrayName(objClass), durability) {}
  explicit PyStoreArray(TClass* objClass, const std::string& name,
                        DataStore::EDurability durability = DataStore::EDurability::c_Event):
    m_storeAccessor(name, durability, objClass, true) { attach(); }

  bool registerInDataStore(DataStore::EStoreFlags storeFlags) {
    return registerInDataStore(m_storeAccessor.getName(), storeFlags);
  }
  bool registerInDataStore(const std::string& name = "",
                           DataStore::EStoreFlags storeFlags = DataStore::EStoreFlags::c_WriteOut) {
    if (!hasValidClass()) {
      standin::message("ERROR", "Cannot register PyStoreArray '" + name + "' with unknown TClass.");
      return false;
    }
    bool success = m_storeAccessor.registerInDataStore(name, storeFlags);
    if (success) attach();
    return success;
  }
  bool isRequired(const std::string& name = "") { return m_storeAccessor.isRequired(name); }
  bool isOptional(const std::string& name = "") { return m_storeAccessor.isOptional(name); }
  std::string getName() const { return m_storeAccessor.getName(); }
  DataStore::EDurability getDurability() const { return m_storeAccessor.getDurability(); }
  bool hasValidClass() const {
    const TClass* objClass = m_storeAccessor.getClass();
    return objClass && objClass != TObject::Class();
  }
  bool isValid() const { return m_storeEntry && m_storeEntry->ptr; }
  operator bool() const { return isValid(); }
  TObject* operator[](int i) const {
    ensureAttached();
    return isValid() ? m_storeEntry->getPtrAsArray()->At(i) : nullptr;
  }
  int getEntries() const { ensureAttached(); return isValid() ? m_storeEntry->getPtrAsArray()->GetEntriesFast() : 0; }
  int __len__() const { return getEntries(); }
  TObject* appendNew() {
    ensureCreated();
    if (isValid()) return getPtr()->ConstructedAt(getEntries());
    standin::message("ERROR", "Cannot create an object in invalid PyStoreArray.");
    return nullptr;
  }
  TClonesArray* getPtr() { ensureCreated(); return isValid() ? m_storeEntry->getPtrAsArray() : nullptr; }

 private:
  void ensureCreated() { create(false); }
  bool create(bool replace = false) {
    ensureAttached();
    if (!m_storeEntry) { standin::message("ERROR", "Cannot create unregistered PyStoreArray."); return false; }
    if (isValid() && !replace) return true;
    if (!isValid() && !hasValidClass()) {
      standin::message("ERROR", "Cannot create PyStoreArray with unknown TClass.");
      return false;
    }
    return m_storeAccessor.create(replace);
  }
  void ensureAttached() const {
    if (!m_storeEntry) {
      attach();
      if (!m_storeEntry)
        standin::message("ERROR", "PyStoreArray " + m_storeAccessor.readableName() + " has not been registered!");
    }
  }
  void attach() const { m_storeEntry = DataStore::Instance().getEntry(m_storeAccessor); }
  StoreAccessorBase m_storeAccessor;
  mutable StoreEntry* m_storeEntry = nullptr;
};

// framework/pybasf2/include/PyStoreObj.h
class PyStoreObj {
 public:
  explicit PyStoreObj(const std::string& name,
                      DataStore::EDurability durability = DataStore::EDurability::c_Event):
    m_storeAccessor(name, durability,
                    DataStore::getTClassFromDefaultObjectName(name) ? DataStore::getTClassFromDefaultObjectName(name)
                    : TObject::Class(), false) { attach(); }
  bool registerInDataStore(DataStore::EStoreFlags storeFlags = DataStore::c_WriteOut) {
    bool success = m_storeAccessor.registerInDataStore(storeFlags);
    if (success) attach();
    return success;
  }
  bool create(bool replace = false) {
    if (!m_storeEntry) attach();
    return m_storeEntry && m_storeAccessor.create(replace);
  }
  // framework/pybasf2/include/PyStoreObj.h: "Ensure this object has been registered previously. Will cause an
  // ERROR if it does not exist. This must be called in the initialization phase."
  bool isRequired(const std::string& name = "") { return m_storeAccessor.isRequired(name); }
  bool isOptional(const std::string& name = "") { return m_storeAccessor.isOptional(name); }
  bool isValid() const { if (!m_storeEntry) attach(); return m_storeEntry && m_storeEntry->ptr; }
  operator bool() const { return isValid(); }
  TObject* obj() const { return isValid() ? m_storeEntry->ptr : nullptr; }
  std::string getName() const { return m_storeAccessor.getName(); }
  std::string getClassName() const { return m_storeAccessor.getClass()->GetName(); }  // for the pythonization
 private:
  void attach() const { m_storeEntry = DataStore::Instance().getEntry(m_storeAccessor); }
  StoreAccessorBase m_storeAccessor;
  mutable StoreEntry* m_storeEntry = nullptr;
};

// vxd/dataobjects/include/VxdID.h
class VxdID {
 public:
  typedef unsigned short baseType;
  enum {
    LayerBits = 3, LadderBits = 5, SensorBits = 3, SegmentBits = 5,
    Bits = LayerBits + LadderBits + SensorBits + SegmentBits,
    MaxLayer = (1 << LayerBits) - 1, MaxLadder = (1 << LadderBits) - 1, MaxSensor = (1 << SensorBits) - 1,
    MaxSegment = (1 << SegmentBits) - 1, MaxID = (1 << Bits) - 1
  };
  VxdID(baseType id = 0) { m_id.id = id; }
  VxdID(baseType layer, baseType ladder, baseType sensor, baseType segment = 0) {
    m_id.parts.layer = layer; m_id.parts.ladder = ladder; m_id.parts.sensor = sensor; m_id.parts.segment = segment;
  }
  VxdID(const VxdID& b): m_id(b.m_id) {}
  VxdID& operator=(const VxdID& b) { m_id = b.m_id; return *this; }
  VxdID& operator=(baseType id) { m_id.id = id; return *this; }
  operator baseType() const { return getID(); }
  bool operator==(const VxdID& b) const { return getID() == b.getID(); }
  bool operator<(const VxdID& b) const { return getID() < b.getID(); }
  baseType getID() const { return m_id.id; }
  baseType getLayerNumber() const { return m_id.parts.layer; }
  baseType getLadderNumber() const { return m_id.parts.ladder; }
  baseType getSensorNumber() const { return m_id.parts.sensor; }
  baseType getSegmentNumber() const { return m_id.parts.segment; }
  void setID(baseType id) { m_id.id = id; }
  void setSegmentNumber(baseType segment) { m_id.parts.segment = segment; }
 private:
  union {
    baseType id: Bits;
    struct {
      baseType segment: SegmentBits;
      baseType sensor: SensorBits;
      baseType ladder: LadderBits;
      baseType layer: LayerBits;
    } parts;
  } m_id;
};

// framework/datastore/include/RelationsObject.h (relations are not part of the stand-in)
class RelationsObject : public TObject {
 public:
  RelationsObject() {}
  ClassDef(RelationsObject, 1)
};

// framework/dataobjects/include/DigitBase.h
class DigitBase : public RelationsObject {
 public:
  enum EAppendStatus {
    c_DontAppend = 0,
    c_Append = 1
  };
  DigitBase() {}
  virtual unsigned int getUniqueChannelID() const = 0;
  virtual EAppendStatus addBGDigit(const DigitBase* bg) = 0;
  virtual void adjustAppendedBGDigit() {}
  ClassDef(DigitBase, 2)
};

// pxd/dataobjects/include/PXDDigit.h
class PXDDigit : public DigitBase {
 public:
  PXDDigit(VxdID sensorID, unsigned short uCellID, unsigned short vCellID, unsigned short charge):
    m_sensorID(sensorID), m_uCellID(uCellID), m_vCellID(vCellID), m_charge(charge) {}
  PXDDigit(): PXDDigit(0, 0, 0, 0) {}
  short int getFrameNumber() const { return VxdID(m_sensorID).getSegmentNumber(); }
  VxdID getSensorID() const { return m_sensorID; }
  unsigned short getUCellID() const { return m_uCellID; }
  unsigned short getVCellID() const { return m_vCellID; }
  unsigned short getCharge() const { return m_charge; }
  void setCharge(unsigned short charge) { m_charge = charge; }
  unsigned int getUniqueChannelID() const {
    VxdID sensorID(m_sensorID);
    sensorID.setSegmentNumber(sensorID.getSegmentNumber() << 2);
    return m_vCellID + (m_uCellID << 10) + ((unsigned int)(VxdID::baseType)sensorID << 16);
  }
  DigitBase::EAppendStatus addBGDigit(const DigitBase* bg) {
    m_charge += dynamic_cast<const PXDDigit*>(bg)->getCharge();
    return DigitBase::c_DontAppend;
  }
 private:
  unsigned short m_sensorID;
  unsigned short m_uCellID;
  unsigned short m_vCellID;
  unsigned short m_charge;
  ClassDef(PXDDigit, 5)
};

// background/dataobjects/include/BackgroundInfo.h (the members the overlay modules use)
class BackgroundInfo : public TObject {
 public:
  enum EMethod {c_Unknown = 0, c_Mixing = 1, c_Overlay = 2};
  BackgroundInfo() {}
  void setMethod(EMethod method) { m_method = method; }
  EMethod getMethod() const { return m_method; }
  void setExtensionName(const std::string& name) { m_extensionName = name; }
  const std::string& getExtensionName() const { return m_extensionName; }
 private:
  EMethod m_method = c_Unknown;
  std::string m_extensionName;
  ClassDef(BackgroundInfo, 4)
};

// framework/dataobjects/include/EventMetaData.h (ClassDef version 4), framework/dataobjects/src/EventMetaData.cc
class EventMetaData : public TObject {
 public:
  explicit EventMetaData(unsigned int event = 1, int run = 0, int experiment = 0):
    m_event(event), m_run(run), m_subrun(0), m_experiment(experiment), m_production(0), m_time(0),
    m_generatedWeight(1.0), m_errorFlag(0) {}
  ~EventMetaData() {}
  enum EventErrorFlag { c_B2LinkPacketCRCError = 0x1, c_B2LinkEventCRCError = 0x2 };
  void setEvent(unsigned int event) { m_event = event; }
  void setRun(int run) { m_run = run; }
  void setSubrun(int subrun) { m_subrun = subrun; }
  void setExperiment(int experiment) { m_experiment = experiment; }
  void setProduction(int production) { m_production = production; }
  void setTime(unsigned long long int time) { m_time = time; }
  // EventMetaData.cc: end of data is every number at its maximum
  void setEndOfData() { m_event = UINT_MAX; m_run = INT_MAX; m_experiment = INT_MAX; }
  bool isEndOfData() const { return m_event == UINT_MAX && m_run == INT_MAX && m_experiment == INT_MAX; }
  void setEndOfRun(unsigned int experimentNumber, unsigned int runNumber) {
    m_event = UINT_MAX; m_experiment = experimentNumber; m_run = runNumber;
  }
  bool isEndOfRun() const { return !isEndOfData() && m_event == UINT_MAX; }
  void setParentLfn(const std::string& parent) { m_parentLfn = parent; }
  void setGeneratedWeight(double weight) { m_generatedWeight = weight; }
  void setErrorFlag(unsigned int errorFlag) { m_errorFlag = errorFlag; }
  unsigned int getErrorFlag() const { return m_errorFlag; }
  unsigned int getEvent() const { return m_event; }
  int getRun() const { return m_run; }
  int getSubrun() const { return m_subrun; }
  int getExperiment() const { return m_experiment; }
  int getProduction() const { return m_production; }
  unsigned long long int getTime() const { return m_time; }
  const std::string& getParentLfn() const { return m_parentLfn; }
  double getGeneratedWeight() const { return m_generatedWeight; }
  bool operator==(const EventMetaData& o) const {
    return m_event == o.getEvent() && m_run == o.getRun() && m_experiment == o.getExperiment();
  }
  bool operator!=(const EventMetaData& o) const { return !(*this == o); }
 private:
  unsigned int m_event;
  int m_run;
  int m_subrun;
  int m_experiment;  // valid values: [0, 1023]
  int m_production;
  unsigned long long int m_time;  // ns since epoch
  std::string m_parentLfn;
  double m_generatedWeight;
  unsigned int m_errorFlag;
  ClassDef(EventMetaData, 4)
};

// framework/database/include/DBStoreEntry.h
class DBStoreEntry {
 public:
  enum EPayloadType {
    c_RawFile,
    c_ROOTFile,
    c_Object
  };
};

namespace standin {
// background/modules/BGOverlayInput/src/BGOverlayInputModule.cc: initialize() and event()
class BGOverlayInput {
 public:
  void initialize(const std::vector<std::string>& fileNames, const std::string& extensionName,
                  bool skipExperimentCheck = false) {
    m_extensionName = extensionName;
    if (fileNames.empty()) fatal("No valid files specified!");
    // the experiment of the process: EventMetaData of the event store, else EventMetaData's default (0)
    int experiment = 0;
    auto& eventMap = DataStore::Instance().getStoreEntryMap(DataStore::c_Event);
    auto emd = eventMap.find("EventMetaData");
    if (emd != eventMap.end() && emd->second.ptr)
      experiment = static_cast<EventMetaData*>(emd->second.ptr)->getExperiment();
    for (const auto& fileName : fileNames) {
      // RootIOUtilities::RootFileInfo: the file opens, has both trees, and exactly one persistent entry
      TFile* f = TFile::Open(fileName.c_str(), "READ");
      if (!f || !f->IsOpen()) { delete f; fatal("One of the BG files can not be opened. File name: " + fileName); }
      TTree* persistent = nullptr;
      TTree* events = nullptr;
      f->GetObject("persistent", persistent);
      f->GetObject("tree", events);
      std::string issue;
      if (!persistent) issue = "No persistent tree found";
      else if (!events) issue = "No event tree found";
      else if (persistent->GetEntries() != 1)
        issue = "Expected exactly one entry in persistent tree, found " + std::to_string(persistent->GetEntries());
      if (issue.empty() && persistent->GetBranch("BackgroundMetaData")) {
        delete f;
        fatal("The BG sample used is aimed for BG mixing, not for BG overlay. File name: " + fileName);
      }
      if (issue.empty() && !skipExperimentCheck) {
        // RootFileInfo::getFileMetaData (the branch's one entry; read through its leaf, as FileMetaData is
        // declared after this class), then the lowest experiment against the process's
        TLeaf* low = persistent->GetBranch("FileMetaData") ? persistent->GetLeaf("m_experimentLow") : nullptr;
        if (!low) issue = "Error retrieving FileMetaData branch";
        else if (persistent->GetEntry(0) <= 0) issue = "Cannot read FileMetaData";
        else if (int(low->GetValue()) != experiment) {
          int fileExperiment = int(low->GetValue());
          delete f;
          fatal("The BG sample used is aimed for a different experiment number. Please check what you are doing. "
                "File name: " + fileName + " Experiment number of the basf2 process: " + std::to_string(experiment) +
                " Experiment number of the BG file: " + std::to_string(fileExperiment));
        }
      }
      delete f;
      if (!issue.empty())
        fatal("Something went wrong with one of the BG files. File name: " + fileName + " Issue: " + issue);
    }
    m_tree = new TChain("tree");
    for (const auto& fileName : fileNames) m_tree->AddFile(fileName.c_str());
    m_numEvents = m_tree->GetEntries();
    if (m_numEvents == 0) message("ERROR", "tree has no entires");
    m_firstEvent = m_numEvents ? gRandom->Integer(m_numEvents) : 0;
    m_eventCount = m_firstEvent;
    if (!connectBranches()) message("ERROR", "No branches found to be connected");
    StoreAccessorBase bkgInfo("BackgroundInfo", DataStore::c_Persistent, standin_class("BackgroundInfo"), false);
    bkgInfo.registerInDataStore();
    bkgInfo.create();
    auto* info = static_cast<BackgroundInfo*>(DataStore::Instance().getEntry(bkgInfo)->ptr);
    info->setMethod(BackgroundInfo::c_Overlay);
    info->setExtensionName(m_extensionName);
  }
  void event() {
    for (auto* entry : m_storeEntries) entry->resetForGetEntry();
    m_tree->GetEntry(m_eventCount);
    m_eventCount++;
    if (m_eventCount >= m_numEvents) m_eventCount = 0;
    for (auto* entry : m_storeEntries) {
      if (entry->object) entry->ptr = entry->object;
      else { entry->recoverFromNullObject(); entry->ptr = 0; }
    }
  }
  void terminate() { delete m_tree; m_tree = nullptr; }
 private:
  bool connectBranches() {
    auto durability = DataStore::c_Event;
    auto storeFlags = DataStore::EStoreFlags(DataStore::c_DontWriteOut | DataStore::c_ErrorIfAlreadyRegistered);
    auto& map = DataStore::Instance().getStoreEntryMap(durability);
    const TObjArray* branches = m_tree->GetListOfBranches();
    if (!branches) return false;
    for (int jj = 0; jj < branches->GetEntriesFast(); jj++) {
      TBranch* branch = static_cast<TBranch*>(branches->At(jj));
      if (!branch) continue;
      const std::string branchName = branch->GetName();
      TObject* objectPtr = 0;
      branch->SetAddress(&objectPtr);
      branch->GetEntry();
      std::string objName = branch->GetClassName();
      if (objName == "TClonesArray") {
        TClass* objClass = (static_cast<TClonesArray*>(objectPtr))->GetClass();
        branch->ResetAddress();
        delete objectPtr;
        const std::string className = objClass->GetName();
        if (className.find("Belle2::") == std::string::npos) {
          m_tree->SetBranchStatus(branchName.c_str(), 0);
          continue;
        }
        std::string name = branchName + m_extensionName;
        bool ok = DataStore::Instance().registerEntry(name, durability, objClass, true, storeFlags);
        if (!ok) { m_tree->SetBranchStatus(branchName.c_str(), 0); continue; }
        StoreEntry& entry = (map.find(name))->second;
        m_tree->SetBranchAddress(branchName.c_str(), &(entry.object));
        m_storeEntries.push_back(&entry);
      } else {
        m_tree->SetBranchStatus(branchName.c_str(), 0);
        branch->ResetAddress();
        delete objectPtr;
      }
    }
    return !m_storeEntries.empty();
  }
  std::string m_extensionName;
  TChain* m_tree = nullptr;
  long m_numEvents = 0, m_firstEvent = 0, m_eventCount = 0;
  std::vector<StoreEntry*> m_storeEntries;
};

// background/modules/BGOverlayExecutor/: registerDigits<PXDDigit> and addBGDigits<PXDDigit>
class BGOverlayExecutor {
 public:
  void initialize(const std::string& name) {
    StoreAccessorBase bkgInfo("BackgroundInfo", DataStore::c_Persistent, standin_class("BackgroundInfo"), false);
    StoreEntry* entry = DataStore::Instance().getEntry(bkgInfo);
    if (entry && entry->ptr && static_cast<BackgroundInfo*>(entry->ptr)->getMethod() == BackgroundInfo::c_Overlay)
      m_extensionName = static_cast<BackgroundInfo*>(entry->ptr)->getExtensionName();
    else
      message("ERROR", "BGOverlayExecutor: no BGOverlayInput module in the path");
    m_name = name;
    PyStoreArray digits(standin_class("PXDDigit"), name.empty() ? "PXDDigits" : name);
    digits.isOptional();
    PyStoreArray bgDigits(standin_class("PXDDigit"), "PXDDigits" + m_extensionName);
    bgDigits.isOptional();
  }
  void event() {
    PyStoreArray digits(standin_class("PXDDigit"), m_name.empty() ? "PXDDigits" : m_name);
    if (!digits.isValid()) return;
    PyStoreArray bgDigits(standin_class("PXDDigit"), "PXDDigits" + m_extensionName);
    if (!bgDigits.isValid()) return;
    std::multimap<unsigned, PXDDigit*> multimap;
    for (int i = 0; i < digits.getEntries(); ++i) {
      auto* digit = static_cast<PXDDigit*>(digits[i]);
      multimap.insert(std::pair<unsigned, PXDDigit*>(digit->getUniqueChannelID(), digit));
    }
    TClonesArray* out = digits.getPtr();
    for (int i = 0; i < bgDigits.getEntries(); ++i) {
      const auto* bgDigit = static_cast<const PXDDigit*>(bgDigits[i]);
      bool pileup = false;
      auto range = multimap.equal_range(bgDigit->getUniqueChannelID());
      for (auto it = range.first; it != range.second; ++it) {
        pileup = it->second->addBGDigit(bgDigit) == DigitBase::c_DontAppend;
        if (pileup) break;
      }
      if (!pileup) new ((*out)[out->GetEntriesFast()]) PXDDigit(*bgDigit);  // StoreArray::appendNew(bgDigit)
    }
  }
 private:
  std::string m_name;
  std::string m_extensionName;
};

// The signal side of the path: PXDDigitizer registers PXDDigits and writes the signal digits of each event.
inline void digitize_signal(const std::vector<unsigned short>& digits4) {
  PyStoreArray digits(standin_class("PXDDigit"), "PXDDigits");
  TClonesArray* arr = digits.getPtr();
  for (size_t i = 0; i + 3 < digits4.size(); i += 4)
    new ((*arr)[arr->GetEntriesFast()]) PXDDigit(VxdID(digits4[i]), digits4[i + 1], digits4[i + 2], digits4[i + 3]);
}

// copy the digits of a TClonesArray of PXDDigit into out[4 * n]: (sensor id, u, v, charge) per digit
long read_digits(TClonesArray* arr, unsigned short* out, long capacity) {
  long n = arr ? arr->GetEntriesFast() : 0;
  for (long i = 0; i < n && i < capacity; ++i) {
    auto* d = static_cast<PXDDigit*>(arr->At(i));
    out[4 * i] = d->getSensorID().getID(); out[4 * i + 1] = d->getUCellID();
    out[4 * i + 2] = d->getVCellID(); out[4 * i + 3] = d->getCharge();
  }
  return n;
}

}  // namespace standin
}  // namespace Belle2
"""

if not hasattr(ROOT, "Belle2") or not hasattr(ROOT.Belle2, "standin"):
    assert ROOT.gInterpreter.Declare(_CODE), "the stand-in classes did not compile"
    # Build the interpreted classes' streamer info once, quietly: ROOT notes that the data-less bases
    # (RelationsObject, DigitBase) have no streamer of their own, which is true and harmless here.
    _level, ROOT.gErrorIgnoreLevel = ROOT.gErrorIgnoreLevel, ROOT.kError
    for _cls in ("Belle2::RelationsObject", "Belle2::DigitBase", "Belle2::PXDDigit"):
        ROOT.TClass.GetClass(_cls).GetStreamerInfo()
    ROOT.gErrorIgnoreLevel = _level

Belle2 = ROOT.Belle2

# framework/pcore/src/DataStoreStreamer.cc (streamDataStore, restoreDataStore) and the C++ side of the GIL
# stand-in; a second block, so that the classes above stay as they are.
_PROCESSING_CODE = r"""
#include <TBufferFile.h>
#include <time.h>
#include <cerrno>
namespace Belle2 { namespace standin {
// DataStoreStreamer::streamDataStore(addPersistentDurability, streamTransientObjects): every entry of the event
// map (then of the persistent map), skipping c_DontWriteOut entries unless streamTransientObjects; each entry
// travels with its name, durability, transient flag and whether its pointer is null (basf2 keeps the last three
// in TObject bits; here they are plain fields). The result stays in a buffer until copied out.
inline std::string& streamed() { static std::string bytes; return bytes; }
// The classes here are interpreted (no dictionaries), and ROOT's class streamers refuse interpreted classes
// ("Cannot stream interpreted class"); so each class the stand-in knows is written member by member with
// TBufferFile's primitives. Another class is an error, not silently dropped.
inline void write_object(TBufferFile& buf, const std::string& name, TObject* obj, TClass* cl) {
  const std::string cn = cl->GetName();
  if (cn == "Belle2::EventMetaData") {
    auto* m = static_cast<EventMetaData*>(obj);
    buf.WriteUInt(m->getEvent()); buf.WriteInt(m->getRun()); buf.WriteInt(m->getSubrun());
    buf.WriteInt(m->getExperiment()); buf.WriteInt(m->getProduction()); buf.WriteULong64(m->getTime());
    buf.WriteStdString(&m->getParentLfn()); buf.WriteDouble(m->getGeneratedWeight()); buf.WriteUInt(m->getErrorFlag());
  } else if (cn == "Belle2::BackgroundInfo") {
    auto* b = static_cast<BackgroundInfo*>(obj);
    buf.WriteInt(int(b->getMethod())); buf.WriteStdString(&b->getExtensionName());
  } else {
    fatal("the stand-in cannot stream " + name + " of class " + cn);
  }
}
inline TObject* read_object(TBufferFile& buf, const std::string& name, TClass* cl) {
  const std::string cn = cl->GetName();
  if (cn == "Belle2::EventMetaData") {
    auto* m = new EventMetaData();
    UInt_t u; Int_t i; ULong64_t t; std::string s; Double_t w;
    buf.ReadUInt(u); m->setEvent(u); buf.ReadInt(i); m->setRun(i); buf.ReadInt(i); m->setSubrun(i);
    buf.ReadInt(i); m->setExperiment(i); buf.ReadInt(i); m->setProduction(i); buf.ReadULong64(t); m->setTime(t);
    buf.ReadStdString(&s); m->setParentLfn(s); buf.ReadDouble(w); m->setGeneratedWeight(w);
    buf.ReadUInt(u); m->setErrorFlag(u);
    return m;
  }
  if (cn == "Belle2::BackgroundInfo") {
    auto* b = new BackgroundInfo();
    Int_t i; std::string s;
    buf.ReadInt(i); b->setMethod(BackgroundInfo::EMethod(i)); buf.ReadStdString(&s); b->setExtensionName(s);
    return b;
  }
  fatal("the stand-in cannot restore " + name + " of class " + cn);
  return nullptr;
}
inline void write_array(TBufferFile& buf, const std::string& name, TClonesArray* arr, TClass* cl) {
  if (std::string(cl->GetName()) != "Belle2::PXDDigit") fatal("the stand-in cannot stream array " + name);
  buf.WriteInt(arr->GetEntriesFast());
  for (int i = 0; i < arr->GetEntriesFast(); ++i) {
    auto* d = static_cast<PXDDigit*>(arr->At(i));
    buf.WriteUShort(d->getSensorID().getID()); buf.WriteUShort(d->getUCellID());
    buf.WriteUShort(d->getVCellID()); buf.WriteUShort(d->getCharge());
  }
}
inline TClonesArray* read_array(TBufferFile& buf, TClass* cl) {
  auto* arr = new TClonesArray(cl);
  Int_t n = 0;
  buf.ReadInt(n);
  for (int i = 0; i < n; ++i) {
    UShort_t id, u, v, q;
    buf.ReadUShort(id); buf.ReadUShort(u); buf.ReadUShort(v); buf.ReadUShort(q);
    new ((*arr)[i]) PXDDigit(VxdID(id), u, v, q);
  }
  return arr;
}
inline long stream_data_store(bool addPersistentDurability, bool streamTransientObjects) {
  TBufferFile buf(TBuffer::kWrite);
  for (int d = 0; d < (addPersistentDurability ? 2 : 1); ++d) {
    for (auto& it : DataStore::Instance().getStoreEntryMap(DataStore::EDurability(d))) {
      StoreEntry& entry = it.second;
      if (!streamTransientObjects && entry.dontWriteOut) continue;
      buf.WriteChar(1);
      buf.WriteStdString(&it.first);
      buf.WriteInt(d);
      buf.WriteBool(entry.isArray);
      buf.WriteBool(entry.dontWriteOut);
      buf.WriteBool(entry.ptr == nullptr);
      if (entry.isArray) write_array(buf, it.first, static_cast<TClonesArray*>(entry.object), entry.objClass);
      else write_object(buf, it.first, entry.object, entry.objClass);
    }
  }
  buf.WriteChar(0);
  streamed().assign(buf.Buffer(), buf.Length());
  return buf.Length();
}
inline void copy_streamed(unsigned char* out, long n) { std::copy(streamed().data(), streamed().data() + n, out); }

// DataStoreStreamer::restoreDataStore: each received object replaces the entry's object (createObject with
// replace=true); an entry whose pointer was null is invalidated. Registration is closed in the receiving
// processes (they were forked after initialize), so an unknown entry is an error, as basf2's B2ASSERT.
inline int restore_data_store(const unsigned char* data, long n) {
  TBufferFile buf(TBuffer::kRead, n, const_cast<unsigned char*>(data), kFALSE);
  int restored = 0;
  while (true) {
    Char_t more = 0;
    buf.ReadChar(more);
    if (!more) break;
    std::string name;
    buf.ReadStdString(&name);
    Int_t d = 0;
    Bool_t isArray = false, dontWriteOut = false, isNull = false;
    buf.ReadInt(d); buf.ReadBool(isArray); buf.ReadBool(dontWriteOut); buf.ReadBool(isNull);
    auto& map = DataStore::Instance().getStoreEntryMap(DataStore::EDurability(d));
    auto it = map.find(name);
    if (it == map.end() || it->second.isArray != isArray)
      fatal("Can not find a data store entry with the name " + name + ". Did you maybe forget to register it?");
    StoreEntry& entry = it->second;
    TObject* obj = isArray ? read_array(buf, entry.objClass) : read_object(buf, name, entry.objClass);
    if (isNull) { delete obj; if (entry.ptr) entry.invalidate(); continue; }
    delete entry.object;
    entry.object = obj;
    entry.ptr = entry.object;
    ++restored;
  }
  return restored;
}

// A C++ call that keeps the GIL for `seconds`, as a Geant4 event does inside basf2 (boost.python holds the GIL
// while a module runs, framework/pybasf2/src/Framework.cc); cppyy does not release the GIL around calls.
inline void hold_gil(double seconds) {
  timespec end, now;
  clock_gettime(CLOCK_MONOTONIC, &end);
  long ns = end.tv_nsec + (long)(seconds * 1e9);
  end.tv_sec += ns / 1000000000L; end.tv_nsec = ns % 1000000000L;
  while (true) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > end.tv_sec || (now.tv_sec == end.tv_sec && now.tv_nsec >= end.tv_nsec)) break;
    timespec step = {0, 1000000L};  // 1 ms steps: the loop stays in C++, so the GIL is never given up
    nanosleep(&step, nullptr);
  }
}
} }
"""
if not hasattr(ROOT.Belle2.standin, "stream_data_store"):
    assert ROOT.gInterpreter.Declare(_PROCESSING_CODE), "the stand-in's streaming code did not compile"


def stream_data_store(add_persistent: bool = True, stream_transient: bool = True) -> bytes:
    """The data store as TxModule sends it (``streamDataStore(true, true)``): bytes of a ROOT TBufferFile."""
    n = int(ROOT.Belle2.standin.stream_data_store(add_persistent, stream_transient))
    out = np.empty(max(n, 1), np.uint8)
    ROOT.Belle2.standin.copy_streamed(out, n)
    return out[:n].tobytes()


def restore_data_store(data: bytes) -> int:
    """RxModule's side: put the streamed entries into this process's data store; returns how many were valid."""
    buf = np.frombuffer(data, np.uint8).copy()
    return int(ROOT.Belle2.standin.restore_data_store(buf, len(buf)))


def _downcast(obj, class_name: str):
    """PyROOT hands basf2's TObject* returns over as their dynamic class (compiled dictionaries carry the type
    information); objects of classes interpreted here are not downcast by themselves, so the stand-in does it."""
    return ROOT.bind_object(ROOT.addressof(obj), class_name) if obj else obj


_plain_obj = Belle2.PyStoreObj.obj


def _store_obj(self):
    return _downcast(_plain_obj(self), self.getClassName())


def _store_obj_getattr(self, name):
    """basf2 lets a PyStoreObj stand for its object (``bkginfo.getExtensionName()``), as done here."""
    if name.startswith("__"):
        raise AttributeError(name)
    obj = self.obj()
    if not obj:
        raise AttributeError(f"PyStoreObj {self.getName()!r} is not valid; cannot get {name!r}")
    return getattr(obj, name)


Belle2.PyStoreObj.obj = _store_obj
Belle2.PyStoreObj.__getattr__ = _store_obj_getattr


def read_digits(arr) -> np.ndarray:
    """(n, 4) uint16: sensor id, u, v, charge of every digit in a TClonesArray of PXDDigit (none if null)."""
    n = arr.GetEntriesFast() if arr else 0
    out = np.zeros(4 * max(n, 1), np.uint16)
    ROOT.Belle2.standin.read_digits(arr if arr else ROOT.nullptr, out, n)
    return out[: 4 * n].reshape(n, 4)


def store_arrays(durability: int) -> dict[str, np.ndarray]:
    """The valid PXDDigit arrays of one durability map: {name: (n, 4) uint16}."""
    out = {}
    for name, entry in Belle2.DataStore.Instance().getStoreEntryMap(durability):
        valid = ROOT.addressof(entry.ptr) != 0  # not `entry.ptr`: an empty TClonesArray is falsy in Python
        if entry.isArray and valid and entry.objClass.GetName() == "Belle2::PXDDigit":
            out[str(name)] = read_digits(entry.getPtrAsArray())
    return out


def write_background_file(path, digits: np.ndarray, events: int = 4, *, experiment: int = 0) -> None:
    """A background overlay file as RootOutput writes one and BGOverlayInput accepts it (``belle2_files``): each
    event holds ``digits`` ((n, 4): sensor id, u, v, charge), the charge of event e raised by e, so that the
    events differ; FileMetaData of ``experiment``."""
    import belle2_files  # declares FileMetaData; imports this module first

    digits = np.asarray(digits, np.uint16).reshape(-1, 4)
    per_event = [digits + np.array([0, 0, 0, e], np.uint16) for e in range(events)]
    belle2_files.write_basf2_file(path, per_event, experiment=experiment)


class DBAccessorBase:
    """framework/database: a raw-file payload's filename, resolved through pxdbg's payload store under the
    global tags of ``basf2.conditions`` (the stand-in of the conditions database)."""

    def __init__(self, entry_type, name: str, required: bool = True) -> None:
        import basf2

        from pxdbg.shared import payloads

        if int(entry_type) != int(Belle2.DBStoreEntry.c_RawFile):
            raise TypeError(f"the stand-in serves raw-file payloads (DBStoreEntry.c_RawFile) only, got {entry_type}")
        self._filename = ""
        prefix = "PXDBackgroundGenerator_"
        for tag in basf2.conditions.globaltags:
            try:
                self._filename = str(payloads.find(name[len(prefix) :], tag).path)
                break
            except payloads.PayloadError:
                continue
        if not self._filename and required:
            basf2.B2ERROR(f"required payload {name} not found in global tags {basf2.conditions.globaltags}")

    def getFilename(self) -> str:
        return self._filename


Belle2.DBAccessorBase = DBAccessorBase
