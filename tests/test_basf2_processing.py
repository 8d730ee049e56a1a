"""basf2's processing model in the stand-in (tests/standin/README.md names the basf2 file of each rule): the
path split, initialize before the fork, which process runs which module, terminate and beginRun/endRun per
process, EventInfoSetter's numbering, what travels between processes, the GIL, dying children and orphans.
Plain Python test modules only; no pxdbg.

Past 500 lines: one test per rule of basf2's processing model, each naming its basf2 source file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

STANDIN = Path(__file__).resolve().parent / "standin"
SAMPLED = np.array([[8480, 1, 100, 200], [8480, 1, 101, 7]], np.uint16)


@pytest.fixture
def basf2(monkeypatch):
    pytest.importorskip("ROOT", reason="the basf2 tests need PyPI's 'root' package (installed by make test)")
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in ("BASF2_STANDIN_NPROCESSES", "BASF2_STANDIN_MAX_EVENTS", "BASF2_STANDIN_SKIP_EVENTS"):
        monkeypatch.delenv(name, raising=False)
    import basf2

    basf2.log_messages.clear()
    basf2.set_nprocesses(0)
    yield basf2
    basf2.set_nprocesses(0)
    basf2.logging.reset()


@pytest.fixture
def bgfile(basf2, tmp_path):
    import belle2_root

    path = tmp_path / "overlay.root"
    belle2_root.write_background_file(path, SAMPLED, events=2)
    return path


def certified(basf2, module):
    module.set_property_flags(basf2.ModulePropFlags.PARALLELPROCESSINGCERTIFIED)
    return module


def named(basf2, name: str, *, parallel: bool = False):
    class Recorder(basf2.Module):
        def initialize(self):
            self.initialize_pid = os.getpid()

    module = Recorder()
    module.set_name(name)
    return certified(basf2, module) if parallel else module


def report(basf2, role: str) -> list[dict]:
    return [r for r in basf2.process_reports if r["role"] == role]


def forked_pids(basf2) -> list[int]:
    return [int(m.rsplit("=", 1)[1]) for lv, m in basf2.log_messages if "process forked. pid =" in m]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # a zombie has ended
    except FileNotFoundError:
        return True


# --- Module.h / Module.cc --------------------------------------------------------------------------------------


def test_property_flags_are_basf2s(basf2):
    F = basf2.ModulePropFlags
    assert [int(F.INPUT), int(F.OUTPUT), int(F.PARALLELPROCESSINGCERTIFIED), int(F.HISTOGRAMMANAGER)] == [1, 2, 4, 8]
    assert [int(F.INTERNALSERIALIZER), int(F.TERMINATEINALLPROCESSES)] == [16, 32]
    m = basf2.Module()
    assert not m.has_properties(F.PARALLELPROCESSINGCERTIFIED)  # m_propertyFlags(0)
    m.set_property_flags(F.PARALLELPROCESSINGCERTIFIED | F.TERMINATEINALLPROCESSES)
    assert m.has_properties(F.PARALLELPROCESSINGCERTIFIED) and m.has_properties(F.TERMINATEINALLPROCESSES)
    assert not m.has_properties(F.PARALLELPROCESSINGCERTIFIED | F.INPUT)  # all of them, not any
    m.set_property_flags(F.INPUT)  # setPropertyFlags replaces
    assert not m.has_properties(F.PARALLELPROCESSINGCERTIFIED)
    builtin = {n: basf2.register_module(n) for n in ("EventInfoSetter", "BGOverlayInput", "FullSim")}
    assert not builtin["EventInfoSetter"].has_properties(F.PARALLELPROCESSINGCERTIFIED)
    assert not builtin["BGOverlayInput"].has_properties(F.PARALLELPROCESSINGCERTIFIED)
    assert builtin["FullSim"].has_properties(F.PARALLELPROCESSINGCERTIFIED | F.TERMINATEINALLPROCESSES)


# --- pEventProcessor.cc: analyzePath ------------------------------------------------------------------------------


def test_the_path_splits_at_the_first_certified_and_the_next_uncertified_module(basf2):
    path = basf2.create_path()
    for name, parallel in (("a", False), ("b", True), ("c", True), ("d", False), ("e", True)):
        path.add_module(named(basf2, name, parallel=parallel))
    inpath, mainpath, outpath = basf2.analyze_path(path)
    assert [[m.name() for m in p] for p in (inpath, mainpath, outpath)] == [["a"], ["b", "c"], ["d", "e"]]

    import simulation

    sim = basf2.create_path()
    sim.add_module("EventInfoSetter")
    sim.add_module(named(basf2, "UncertifiedAfterInput"))
    simulation.add_simulation(sim, bkgfiles=["x.root"])
    inpath, mainpath, outpath = basf2.analyze_path(sim)
    assert [m.name() for m in inpath] == ["EventInfoSetter", "UncertifiedAfterInput", "BGOverlayInput"]
    assert [m.name() for m in mainpath] == ["FullSim", "PXDDigitizer", "BGOverlayExecutor"] and not outpath


# --- pEventProcessor.cc / ProcHandler.cc / EventProcessor.cc: who runs what -------------------------------------


def test_initialize_in_the_parent_and_each_module_in_its_process(basf2):
    basf2.set_nprocesses(2)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[6])
    first, worker, last = named(basf2, "First"), named(basf2, "Worker", parallel=True), named(basf2, "Last")
    for m in (first, worker, last):
        path.add_module(m)
    basf2.process(path)
    me = os.getpid()
    assert first.initialize_pid == worker.initialize_pid == last.initialize_pid == me  # before any fork
    # the order in which the output process sees the events is not defined (two workers)
    assert sorted(e.meta for e in basf2.processed_events) == [(0, 0, n) for n in range(1, 7)]
    [inp], workers, [out] = report(basf2, "input"), report(basf2, "worker"), report(basf2, "output")
    assert len(workers) == 2 and out["pid"] == me and len({inp["pid"], *(w["pid"] for w in workers), me}) == 4
    for event in basf2.processed_events:
        by_module = {module: (role, pid) for role, pid, module in event.calls}
        assert by_module["First"] == ("input", inp["pid"])
        assert by_module["Worker"][0] == "worker" and by_module["Worker"][1] in {w["pid"] for w in workers}
        assert by_module["Last"] == ("output", me)
    # the first event's EventMetaData comes from the parent's initialize (processInitialize, setEventInfo)
    for event in basf2.processed_events:
        expect = ("init", me) if event.event == 1 else ("input", inp["pid"])
        assert event.calls[0] == (*expect, "EventInfoSetter")
    # only the parent initializes; each process terminates its own modules (the parent not the input path's)
    for r in (inp, *workers):
        assert not [c for c in r["calls"] if c[0] == "initialize"]
    terminated = {r["role"]: {m for phase, m in r["calls"] if phase == "terminate"} for r in (inp, workers[0], out)}
    assert terminated == {"input": {"EventInfoSetter", "First", "Tx"}, "worker": {"Rx", "Worker", "Tx"},
                          "output": {"Rx", "Last"}}  # fmt: skip


def test_terminate_in_all_processes(basf2):
    basf2.set_nprocesses(1)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[2])
    path.add_module("FullSim")  # c_ParallelProcessingCertified | c_TerminateInAllProcesses
    path.add_module(named(basf2, "Last"))
    basf2.process(path)
    for r in basf2.process_reports:
        assert ("terminate", "FullSim") in r["calls"], r["role"]
        assert [m for phase, m in r["calls"] if phase == "event"].count("FullSim") == (
            2 if r["role"] == "worker" else 0
        )


class RunLogger:
    """A module that logs its beginRun/endRun with the EventMetaData it sees then."""

    @staticmethod
    def make(basf2, name: str, parallel: bool):
        class Logger(basf2.Module):
            def beginRun(self):
                meta = basf2.Belle2.PyStoreObj("EventMetaData").obj()
                basf2.B2INFO(f"{name} beginRun {meta.getExperiment()}/{meta.getRun()}")

            def endRun(self):
                meta = basf2.Belle2.PyStoreObj("EventMetaData").obj()
                basf2.B2INFO(f"{name} endRun {meta.getExperiment()}/{meta.getRun()}")

        module = Logger()
        module.set_name(name)
        return certified(basf2, module) if parallel else module

    @staticmethod
    def runs(log, name: str) -> list[str]:
        return [m.split(" ", 1)[1] for _, m in log if m.startswith(f"{name} ") and "Run " in m]


@pytest.mark.parametrize("nproc", [0, 2])
def test_begin_and_end_run_follow_eventmetadata_in_each_process(basf2, nproc):
    basf2.set_nprocesses(nproc)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", expList=[1, 1, 2], runList=[5, 6, 5], evtNumList=[2, 3, 2])
    path.add_module(RunLogger.make(basf2, "In", parallel=False))
    path.add_module(RunLogger.make(basf2, "Par", parallel=True))
    basf2.process(path)
    every_run = ["beginRun 1/5", "endRun 1/5", "beginRun 1/6", "endRun 1/6", "beginRun 2/5", "endRun 2/5"]
    # endRun sees the run that ends (processEndRun puts the previous EventMetaData back while it runs)
    if nproc == 0:
        assert RunLogger.runs(basf2.log_messages, "In") == RunLogger.runs(basf2.log_messages, "Par") == every_run
        return
    [inp] = report(basf2, "input")
    assert RunLogger.runs(inp["log"], "In") == every_run
    seen = set()
    for w in report(basf2, "worker"):  # each worker begins and ends the runs of the events it got, in order
        runs = RunLogger.runs(w["log"], "Par")
        assert runs[0::2] == [r.replace("endRun", "beginRun") for r in runs[1::2]] and runs
        seen |= set(runs)
    assert seen == set(every_run)


def test_the_input_process_starts_a_run_only_when_the_workers_are_done_with_the_last(basf2):
    """TxModule::beginRun in the input process waits for RingBuffer::allRxWaiting, "that way the parallel
    processes will never see runs out of order"."""

    class Slow(basf2.Module):
        def event(self):
            begin = time.monotonic()
            time.sleep(0.03)
            run = basf2.Belle2.PyStoreObj("EventMetaData").obj().getRun()
            basf2.B2INFO(f"span {run} {begin} {time.monotonic()}")

    basf2.set_nprocesses(3)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", expList=[0, 0], runList=[1, 2], evtNumList=[6, 6])
    path.add_module(certified(basf2, Slow()))
    basf2.process(path)
    spans = [m.split()[1:] for r in report(basf2, "worker") for _, m in r["log"] if m.startswith("span ")]
    first = [float(end) for run, _, end in spans if run == "1"]
    second = [float(begin) for run, begin, _ in spans if run == "2"]
    assert len(first) == len(second) == 6
    assert max(first) <= min(second)


# --- EventInfoSetterModule.cc -------------------------------------------------------------------------------------

CASES = {
    # advanceEventCounter() by hand: numbers start at 1 in each (exp, run); skipping counts across runs
    "plain": ({"evtNumList": [3]}, [(0, 0, 1), (0, 0, 2), (0, 0, 3)]),
    "runs": ({"expList": [1, 1], "runList": [2, 3], "evtNumList": [2, 1]}, [(1, 2, 1), (1, 2, 2), (1, 3, 1)]),
    "empty run skipped": (
        {"expList": [0, 0, 0], "runList": [1, 2, 3], "evtNumList": [1, 0, 1]},
        [(0, 1, 1), (0, 3, 1)],
    ),
    "skipNEvents in a run": ({"evtNumList": [4], "skipNEvents": 2}, [(0, 0, 3), (0, 0, 4)]),
    "skipNEvents across runs": (
        {"expList": [0, 0], "runList": [1, 2], "evtNumList": [3, 2], "skipNEvents": 4},
        [(0, 2, 2)],
    ),
    "skipToEvent": (
        {"expList": [0, 0], "runList": [1, 2], "evtNumList": [3, 4], "skipToEvent": [0, 2, 3]},
        [(0, 2, 3), (0, 2, 4)],
    ),
    "skipNEvents past the end": ({"evtNumList": [2], "skipNEvents": 5}, []),
}


@pytest.mark.parametrize("case", CASES)
def test_eventinfosetter_numbers_events_as_basf2(basf2, case):
    params, want = CASES[case]
    path = basf2.create_path()
    path.add_module("EventInfoSetter", **params)
    basf2.process(path)
    assert [e.meta for e in basf2.processed_events] == want


def test_eventinfosetter_creates_eventmetadata_and_max_event_and_overrides(basf2, monkeypatch):
    seen = []

    class Reader(basf2.Module):
        def event(self):
            meta = basf2.Belle2.PyStoreObj("EventMetaData")
            seen.append((meta.obj().getExperiment(), meta.obj().getRun(), meta.obj().getEvent(), meta.getTime() > 0))

    path = basf2.create_path()
    path.add_module("EventInfoSetter", expList=[3], runList=[4], evtNumList=[10])
    path.add_module(Reader())
    basf2.process(path, max_event=2)
    assert seen == [(3, 4, 1, True), (3, 4, 2, True)]
    assert basf2.registered["event"]["EventMetaData"] is True
    monkeypatch.setenv("BASF2_STANDIN_MAX_EVENTS", "3")  # `basf2 -n 3`: evtNumList[0] and max_event
    monkeypatch.setenv("BASF2_STANDIN_SKIP_EVENTS", "1")  # `--skip-events 1`
    basf2.process(path)
    assert [e.meta for e in basf2.processed_events] == [(3, 4, 2), (3, 4, 3)]
    bad = basf2.create_path()
    bad.add_module("EventInfoSetter", expList=[1, 1], runList=[2, 2], evtNumList=[1, 1])
    with pytest.raises(basf2.FatalError, match="ERROR\\(S\\) occurred"):
        basf2.process(bad)
    assert any("used more than once" in m for lv, m in basf2.log_messages if lv == "ERROR")


def test_a_path_without_eventmetadata_is_an_error(basf2):
    path = basf2.create_path()
    path.add_module(named(basf2, "Lonely"))
    with pytest.raises(basf2.FatalError, match="ERROR\\(S\\) occurred"):
        basf2.process(path)
    assert any("no module that provides event and run numbers" in m for lv, m in basf2.log_messages)


# --- TxModule.cc / RxModule.cc / DataStoreStreamer.cc: what travels ------------------------------------------------


def overlay(basf2, bgfile, nproc: int, events: int = 5):
    basf2.set_nprocesses(nproc)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[events])
    path.add_module("BGOverlayInput", inputFileNames=[str(bgfile)])
    path.add_module("FullSim")
    path.add_module("PXDDigitizer")
    path.add_module("BGOverlayExecutor")
    basf2.process(path)
    return {e.meta: {k: v.tolist() for k, v in e.items()} for e in basf2.processed_events}


def test_transient_entries_travel_from_the_input_process_to_the_workers(basf2, bgfile):
    """TxModule streams with streamDataStore(true, true): c_DontWriteOut entries such as PXDDigits_beamBG
    (filled by BGOverlayInput in the input process) reach BGOverlayExecutor in the workers."""
    single = overlay(basf2, bgfile, 0)
    assert basf2.registered["event"]["PXDDigits_beamBG"] is False
    parallel = overlay(basf2, bgfile, 2)
    assert parallel == single and len(parallel) == 5
    for arrays in parallel.values():
        assert arrays["PXDDigits_beamBG"] and arrays["PXDDigits"][2:] == arrays["PXDDigits_beamBG"]
    assert "BackgroundInfo" in basf2.registered["persistent"]  # persistent durability travels too


def test_the_streamer_skips_transient_entries_only_when_asked(basf2):
    import ROOT

    B = basf2.Belle2
    store = B.DataStore.Instance()
    store.reset()
    B.PyStoreArray("PXDDigits").registerInDataStore()
    B.PyStoreArray("PXDDigits").registerInDataStore("PXDDigits_t", B.DataStore.c_DontWriteOut)
    store.setInitializeActive(False)
    B.PyStoreArray("PXDDigits").appendNew()
    B.PyStoreArray(ROOT.TClass.GetClass("Belle2::PXDDigit"), "PXDDigits_t").appendNew()
    everything, written_out = basf2.stream_data_store(True, True), basf2.stream_data_store(True, False)
    store.invalidateData(B.DataStore.c_Event)
    assert basf2.restore_data_store(written_out) == 1 and set(basf2.store_arrays(0)) == {"PXDDigits"}
    store.invalidateData(B.DataStore.c_Event)
    assert basf2.restore_data_store(everything) == 2 and set(basf2.store_arrays(0)) == {"PXDDigits", "PXDDigits_t"}
    store.reset()


# --- Framework.cc: the GIL ------------------------------------------------------------------------------------------


def test_fullsim_holds_the_gil(basf2):
    """While FullSim's stand-in runs, a Python thread of the same process makes no progress."""
    ticks: list[float] = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    class Clock(basf2.Module):
        def event(self):
            self.begin = time.monotonic()

    class After(basf2.Module):
        def event(self):
            self.end = time.monotonic()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        path = basf2.create_path()
        path.add_module("EventInfoSetter")
        clock, after = Clock(), After()
        path.add_module(clock)
        path.add_module("FullSim", gil_seconds=0.5)
        path.add_module(after)
        basf2.process(path)
        time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert after.end - clock.begin >= 0.5
    assert any(t > after.end for t in ticks) and any(t < clock.begin for t in ticks)  # it ran before and after
    # a thread that ticks every millisecond shows one silent stretch as long as the hold (a released GIL would
    # leave gaps of a few milliseconds; the edges may hold a tick or two, as the interpreter switches threads)
    gaps = [b - a for a, b in zip(ticks, ticks[1:]) if a < after.end and b > clock.begin]
    assert max(gaps) >= 0.45, f"the thread ran while the GIL was held (longest pause {max(gaps):.3f} s)"


# --- pEventProcessor.cc / ProcHandler.cc: fall-back, dying children, orphans, logging -------------------------------


def test_no_certified_module_falls_back_to_one_process(basf2):
    basf2.set_nprocesses(3)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[2])
    path.add_module(named(basf2, "Plain"))
    basf2.process(path)
    assert any("falling back to single-core mode" in m for lv, m in basf2.log_messages if lv == "WARNING")
    assert {pid for e in basf2.processed_events for _, pid, _ in e.calls} == {os.getpid()}
    assert [r["role"] for r in basf2.process_reports] == ["init"]


def test_a_worker_killed_by_a_signal_stops_the_run_and_leaves_no_process(basf2):
    class Dies(basf2.Module):
        def event(self):
            if basf2.Belle2.PyStoreObj("EventMetaData").obj().getEvent() == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    basf2.set_nprocesses(2)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[50])
    path.add_module(certified(basf2, Dies()))
    with pytest.raises(basf2.FatalError, match="killed by signal"):
        basf2.process(path)
    pids = forked_pids(basf2)
    assert len(pids) == 3 and all(gone(pid) for pid in pids)


def test_an_exception_in_a_worker_stops_the_run(basf2):
    class Raises(basf2.Module):
        def event(self):
            raise ValueError("broken module")

    basf2.set_nprocesses(1)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[3])
    path.add_module(certified(basf2, Raises()))
    with pytest.raises(basf2.FatalError, match="non-zero exit status"):
        basf2.process(path)
    assert all(gone(pid) for pid in forked_pids(basf2))


@pytest.mark.slow
def test_a_straggling_child_is_killed_after_the_exit_timeout(basf2, monkeypatch):
    class Hangs(basf2.Module):
        def terminate(self):
            if os.getpid() != parent:
                time.sleep(120)

    parent = os.getpid()
    monkeypatch.setattr(basf2, "EXIT_TIMEOUT", 2.0)
    basf2.set_nprocesses(1)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[2])
    path.add_module(certified(basf2, Hangs()))
    begin = time.monotonic()
    with pytest.raises(basf2.FatalError, match="did not exit within"):
        basf2.process(path)
    assert time.monotonic() - begin < 60
    assert all(gone(pid) for pid in forked_pids(basf2))


def test_a_silent_worker_stops_the_run_after_the_no_progress_timeout(basf2, monkeypatch):
    class Stuck(basf2.Module):
        def event(self):
            time.sleep(120)

    monkeypatch.setattr(basf2, "NO_PROGRESS_TIMEOUT", 2.0)
    basf2.set_nprocesses(1)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[2])
    path.add_module(certified(basf2, Stuck()))
    begin = time.monotonic()
    with pytest.raises(basf2.FatalError, match="no event arrived for 2 s"):
        basf2.process(path)
    assert time.monotonic() - begin < 60
    assert all(gone(pid) for pid in forked_pids(basf2))


def test_max_event_with_workers(basf2):
    basf2.set_nprocesses(2)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[20])
    path.add_module(named(basf2, "Worker", parallel=True))
    basf2.process(path, max_event=3)
    assert sorted(e.meta for e in basf2.processed_events) == [(0, 0, 1), (0, 0, 2), (0, 0, 3)]


def test_every_process_logs_to_the_file(basf2, tmp_path):
    log = tmp_path / "basf2.log"
    basf2.logging.add_file(log)
    basf2.set_nprocesses(2)
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[4])
    path.add_module(named(basf2, "Worker", parallel=True))
    basf2.process(path)
    text = log.read_text()
    assert "input process finished. { process: input" in text
    assert text.count("worker process finished. { process: worker") == 2
    assert "[INFO] processed 4 events" in text
    for r in basf2.process_reports:  # LogSystem's counters are per process
        assert r["counters"]["INFO"] == sum(level == "INFO" for level, _ in r["log"])


def test_the_error_summary_lists_this_processs_warnings_and_errors(basf2, capsys):
    class Warns(basf2.Module):
        def event(self):
            basf2.B2WARNING("odd event")

        def terminate(self):
            basf2.B2ERROR("bad end")

    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[3])
    path.add_module(Warns())
    basf2.process(path)
    assert basf2.error_summary()[1:4] == [
        "Error summary: 1 errors and 3 warnings occurred.",
        "[ERROR] bad end",
        "[WARNING] odd event (occurred 3 times)",
    ]
    assert "Error summary: 1 errors and 3 warnings occurred." in capsys.readouterr().err
    assert basf2.message_counters == {"INFO": 1, "WARNING": 3, "ERROR": 1}


@pytest.mark.slow
def test_children_die_with_their_parent(tmp_path):
    """ProcHandler::startProc: prctl(PR_SET_PDEATHSIG, SIGHUP); a killed basf2 leaves no process behind."""
    pytest.importorskip("ROOT")
    log = tmp_path / "basf2.log"
    steering = tmp_path / "steering.py"
    steering.write_text(
        textwrap.dedent(f"""
        import basf2
        basf2.logging.add_file({str(log)!r})
        basf2.set_nprocesses(2)
        path = basf2.create_path()
        path.add_module("EventInfoSetter", evtNumList=[100])
        path.add_module("FullSim", gil_seconds=30.0)
        basf2.process(path)
        """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(steering)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while len(pids) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            text = log.read_text() if log.exists() else ""
            pids = [int(line.split("pid = ")[1].split()[0]) for line in text.splitlines() if "pid = " in line]
        assert len(pids) == 3, "the children were not forked"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in pids)
