"""A thin stand-in of basf2 for tests (see ../README.md). Not basf2: only what pxdbg touches, with basf2's rules.

The data store and the overlay modules are C++ (``belle2_root``); this file is the Python face: the module base
class with its property flags, paths, conditions, the random seed, logging, and ``process`` with basf2's two
processing models:

* ``-p 0`` (the default): framework/core/src/EventProcessor.cc, every module in this process;
* ``-p N`` (``set_nprocesses(N)`` or ``BASF2_STANDIN_NPROCESSES=N``, as ``basf2 -p N``):
  framework/pcore/src/pEventProcessor.cc, the path split by ``c_ParallelProcessingCertified``, every module
  initialized here, then one forked input process, N forked worker processes and this process as the output
  process, events travelling between them through bounded queues as ROOT-streamed data store entries.

Each rule names the basf2 file it follows; ../README.md has the table and what is simplified.

One file, past 500 lines, on purpose: ``import basf2`` is one module in basf2 too, and its processing model (fork,
queues, per-process logging) is one piece of logic.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback

import belle2_root  # noqa: F401 - declares the ROOT.Belle2 classes
import ROOT
from belle2_root import Belle2, read_digits, restore_data_store, store_arrays, stream_data_store  # noqa: F401

#: (level, message) of every message this process logged during the current ``process()`` and before
log_messages: list[tuple[str, str]] = []
#: framework/logging/LogSystem: messages per level in this process (each forked process counts its own)
message_counters: dict[str, int] = {}
_random_seed: object = "basf2-default-seed"
#: levels printed to stderr, as basf2's default log level INFO does (DEBUG is recorded, not printed)
_PRINTED = ("INFO", "WARNING", "ERROR", "FATAL")


class FatalError(RuntimeError):
    pass


class _Logging:
    """``basf2.logging`` (framework/logging, LogPythonInterface): ``add_file`` sends every message of every
    process to a file. Each message is appended at once (O_APPEND), so the forked processes, which inherit the
    file list, interleave whole lines, as basf2's processes do in one log file."""

    def __init__(self) -> None:
        self.files: list[str] = []

    def add_file(self, filename, append: bool = False) -> None:
        if not append:
            open(filename, "w").close()
        self.files.append(str(filename))

    def reset(self) -> None:
        self.files.clear()


logging = _Logging()


def log_to_file(filename, append: bool = False) -> None:
    """basf2.log_to_file: reset the log destinations, then log to ``filename`` (the stand-in keeps stderr)."""
    logging.reset()
    logging.add_file(filename, append)


#: which process this is, in ProcHandler's names (framework/pcore/src/ProcHandler.cc, getProcessName):
#: "init" before any fork and with -p 0, then "input", "worker" or "output"
_role = "init"
_parallel = False


def _log(level: str, msg) -> None:
    text = str(msg)
    log_messages.append((level, text))
    message_counters[level] = message_counters.get(level, 0) + 1
    where = f" {{ process: {_role} {os.getpid()} }}" if _parallel else ""
    line = f"[{level}] {text}{where}"
    if level in _PRINTED:
        print(line, file=sys.stderr)
    for name in logging.files:
        with open(name, "a") as f:
            f.write(line + "\n")


def error_summary() -> list[str]:
    """framework/logging/src/LogSystem.cc ``printErrorSummary``: when this process logged warnings or errors,
    a count line and each distinct warning/error, the most severe and most frequent first (empty otherwise).
    Printed at the end of ``process()`` by each process; not itself counted as messages."""
    counts: dict[tuple[str, str], int] = {}
    for level, text in log_messages:
        if level in ("WARNING", "ERROR", "FATAL"):
            counts[(level, text)] = counts.get((level, text), 0) + 1
    if not counts:
        return []
    severity = {"WARNING": 0, "ERROR": 1, "FATAL": 2}
    ordered = sorted(counts.items(), key=lambda item: (-severity[item[0][0]], -item[1]))
    errors, warnings = message_counters.get("ERROR", 0), message_counters.get("WARNING", 0)
    lines = ["=" * 80, f"Error summary: {errors} errors and {warnings} warnings occurred."]
    lines += [f"[{level}] {text}" + (f" (occurred {n} times)" if n > 1 else "") for (level, text), n in ordered]
    return [*lines, "=" * 80]


def _print_error_summary() -> None:
    lines = error_summary()
    for line in lines:
        print(line, file=sys.stderr)
    for name in logging.files:
        with open(name, "a") as f:
            f.writelines(line + "\n" for line in lines)


def _drain_cpp_log() -> None:
    cpp = Belle2.standin.log()
    for level, msg in [(str(p.first), str(p.second)) for p in cpp]:
        _log(level, msg)
    cpp.clear()


def B2DEBUG(level, msg):
    _log("DEBUG", msg)


def B2INFO(msg):
    _log("INFO", msg)


def B2WARNING(msg):
    _log("WARNING", msg)


def B2ERROR(msg):
    _log("ERROR", msg)


def B2FATAL(msg):
    _log("FATAL", msg)
    raise FatalError(str(msg))


def get_random_seed():
    return _random_seed


def set_random_seed(seed) -> None:
    global _random_seed
    _random_seed = seed


def pretty_print_table(rows, widths) -> None:
    for row in rows:
        print("  ".join(str(c) for c in row), file=sys.stderr)


class _Conditions:
    def __init__(self) -> None:
        self.globaltags: list[str] = []

    def append_globaltag(self, tag: str) -> None:
        if tag not in self.globaltags:
            self.globaltags.append(tag)

    def prepend_globaltag(self, tag: str) -> None:
        if tag in self.globaltags:
            self.globaltags.remove(tag)
        self.globaltags.insert(0, tag)


conditions = _Conditions()


class ModulePropFlags(enum.IntFlag):
    """framework/core/include/Module.h ``EModulePropFlags``, with the Python names of framework/core/src/Module.cc
    (``enum_<Module::EModulePropFlags>("ModulePropFlags")``)."""

    INPUT = 1
    OUTPUT = 2
    PARALLELPROCESSINGCERTIFIED = 4
    HISTOGRAMMANAGER = 8
    INTERNALSERIALIZER = 16
    TERMINATEINALLPROCESSES = 32


class Module:
    def __init__(self) -> None:
        self._name = type(self).__name__
        self.params: dict = {}
        self._property_flags = 0  # Module.cc: m_propertyFlags(0)

    def name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def param(self, key, value=None):
        if isinstance(key, dict):
            self.params.update(key)
        else:
            self.params[key] = value

    def set_property_flags(self, flags) -> None:
        """Module.cc ``setPropertyFlags``: replaces the flags (an ORed set of :class:`ModulePropFlags`)."""
        self._property_flags = int(flags)

    def has_properties(self, flags) -> bool:
        """Module.cc ``hasProperties``: true if *all* the given flags are set."""
        flags = int(flags)
        return (flags & getattr(self, "_property_flags", 0)) == flags

    def initialize(self):
        pass

    def beginRun(self):
        pass

    def event(self):
        pass

    def endRun(self):
        pass

    def terminate(self):
        pass


class _EventInfoSetter(Module):
    """framework/modules/core/src/EventInfoSetterModule.cc: numbers the events 1, 2, ... in each (exp, run),
    with ``skipNEvents`` (counted across runs) and ``skipToEvent``, and creates EventMetaData each event.
    ``BASF2_STANDIN_MAX_EVENTS`` and ``BASF2_STANDIN_SKIP_EVENTS`` stand for ``basf2 -n`` and ``--skip-events``
    (Environment's overrides). Not certified: it runs in the input process."""

    def __init__(self) -> None:
        super().__init__()
        self.params = {"expList": [0], "runList": [0], "evtNumList": [1], "skipNEvents": 0, "skipToEvent": []}
        self._production = int(os.environ.get("BELLE2_PRODUCTION", "0"))

    def initialize(self):
        self._meta = Belle2.PyStoreObj("EventMetaData")
        self._meta.registerInDataStore(Belle2.DataStore.c_ErrorIfAlreadyRegistered)
        self._exps = [int(x) for x in self.params["expList"]]
        self._runs = [int(x) for x in self.params["runList"]]
        self._nevts = [int(x) for x in self.params["evtNumList"]]
        self._to_skip = int(self.params["skipNEvents"])
        self._skip_to = [int(x) for x in self.params["skipToEvent"]]
        n_override = int(os.environ.get("BASF2_STANDIN_MAX_EVENTS", "0"))
        if n_override > 0:
            if len(self._nevts) > 1:
                B2ERROR(
                    "The -n/--events, --run, and --experiment options cannot be used when multiple runs are "
                    "specified for EventInfoSetter!"
                )
            self._nevts[0] = n_override
        skip_override = int(os.environ.get("BASF2_STANDIN_SKIP_EVENTS", "0"))
        if skip_override:
            self._to_skip = skip_override
        size = len(self._exps)
        if len(self._runs) != size or len(self._nevts) != size:
            B2ERROR("Parameters are inconsistent. The exp, run and evt lists must have the same number of entries.")
        elif size == 0:
            B2ERROR("There are no events to be processed!")
        else:
            seen = set()
            for exp, run in zip(self._exps, self._runs):
                if (exp, run) in seen:
                    B2ERROR(
                        f"Exp {exp}, run {run} used more than once! Please make sure all experiment/run "
                        "combinations are unique."
                    )
                seen.add((exp, run))
                if exp < 0 or exp > 1023:
                    B2ERROR(f"Experiment {exp} is out of range, should be in [0, 1023]!")
                if run < 0:
                    B2ERROR(f"Run {run} is out of range, should be >= 0!")
        if self._skip_to:
            if len(self._skip_to) != 3:
                B2ERROR("skipToEvent must be a list of three values: experiment, run, event number")
                self._skip_to = []
            if self._to_skip > 0:
                B2ERROR(
                    "You cannot supply a number of events to skip (skipNEvents) and an event to skip to "
                    "(skipToEvent) at the same time, ignoring skipNEvents"
                )
                self._to_skip = 0
        self._evt = 1
        self._col = 0

    def _advance(self) -> bool:
        """advanceEventCounter(), line by line."""
        while True:
            if self._evt > self._nevts[self._col]:
                self._col += 1
                while self._col < len(self._exps) and self._nevts[self._col] == 0:
                    self._col += 1
                if self._col < len(self._exps):
                    self._evt = 1
                else:
                    return False
            if self._skip_to:
                if self._skip_to[0] != self._exps[self._col] or self._skip_to[1] != self._runs[self._col]:
                    self._evt = self._nevts[self._col] + 1
                else:
                    self._evt = self._skip_to[2]
                    self._skip_to = []
            elif self._to_skip != 0:
                nskip = 1
                in_list = self._nevts[self._col]
                if self._evt <= in_list:
                    nskip = in_list - self._evt + 1
                nskip = min(nskip, self._to_skip)
                self._to_skip -= nskip
                self._evt += nskip
            else:
                return True

    def event(self):
        if not self._advance():
            return
        self._meta.create()
        meta = self._meta.obj()
        meta.setProduction(self._production)
        meta.setExperiment(self._exps[self._col])
        meta.setRun(self._runs[self._col])
        meta.setEvent(self._evt)
        meta.setTime(time.time_ns())
        self._evt += 1


class _BGOverlayInput(Module):
    """background/modules/BGOverlayInput: reads the PXDDigits of the overlay files into PXDDigits<extension>.
    BGOverlayInputModule.cc sets no property flags: not certified, it runs in the input process."""

    def initialize(self):
        files = ROOT.std.vector["std::string"]([str(f) for f in self.params.get("inputFileNames", [])])
        self._impl = Belle2.standin.BGOverlayInput()
        self._impl.initialize(files, self.params.get("extensionName", "_beamBG"))

    def event(self):
        self._impl.event()

    def terminate(self):
        self._impl.terminate()


#: The signal digits PXDDigitizer writes each event: (sensor id, u, v, charge) rows. Tests may replace them.
SIGNAL_DIGITS: list[tuple[int, int, int, int]] = [(8480, 10, 20, 30), (18720, 100, 700, 40)]


class _PXDDigitizer(Module):
    """Registers PXDDigits (event durability, written out) and writes :data:`SIGNAL_DIGITS` each event.
    Certified, as pxd/modules/pxdDigitization/src/PXDDigitizerModule.cc."""

    def __init__(self) -> None:
        super().__init__()
        self.set_property_flags(ModulePropFlags.PARALLELPROCESSINGCERTIFIED)

    def initialize(self):
        Belle2.PyStoreArray("PXDDigits").registerInDataStore()

    def event(self):
        flat = [int(x) for row in SIGNAL_DIGITS for x in row]
        Belle2.standin.digitize_signal(ROOT.std.vector["unsigned short"](flat))


class _BGOverlayExecutor(Module):
    """background/modules/BGOverlayExecutor: merges PXDDigits<extension> into PXDDigits via DigitBase.
    Certified (BGOverlayExecutorModule.cc), so it runs in the workers on the entries the input process sent."""

    def __init__(self) -> None:
        super().__init__()
        self.set_property_flags(ModulePropFlags.PARALLELPROCESSINGCERTIFIED)

    def initialize(self):
        self._impl = Belle2.standin.BGOverlayExecutor()
        self._impl.initialize(self.params.get("PXDDigitsName", ""))

    def event(self):
        self._impl.event()


class _FullSim(Module):
    """A stand-in for Geant4 (simulation/modules/fullsim/src/FullSimModule.cc): certified and terminated in
    all processes, like FullSim; ``gil_seconds`` (default 0) is spent per event in one C++ call that keeps
    the GIL, as a C++ module called from basf2's boost.python ``process`` does (framework/pybasf2/src/
    Framework.cc never releases the GIL)."""

    def __init__(self) -> None:
        super().__init__()
        self.set_property_flags(ModulePropFlags.PARALLELPROCESSINGCERTIFIED | ModulePropFlags.TERMINATEINALLPROCESSES)
        self.params = {"gil_seconds": 0.0}

    def event(self):
        seconds = float(self.params["gil_seconds"])
        if seconds > 0:
            Belle2.standin.hold_gil(seconds)


class _Generic(Module):
    pass


_BUILTIN = {
    "EventInfoSetter": _EventInfoSetter,
    "BGOverlayInput": _BGOverlayInput,
    "PXDDigitizer": _PXDDigitizer,
    "BGOverlayExecutor": _BGOverlayExecutor,
    "FullSim": _FullSim,
}


def register_module(name: str, **params) -> Module:
    module = _BUILTIN.get(name, _Generic)()
    module.set_name(name)
    module.param(params)
    return module


class Path:
    def __init__(self) -> None:
        self._modules: list[Module] = []

    def add_module(self, module, **params) -> Module:
        if isinstance(module, str):
            module = register_module(module, **params)
        elif params:
            module.param(params)
        self._modules.append(module)
        return module

    def modules(self) -> list[Module]:
        return list(self._modules)


def create_path() -> Path:
    return Path()


# ---------------------------------------------------------------------------------------------------------------
# Results for tests
# ---------------------------------------------------------------------------------------------------------------


class ProcessedEvent(dict):
    """One event as the output process saw it (the only process with -p 0): ``{name: (n, 4) uint16}`` for each
    valid PXDDigit array of event durability, as :func:`belle2_root.store_arrays`; ``exp``, ``run``, ``event``
    from EventMetaData; ``calls``: ``(role, pid, module name)`` of every ``event()`` call that made this event,
    in order, across the processes it passed through (the first event's EventInfoSetter call is made by the
    "init" process while it initializes, as EventProcessor::processInitialize does)."""

    exp: int
    run: int
    event: int
    calls: list[tuple[str, int, str]]

    @property
    def meta(self) -> tuple[int, int, int]:
        return (self.exp, self.run, self.event)


#: per event, in the order the output process saw them
processed_events: list[ProcessedEvent] = []
#: after initialize: {"event"|"persistent": {name: written out (bool)}} for every registered entry
registered: dict[str, dict[str, bool]] = {}
#: at the end of the run: the valid PXDDigit arrays of persistent durability (of the output process)
persistent_arrays: dict = {}
#: one report per process of the last ``process()``, this one last: {"role", "pid", "calls": [(phase, module)],
#: "log": [(level, message)], "counters": {level: n}}; phases: initialize, beginRun, event, endRun, terminate
process_reports: list[dict] = []

_nprocesses = 0
_calls: list[tuple[str, str]] = []  # (phase, module name) of this process
_event_calls: list[tuple[str, int, str]] = []  # event() calls that made the current event


def set_nprocesses(n: int) -> None:
    """framework/pybasf2/src/Framework.cc ``setNumberProcesses``: 0 = single process, N > 0 = N workers."""
    global _nprocesses
    if int(n) < 0:
        raise ValueError("the number of processes must be >= 0")
    _nprocesses = int(n)


def get_nprocesses() -> int:
    """``BASF2_STANDIN_NPROCESSES`` wins, as the command line's ``-p`` overrides the steering file in
    framework/core/src/Environment.cc (``getNumberProcesses``)."""
    override = os.environ.get("BASF2_STANDIN_NPROCESSES")
    return int(override) if override not in (None, "") else _nprocesses


def _call(module: Module, phase: str) -> None:
    _calls.append((phase, module.name()))
    if phase == "event" and not module.has_properties(ModulePropFlags.INTERNALSERIALIZER):
        _event_calls.append((_role, os.getpid(), module.name()))
    try:
        getattr(module, phase)()
    finally:
        _drain_cpp_log()


def analyze_path(path: Path) -> tuple[list[Module], list[Module], list[Module]]:
    """pEventProcessor::analyzePath: modules go to the input path until the first certified module; the
    certified modules from there form the main path; everything after the next uncertified module is the
    output path (even certified ones). Returns (input, main, output)."""
    inpath: list[Module] = []
    mainpath: list[Module] = []
    outpath: list[Module] = []
    stage = 0
    for m in path.modules():
        certified = m.has_properties(ModulePropFlags.PARALLELPROCESSINGCERTIFIED)
        if (stage == 0 and certified) or (stage == 1 and not certified):
            stage += 1
        (inpath, mainpath, outpath)[stage].append(m)
    return inpath, mainpath, outpath


class _EventProcessor:
    """framework/core/src/EventProcessor.cc for one process: processInitialize (the first module that provides
    EventMetaData is the master, and its event() runs right away), processEvent (beginRun/endRun when the
    master's EventMetaData changes experiment or run), processCore, processTerminate."""

    def __init__(self) -> None:
        self.master: Module | None = None
        self.meta = Belle2.PyStoreObj("EventMetaData")
        self.previous: tuple[int, int, int] | None = None  # None: "end of data", the invalid start state
        self.in_run = False
        self.modules: list[Module] = []
        self.record_events = False

    def initialize(self, modules: list[Module]) -> None:
        store = Belle2.DataStore.Instance()
        for m in modules:
            _call(m, "initialize")
            meta_entry = store.getStoreEntryMap(Belle2.DataStore.c_Event)
            if self.master is None and any(str(k) == "EventMetaData" for k, _ in meta_entry):
                self.master = m
                _call(m, "event")  # processInitialize(..., setEventInfo=true)

    def _meta_tuple(self) -> tuple[int, int, int]:
        meta = self.meta.obj()
        return (int(meta.getExperiment()), int(meta.getRun()), int(meta.getEvent()))

    def begin_run(self) -> None:
        self.in_run = True
        for m in self.modules:
            _call(m, "beginRun")

    def end_run(self) -> None:
        """processEndRun: the modules see the previous event's EventMetaData while they end its run."""
        if not self.in_run:
            return
        self.in_run = False
        now = self._meta_tuple() if self.meta.isValid() else None
        meta = self.meta.obj()
        if self.previous is not None and meta:
            meta.setExperiment(self.previous[0])
            meta.setRun(self.previous[1])
            meta.setEvent(self.previous[2])
        for m in self.modules:
            _call(m, "endRun")
        if now is not None and meta:
            meta.setExperiment(now[0])
            meta.setRun(now[1])
            meta.setEvent(now[2])

    def process_event(self, skip_master: bool) -> bool:
        """processEvent; returns true at the end of data."""
        for m in self.modules:
            if not (skip_master and m is self.master):
                _call(m, "event")
            valid = self.meta.isValid()
            if (valid and self.meta.obj().isEndOfData()) or (m is self.master and not valid):
                if m is not self.master:
                    B2WARNING(
                        f"Event processing stopped by module '{m.name()}', which is not in control of event "
                        "processing (does not provide EventMetaData)"
                    )
                return True
            if m is self.master:
                now = self._meta_tuple()
                # RandomNumbers::initializeEvent: the event's random state follows from the seed and the
                # event's numbers (framework/core/src/RandomGenerator.cc, c_eventDependent)
                key = f"{_random_seed}/{now[0]}/{now[1]}/{now[2]}".encode()
                ROOT.gRandom.SetSeed(int.from_bytes(hashlib.sha256(key).digest()[:4], "big"))
                if self.previous is None or now[:2] != self.previous[:2]:
                    self.end_run()
                    self.begin_run()
                self.previous = now
            elif not skip_master and valid and self.previous is not None and self._meta_tuple() != self.previous:
                B2FATAL(f"Two modules setting EventMetaData were discovered: {self.master.name()} and {m.name()}")
        return False

    def core(self, modules: list[Module], max_event: int, is_input: bool) -> int:
        """processCore; returns the number of events processed."""
        store = Belle2.DataStore.Instance()
        store.setInitializeActive(False)
        self.modules = modules
        self.previous = None
        count = 0
        current = 0
        end = False
        while not end:
            end = self.process_event(is_input and current == 0)
            if not end:
                count += 1
                if self.record_events:
                    _record_event()
            store.invalidateData(Belle2.DataStore.c_Event)
            _event_calls.clear()
            current += 1
            if max_event > 0 and current >= max_event:
                end = True
        self.meta.create()  # "End last run"
        self.end_run()
        return count

    @staticmethod
    def terminate(modules: list[Module]) -> None:
        for m in reversed(modules):  # processTerminate goes through the path backwards
            _call(m, "terminate")


def _record_event() -> None:
    event = ProcessedEvent(store_arrays(Belle2.DataStore.c_Event))
    meta = Belle2.PyStoreObj("EventMetaData")
    event.exp, event.run, event.event = (
        (int(meta.obj().getExperiment()), int(meta.obj().getRun()), int(meta.obj().getEvent()))
        if meta.isValid()
        else (-1, -1, -1)
    )
    event.calls = list(_event_calls)
    processed_events.append(event)


def _max_event(max_event: int) -> int:
    n = int(os.environ.get("BASF2_STANDIN_MAX_EVENTS", "0"))  # like `basf2 -n N` (getNumberEventsOverride)
    if n > 0 and (max_event == 0 or max_event > n):
        return n
    return max_event


def _begin(path: Path) -> None:
    global _role, _parallel
    _role, _parallel = "init", False
    Belle2.DataStore.Instance().reset()
    for collection in (processed_events, registered, persistent_arrays, process_reports, _calls, _event_calls):
        collection.clear()
    message_counters.clear()
    # basf2 seeds ROOT's gRandom from its random seed
    ROOT.gRandom.SetSeed(int.from_bytes(hashlib.sha256(str(_random_seed).encode()).digest()[:4], "big"))


def _initialize(processor: _EventProcessor, modules: list[Module]) -> None:
    store = Belle2.DataStore.Instance()
    errors_before = sum(level in ("ERROR", "FATAL") for level, _ in log_messages)
    store.setInitializeActive(True)
    processor.initialize(modules)
    if processor.master is None:
        B2ERROR(
            "There is no module that provides event and run numbers (EventMetaData). You must add either the "
            "EventInfoSetter or an input module (e.g. RootInput) to the beginning of your path."
        )
    errors = sum(level in ("ERROR", "FATAL") for level, _ in log_messages) - errors_before
    if errors:  # framework/core/src/EventProcessor.cc: no event is processed after an ERROR in initialize
        B2FATAL(f"{errors} ERROR(S) occurred! The processing of events will not be started.")
    store.setInitializeActive(False)
    for durability, key in ((Belle2.DataStore.c_Event, "event"), (Belle2.DataStore.c_Persistent, "persistent")):
        registered[key] = {str(k): not bool(v.dontWriteOut) for k, v in store.getStoreEntryMap(durability)}


def _own_report() -> dict:
    return {
        "role": _role,
        "pid": os.getpid(),
        "calls": list(_calls),
        "log": list(log_messages),
        "counters": dict(message_counters),
    }


def process(path: Path, max_event: int = 0) -> None:
    """basf2.process(path, max_event=0) (framework/scripts/basf2/core.py): -p 0 runs EventProcessor, -p N
    pEventProcessor (framework/pybasf2/src/Framework.cc, ``Framework::process``)."""
    _begin(path)
    max_event = _max_event(max_event)
    if get_nprocesses() > 0:
        inpath, mainpath, outpath = analyze_path(path)
        if mainpath:
            _process_parallel(path, inpath, mainpath, outpath, max_event)
            return
        B2WARNING(
            "Cannot run any modules in parallel (no c_ParallelProcessingCertified flag), falling back to "
            "single-core mode."
        )
    processor = _EventProcessor()
    processor.record_events = True
    modules = path.modules()
    _initialize(processor, modules)
    n = processor.core(modules, max_event, is_input=True)
    processor.terminate(modules)
    persistent_arrays.update(store_arrays(Belle2.DataStore.c_Persistent))
    process_reports.append(_own_report())
    B2INFO(f"processed {n} events")
    _print_error_summary()


# ---------------------------------------------------------------------------------------------------------------
# -p N: framework/pcore/src/pEventProcessor.cc, ProcHandler.cc, TxModule.cc, RxModule.cc, DataStoreStreamer.cc
# ---------------------------------------------------------------------------------------------------------------

#: events waiting between two processes, as RingBuffer's fixed size bounds them
RING_CAPACITY = 16
#: seconds the output process waits without any message from the other processes before it stops the run
#: (basf2 waits for ever; a test must not)
NO_PROGRESS_TIMEOUT = float(os.environ.get("BASF2_STANDIN_TIMEOUT", "300"))
#: seconds the output process waits for its children to exit after the last event, then kills them
EXIT_TIMEOUT = 30.0


class _Children:
    """The forked processes as ProcHandler tracks them, and what pEventProcessor does when one dies."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.status: dict[int, int] = {}

    def poll(self) -> None:
        """The SIGCHLD handler's work, polled: a child killed by a signal or exiting non-zero stops the run."""
        for pid in self.pids:
            if pid in self.status:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.status[pid] = status
                if os.WIFSIGNALED(status):
                    self.kill_all()
                    B2FATAL(f"Execution stopped, sub-process with PID {pid} killed by signal.")
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
                    self.kill_all()
                    B2FATAL(
                        "Execution stopped, sub-process exited with non-zero exit status. Please check other "
                        "log messages for details."
                    )

    def kill_all(self) -> None:
        for pid in self.pids:
            if pid not in self.status:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.status[pid] = os.waitpid(pid, 0)[1]

    def wait(self, timeout: float) -> None:
        """waitForInputProcesses/waitForEventProcesses, bounded: stragglers are killed."""
        deadline = time.monotonic() + timeout
        while any(pid not in self.status for pid in self.pids):
            self.poll()
            if time.monotonic() > deadline:
                stragglers = [pid for pid in self.pids if pid not in self.status]
                self.kill_all()
                B2FATAL(f"sub-processes {stragglers} did not exit within {timeout:.0f} s and were killed")
            time.sleep(0.01)


class _RingCounters:
    """What RingBuffer's shared header knows about its readers (framework/pcore/src/RingBuffer.cc): events put,
    events taken, and readers busy with a taken event (``nbusy``), for ``allRxWaiting``."""

    def __init__(self, context) -> None:
        self._values = context.Array("q", 3)  # sent, taken, busy

    def sent(self) -> None:
        with self._values.get_lock():
            self._values[0] += 1

    def taken(self) -> None:
        with self._values.get_lock():
            self._values[1] += 1
            self._values[2] += 1

    def done(self) -> None:
        with self._values.get_lock():
            self._values[2] -= 1

    def all_rx_waiting(self) -> bool:
        """RingBuffer::allRxWaiting: the buffer is empty and no reader is busy."""
        with self._values.get_lock():
            return self._values[0] == self._values[1] and self._values[2] == 0


class _TxModule(Module):
    """TxModule.cc: at the end of a path, stream the data store (``streamDataStore(true, true)``: transient
    entries and persistent durability included) into the ring buffer; terminate() detaches, which the
    stand-in says with one end message per reader. In the input process, beginRun() waits until every event
    of the previous run has been taken and processed, "that way the parallel processes will never see runs
    out of order"."""

    def __init__(self, ring, readers: int, counters: _RingCounters | None = None) -> None:
        super().__init__()
        self.set_name("Tx")
        self.set_property_flags(ModulePropFlags.INPUT | ModulePropFlags.INTERNALSERIALIZER)
        self._ring = ring
        self._readers = readers
        self._counters = counters

    def beginRun(self):
        if self._counters is None or _role != "input":
            return
        deadline = time.monotonic() + NO_PROGRESS_TIMEOUT
        while not self._counters.all_rx_waiting():
            if time.monotonic() > deadline:
                B2FATAL(f"the workers did not finish the previous run within {NO_PROGRESS_TIMEOUT:.0f} s")
            time.sleep(0.0005)  # TxModule: usleep(500)

    def event(self):
        header = json.dumps({"calls": _event_calls}).encode()
        if self._counters is not None:
            self._counters.sent()
        self._ring.put(("event", header, stream_data_store(True, True)), timeout=NO_PROGRESS_TIMEOUT)

    def terminate(self):
        for _ in range(self._readers):
            self._ring.put(("end", b"", b""), timeout=NO_PROGRESS_TIMEOUT)


class _RxModule(Module):
    """RxModule.cc: the master of its process's path; each event() takes one event from the ring buffer and
    restores it into the data store. When every writer has detached, EventMetaData becomes "end of data"
    (DataStoreStreamer::restoreDataStore's MSG_TERMINATE)."""

    def __init__(
        self, ring, writers: int, children: _Children | None = None, counters: _RingCounters | None = None
    ) -> None:
        super().__init__()
        self.set_name("Rx")
        self.set_property_flags(ModulePropFlags.INPUT | ModulePropFlags.INTERNALSERIALIZER)
        self._ring = ring
        self._writers = writers
        self._ended = 0
        self._children = children
        self._counters = counters
        self._busy = False

    def event(self):
        if self._busy:  # back for the next event: this reader no longer works on the last one
            self._counters.done()
            self._busy = False
        deadline = time.monotonic() + NO_PROGRESS_TIMEOUT
        while True:
            if self._children is not None:
                self._children.poll()
            try:
                kind, header, data = self._ring.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    if self._children is not None:
                        self._children.kill_all()
                    B2FATAL(f"no event arrived for {NO_PROGRESS_TIMEOUT:.0f} s; stopping")
                continue
            if kind == "end":
                self._ended += 1
                if self._ended < self._writers:
                    continue
                meta = Belle2.PyStoreObj("EventMetaData")
                meta.create(True)
                meta.obj().setEndOfData()
                return
            if self._counters is not None:
                self._counters.taken()
                self._busy = True
            restore_data_store(data)
            _event_calls[:] = [tuple(c) for c in json.loads(header)["calls"]]
            return


def _die_with_parent(parent: int) -> None:
    """ProcHandler::startProc: prctl(PR_SET_PDEATHSIG, SIGHUP), so no child outlives its parent."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGHUP), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _fork(role: str, body, reports, queues) -> int:
    """ProcHandler::startProc: flush, fork; the child (Python's at-fork hooks ran: PyOS_AfterFork) runs
    ``body`` and ends as pEventProcessor's children do: its report, a flush, then exit without returning into
    the caller (basf2's children call exit(0) at the end of pEventProcessor::process)."""
    global _role
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        B2INFO(f"ProcHandler: {role} process forked. pid = {pid}")
        return pid
    code = 1
    try:
        _die_with_parent(parent)
        _role = role
        log_messages.clear()
        message_counters.clear()
        _calls.clear()
        body()
        B2INFO(f"{role} process finished.")
        _print_error_summary()
        reports.put(_own_report(), timeout=EXIT_TIMEOUT)
        code = 0
    except BaseException:  # nothing may return from a forked child into the caller's stack
        traceback.print_exc()
        try:
            _log("ERROR", f"{role} process failed: {traceback.format_exc(limit=3)}")
            reports.put(_own_report(), timeout=1)
        except BaseException:  # already failing; the exit code tells the parent
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            for q in queues:  # a queue's feeder thread must hand over what it holds before the process ends
                q.close()
                q.join_thread()
        finally:
            os._exit(code)


def _process_parallel(path: Path, inpath, mainpath, outpath, max_event: int) -> None:
    global _role, _parallel
    nproc = get_nprocesses()
    modules = path.modules()
    for name, part in (("Input", inpath), ("Main", mainpath), ("Output", outpath)):
        if part:
            B2INFO(f"{name} Path [{' -> '.join(m.name() for m in part)}]")
    processor = _EventProcessor()
    _initialize(processor, modules)  # every module, in this process, before any fork
    terminate_globally = [m for m in modules if m.has_properties(ModulePropFlags.TERMINATEINALLPROCESSES)]

    def own_and_global(local: list[Module]) -> list[Module]:
        """prependModulesIfNotPresent(&localModules, terminateGlobally)."""
        return [m for m in terminate_globally if m not in local] + local

    context = multiprocessing.get_context("fork")
    ring_in = context.Queue(RING_CAPACITY)
    ring_out = context.Queue(RING_CAPACITY)
    reports = context.Queue()
    queues = (ring_in, ring_out, reports)
    counters = _RingCounters(context)
    children = _Children()
    _parallel = True
    master = processor.master
    try:
        input_modules = [*inpath, _TxModule(ring_in, nproc, counters)]

        def run_input() -> None:
            worker = _EventProcessor()
            worker.master = master
            worker.core(input_modules, max_event, is_input=True)
            worker.terminate(own_and_global(input_modules))

        children.pids.append(_fork("input", run_input, reports, queues))
        # "This is not the input process, clean up datastore to not contain the first event"
        Belle2.DataStore.Instance().invalidateData(Belle2.DataStore.c_Event)
        _event_calls.clear()
        for _ in range(nproc):
            rx = _RxModule(ring_in, 1, counters=counters)
            main_modules = [rx, *mainpath, _TxModule(ring_out, 1)]

            def run_worker(rx=rx, main_modules=main_modules) -> None:
                worker = _EventProcessor()
                worker.master = rx
                worker.core(main_modules, max_event, is_input=False)
                worker.terminate(own_and_global(main_modules))

            children.pids.append(_fork("worker", run_worker, reports, queues))
        _role = "output"
        rx = _RxModule(ring_out, nproc, children)
        output_modules = [rx, *outpath]
        output = _EventProcessor()
        output.master = rx
        output.record_events = True
        n = output.core(output_modules, 0, is_input=False)
        output.terminate(own_and_global(output_modules))
        B2INFO("output process finished.")
        own = _own_report()
        deadline = time.monotonic() + EXIT_TIMEOUT
        while len(process_reports) < 1 + nproc and time.monotonic() < deadline:
            children.poll()
            try:
                process_reports.append(reports.get(timeout=0.05))
            except queue.Empty:
                continue
        children.wait(max(1.0, deadline - time.monotonic()))
        process_reports.append(own)
        B2INFO("All processes completed")
    finally:
        children.kill_all()
        for q in queues:
            q.close()
            q.cancel_join_thread()
        _parallel = False
    persistent_arrays.update(store_arrays(Belle2.DataStore.c_Persistent))
    B2INFO(f"processed {n} events")
    _print_error_summary()
