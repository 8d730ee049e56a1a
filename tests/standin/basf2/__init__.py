"""A thin stand-in of basf2 for tests (see ../README.md). Not basf2: only what pxdbg touches."""

from __future__ import annotations

import os
import sys

import belle2_root  # noqa: F401 - declares the ROOT classes and attaches the data-store stand-ins
from belle2_root import STORE, BackgroundInfo, Belle2, read_digits

log_messages: list[tuple[str, str]] = []
_random_seed: object = "basf2-default-seed"


class FatalError(RuntimeError):
    pass


def _log(level: str, msg) -> None:
    log_messages.append((level, str(msg)))
    print(f"[{level}] {msg}", file=sys.stderr)


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
    """Stores BackgroundInfo and, each event, 'sampled' digits in PXDDigits_beamBG (to be replaced)."""

    def initialize(self):
        STORE["BackgroundInfo"] = BackgroundInfo(self.params.get("extensionName", "_beamBG"))
        Belle2.PyStoreArray("PXDDigits").registerInDataStore("PXDDigits" + STORE["BackgroundInfo"].getExtensionName())

    def event(self):
        import ROOT

        arr = STORE["PXDDigits" + STORE["BackgroundInfo"].getExtensionName()]
        arr.Clear("C")
        for i in range(3):
            ROOT.standin.append_digit(arr, 8480, 1, 100 + i, 200)


class _BGOverlayExecutor(Module):
    """Merges the background digits into PXDDigits: same pixel, charges add; otherwise appended."""

    def initialize(self):
        Belle2.PyStoreArray("PXDDigits").registerInDataStore("PXDDigits")

    def event(self):
        import ROOT

        ext = STORE["BackgroundInfo"].getExtensionName()
        signal, background = STORE["PXDDigits"], STORE["PXDDigits" + ext]
        index = {tuple(d[:3]): i for i, d in enumerate(read_digits(signal).tolist())}
        for sid, u, v, c in read_digits(background).tolist():
            i = index.get((sid, u, v))
            if i is None:
                ROOT.standin.append_digit(signal, sid, u, v, c)
            else:
                d = ROOT.bind_object(ROOT.addressof(signal.At(i)), Belle2.PXDDigit)
                d.setCharge(d.getCharge() + c)


class _Generic(Module):
    pass


_BUILTIN = {"EventInfoSetter": _EventInfoSetter, "BGOverlayInput": _BGOverlayInput,
            "BGOverlayExecutor": _BGOverlayExecutor}


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


#: per event, the content of every PXDDigits* collection after the path ran: {name: (n, 4) uint16}
processed_events: list[dict] = []


def process(path: Path, max_event: int = 0) -> None:
    STORE.clear()
    processed_events.clear()
    n = 1
    for m in path.modules():
        if m.name() == "EventInfoSetter":
            n = sum(m.params.get("evtNumList", [1]))
    max_event = max_event or int(os.environ.get("BASF2_STANDIN_MAX_EVENTS", "0"))  # like `basf2 -n N`
    if max_event:
        n = min(n, max_event)
    modules = path.modules()
    for m in modules:
        m.initialize()
    for m in modules:
        m.beginRun()
    for _ in range(n):
        for obj in STORE.values():  # event durability: arrays start every event empty
            if hasattr(obj, "Clear"):
                obj.Clear("C")
        for m in modules:
            m.event()
        processed_events.append({k: read_digits(v) for k, v in STORE.items() if k.startswith("PXDDigits")})
    for m in modules:
        m.endRun()
    for m in modules:
        m.terminate()
    B2INFO(f"processed {n} events")
