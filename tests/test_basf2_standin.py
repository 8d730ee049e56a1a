"""The basf2 stand-in itself: each test pins one fact of basf2's source that the stand-in enforces (the file it
follows is named in tests/standin/README.md), so that the module's tests can only pass where basf2 would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

STANDIN = Path(__file__).resolve().parent / "standin"
SAMPLED = np.array([[8480, 1, 100, 200], [8480, 1, 101, 7]], np.uint16)


@pytest.fixture
def basf2(monkeypatch):
    pytest.importorskip("ROOT", reason="the basf2 tests need PyPI's 'root' package (installed by make test)")
    monkeypatch.syspath_prepend(str(STANDIN))
    import basf2

    basf2.log_messages.clear()
    basf2.Belle2.DataStore.Instance().reset()
    yield basf2
    basf2.Belle2.DataStore.Instance().reset()


@pytest.fixture
def bgfile(basf2, tmp_path):
    import belle2_root

    path = tmp_path / "overlay.root"
    belle2_root.write_background_file(path, SAMPLED, events=2)
    return path


def tclass(name: str):
    import ROOT

    return ROOT.TClass.GetClass(f"Belle2::{name}")


def levels(basf2, level: str) -> list[str]:
    basf2._drain_cpp_log()
    return [m for lv, m in basf2.log_messages if lv == level]


def test_enum_values_are_basf2s(basf2):
    B = basf2.Belle2
    assert (int(B.DataStore.c_Event), int(B.DataStore.c_Persistent)) == (0, 1)
    assert (int(B.DataStore.c_WriteOut), int(B.DataStore.c_DontWriteOut)) == (0, 1)
    assert int(B.DataStore.c_ErrorIfAlreadyRegistered) == 2
    assert int(B.DBStoreEntry.c_RawFile) == 0
    assert (int(B.DigitBase.c_DontAppend), int(B.DigitBase.c_Append)) == (0, 1)
    assert int(B.BackgroundInfo.c_Overlay) == 2


def test_a_store_flag_given_as_durability_means_persistent(basf2):
    """PyROOT converts the EStoreFlags value c_DontWriteOut (1) into the EDurability parameter: c_Persistent."""
    B = basf2.Belle2
    assert int(B.PyStoreArray("PXDDigits", B.DataStore.c_DontWriteOut).getDurability()) == 1
    assert int(B.PyStoreArray("PXDDigits").getDurability()) == 0


def test_event_and_persistent_maps_are_separate_and_events_are_invalidated(basf2):
    B = basf2.Belle2
    event, persistent = B.PyStoreArray("PXDDigits"), B.PyStoreArray("PXDDigits", B.DataStore.c_Persistent)
    assert event.registerInDataStore("PXDDigits_beamBG", B.DataStore.c_DontWriteOut)
    assert persistent.registerInDataStore("PXDDigits_beamBG")
    event.appendNew()
    persistent.getPtr()  # creates the persistent array
    assert event.getEntries() == 1 and persistent.getEntries() == 0 and persistent.isValid()
    B.DataStore.Instance().invalidateData(B.DataStore.c_Event)
    assert not event.isValid() and persistent.isValid()
    assert event.getPtr().GetEntriesFast() == 0  # re-created empty in the next event


def test_registration_rules(basf2):
    B = basf2.Belle2
    store = B.DataStore.Instance()
    arr = B.PyStoreArray("PXDDigits")
    assert arr.registerInDataStore("PXDDigits_x", B.DataStore.c_DontWriteOut)
    assert arr.registerInDataStore("PXDDigits_x", B.DataStore.c_DontWriteOut) and not levels(basf2, "WARNING")
    assert arr.registerInDataStore("PXDDigits_x")  # default c_WriteOut: the flag changes, with a warning
    assert any("different persistency type" in m and "c_WriteOut" in m for m in levels(basf2, "WARNING"))
    flags = B.DataStore.EStoreFlags(int(B.DataStore.c_DontWriteOut) | int(B.DataStore.c_ErrorIfAlreadyRegistered))
    assert not arr.registerInDataStore("PXDDigits_x", flags)
    assert any("was already registered" in m for m in levels(basf2, "ERROR"))
    assert not B.PyStoreArray("NoSuchClasss").registerInDataStore()  # no class for the name: refused
    store.setInitializeActive(False)
    assert not B.PyStoreArray("PXDDigits").registerInDataStore("PXDDigits_late")
    assert any("outside of the initialization phase" in m for m in levels(basf2, "ERROR"))


def test_an_entry_of_another_type_is_fatal(basf2):
    B = basf2.Belle2
    assert B.PyStoreObj("BackgroundInfo").registerInDataStore()
    with pytest.raises(Exception, match="is an object and the requested one an array"):
        B.PyStoreArray(tclass("PXDDigit"), "BackgroundInfo")
    assert B.PyStoreArray("PXDDigits").registerInDataStore("PXDDigits_y")
    with pytest.raises(Exception, match="doesn't match requested type"):
        B.PyStoreArray(tclass("BackgroundInfo"), "PXDDigits_y")
    assert levels(basf2, "FATAL")


def test_pxddigit_is_a_digitbase_with_basf2s_channel_id_and_pileup(basf2):
    B = basf2.Belle2
    assert tclass("PXDDigit").InheritsFrom("Belle2::DigitBase")
    assert tclass("PXDDigit").InheritsFrom("Belle2::RelationsObject")
    sensor = B.VxdID(2, 12, 2)
    assert int(sensor) == (2 << 13 | 12 << 8 | 2 << 5) and sensor.getLadderNumber() == 12
    d = B.PXDDigit(sensor, 249, 767, 65530)  # PyROOT passes the VxdID, or an int through VxdID(baseType)
    assert d.getUniqueChannelID() == 767 + (249 << 10) + (int(sensor) << 16)
    framed = B.PXDDigit(B.VxdID(1, 1, 1, 3), 0, 0, 1)  # the segment (frame number) moves up by two bits
    assert framed.getUniqueChannelID() == (int(B.VxdID(1, 1, 1, 3 << 2)) << 16) and framed.getFrameNumber() == 3
    assert d.addBGDigit(B.PXDDigit(sensor, 249, 767, 9)) == B.DigitBase.c_DontAppend
    assert d.getCharge() == (65530 + 9) % 65536  # unsigned short charge
    assert B.PXDDigit(8480, 1, 2, 3).getSensorID().getID() == 8480


def test_get_background_files_behaves_like_basf2s(basf2, tmp_path, monkeypatch):
    import background

    monkeypatch.delenv("BELLE2_BACKGROUND_DIR", raising=False)
    with pytest.raises(RuntimeError, match="BELLE2_BACKGROUND_DIR"):
        background.get_background_files()
    monkeypatch.setenv("BELLE2_BACKGROUND_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="No background files found"):
        background.get_background_files()
    for name in ("b.root", "a.root", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert background.get_background_files() == [str(tmp_path / "a.root"), str(tmp_path / "b.root")]


def overlay_path(basf2, bgfile, *modules, events=2):
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[events])
    path.add_module("BGOverlayInput", inputFileNames=[str(bgfile)])
    for m in modules:
        path.add_module(m)
    path.add_module("PXDDigitizer")
    path.add_module("BGOverlayExecutor")
    return path


def test_overlay_input_and_executor(basf2, bgfile, monkeypatch):
    """BGOverlayInput reads the file's PXDDigits into the event array PXDDigits_beamBG (not written out), and
    BGOverlayExecutor merges it into PXDDigits by getUniqueChannelID/addBGDigit."""
    monkeypatch.setattr(basf2, "SIGNAL_DIGITS", [(8480, 1, 100, 5), (8480, 2, 2, 3)])
    basf2.process(overlay_path(basf2, bgfile))
    # EventInfoSetter registers EventMetaData (written out), as EventInfoSetterModule.cc does
    assert basf2.registered["event"] == {"EventMetaData": True, "PXDDigits_beamBG": False, "PXDDigits": True}
    assert "BackgroundInfo" in basf2.registered["persistent"]
    assert len(basf2.processed_events) == 2
    charges = set()
    for event in basf2.processed_events:
        bg = event["PXDDigits_beamBG"]
        charges.add(int(bg[0][3]))
        np.testing.assert_array_equal(bg[:, :3], SAMPLED[:, :3])
        assert event["PXDDigits"].tolist() == [[8480, 1, 100, 5 + int(bg[0][3])], [8480, 2, 2, 3], bg[1].tolist()]
    assert charges == {200, 201}  # the file's two events, in turn


def test_two_overlay_inputs_are_an_error_and_abort(basf2, bgfile):
    path = overlay_path(basf2, bgfile, basf2.register_module("BGOverlayInput", inputFileNames=[str(bgfile)]))
    with pytest.raises(basf2.FatalError, match="ERROR\\(S\\) occurred! The processing of events will not be"):
        basf2.process(path)
    assert any("was already registered" in m for m in levels(basf2, "ERROR"))


def test_the_upstream_registration_misses_the_overlay(basf2, bgfile):
    """What `PyStoreArray("PXDDigits", DataStore.c_DontWriteOut)` + `registerInDataStore(name)` does here, as in
    basf2: a separate persistent array, written out; the executor still merges the file's digits."""
    B = basf2.Belle2

    class UpstreamLines(basf2.Module):
        def initialize(self):
            self.arr = B.PyStoreArray("PXDDigits", B.DataStore.c_DontWriteOut)
            self.arr.registerInDataStore("PXDDigits_beamBG")

        def event(self):
            digits = self.arr.getPtr()
            digits.Clear()

    basf2.process(overlay_path(basf2, bgfile, UpstreamLines(), events=1))
    assert basf2.registered["persistent"]["PXDDigits_beamBG"] is True  # persistent and written out
    np.testing.assert_array_equal(basf2.processed_events[0]["PXDDigits_beamBG"][:, :3], SAMPLED[:, :3])
    assert "PXDDigits_beamBG" in basf2.persistent_arrays
