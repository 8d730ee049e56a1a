"""A thin stand-in of basf2 for tests (see ../README.md). Not basf2: only what pxdbg touches, with basf2's rules.

The data store and the overlay modules are C++ (``belle2_root``); this file is the Python face: the module
base class, paths, ``process`` with the phases of basf2's framework/core/src/EventProcessor.cc (initialize with
registration allowed and no events after an ERROR there; per event the path, then the invalidation of
event-durability data; terminate in reverse path order), conditions, the random seed and logging.
"""

from __future__ import annotations

import hashlib
import os
import sys

import belle2_root  # noqa: F401 - declares the ROOT.Belle2 classes
import ROOT
from belle2_root import Belle2, read_digits, store_arrays  # noqa: F401 - read_digits: for tests

log_messages: list[tuple[str, str]] = []
_random_seed: object = "basf2-default-seed"
#: levels printed to stderr, as basf2's default log level INFO does (DEBUG is recorded, not printed)
_PRINTED = ("INFO", "WARNING", "ERROR", "FATAL")


class FatalError(RuntimeError):
    pass


def _log(level: str, msg) -> None:
    log_messages.append((level, str(msg)))
    if level in _PRINTED:
        print(f"[{level}] {msg}", file=sys.stderr)


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


class Module:
    def __init__(self) -> None:
        self._name = type(self).__name__
        self.params: dict = {}

    def name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def param(self, key, value=None):
        if isinstance(key, dict):
            self.params.update(key)
        else:
            self.params[key] = value

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
    pass


class _BGOverlayInput(Module):
    """background/modules/BGOverlayInput: reads the PXDDigits of the overlay files into PXDDigits<extension>."""

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
    """Registers PXDDigits (event durability, written out) and writes :data:`SIGNAL_DIGITS` each event."""

    def initialize(self):
        Belle2.PyStoreArray("PXDDigits").registerInDataStore()

    def event(self):
        flat = [int(x) for row in SIGNAL_DIGITS for x in row]
        Belle2.standin.digitize_signal(ROOT.std.vector["unsigned short"](flat))


class _BGOverlayExecutor(Module):
    """background/modules/BGOverlayExecutor: merges PXDDigits<extension> into PXDDigits via DigitBase."""

    def initialize(self):
        self._impl = Belle2.standin.BGOverlayExecutor()
        self._impl.initialize(self.params.get("PXDDigitsName", ""))

    def event(self):
        self._impl.event()


class _Generic(Module):
    pass


_BUILTIN = {
    "EventInfoSetter": _EventInfoSetter,
    "BGOverlayInput": _BGOverlayInput,
    "PXDDigitizer": _PXDDigitizer,
    "BGOverlayExecutor": _BGOverlayExecutor,
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


#: per event, the valid PXDDigit arrays of event durability after the path ran: {name: (n, 4) uint16}
processed_events: list[dict] = []
#: after initialize: {"event"|"persistent": {name: written out (bool)}} for every registered entry
registered: dict[str, dict[str, bool]] = {}
#: at the end of the run: the valid PXDDigit arrays of persistent durability
persistent_arrays: dict = {}


def _call(module: Module, phase: str) -> None:
    try:
        getattr(module, phase)()
    finally:
        _drain_cpp_log()


def process(path: Path, max_event: int = 0) -> None:
    DataStore = Belle2.DataStore
    store = DataStore.Instance()
    store.reset()
    processed_events.clear()
    registered.clear()
    persistent_arrays.clear()

    # basf2 seeds ROOT's gRandom from its random seed
    ROOT.gRandom.SetSeed(int.from_bytes(hashlib.sha256(str(_random_seed).encode()).digest()[:4], "big"))
    n = 1
    for m in path.modules():
        if m.name() == "EventInfoSetter":
            n = sum(m.params.get("evtNumList", [1]))
    max_event = max_event or int(os.environ.get("BASF2_STANDIN_MAX_EVENTS", "0"))  # like `basf2 -n N`
    if max_event:
        n = min(n, max_event)
    modules = path.modules()
    errors_before = sum(level in ("ERROR", "FATAL") for level, _ in log_messages)
    store.setInitializeActive(True)
    for m in modules:
        _call(m, "initialize")
    errors = sum(level in ("ERROR", "FATAL") for level, _ in log_messages) - errors_before
    if errors:  # framework/core/src/EventProcessor.cc: no event is processed after an ERROR in initialize
        B2FATAL(f"{errors} ERROR(S) occurred! The processing of events will not be started.")
    store.setInitializeActive(False)
    for durability, key in ((DataStore.c_Event, "event"), (DataStore.c_Persistent, "persistent")):
        registered[key] = {str(k): not bool(v.dontWriteOut) for k, v in store.getStoreEntryMap(durability)}
    for m in modules:
        _call(m, "beginRun")
    for _ in range(n):
        for m in modules:
            _call(m, "event")
        processed_events.append(store_arrays(DataStore.c_Event))
        store.invalidateData(DataStore.c_Event)
    for m in modules:
        _call(m, "endRun")
    for m in reversed(modules):  # EventProcessor::processTerminate goes through the path backwards
        _call(m, "terminate")
    persistent_arrays.update(store_arrays(DataStore.c_Persistent))
    B2INFO(f"processed {n} events")
