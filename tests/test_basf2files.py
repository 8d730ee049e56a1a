"""basf2's own ROOT files: read with uproot as ROOT reads them, one line for each kind of bad file, written so that
the stand-in's BGOverlayInput (with the checks of BGOverlayInputModule.cc's initialize()) overlays exactly the
generated digits, and pxdbg info / convert on all three formats.

The fixtures are real ROOT files, written by ROOT from the stand-in's classes declared from basf2's headers, the
way RootOutput writes them (tests/standin/belle2_files.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pxdbg import models
from pxdbg.shared.digitsfile import DigitsFile, write_digits
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import VXD_IDS, vxd_id

pytestmark = pytest.mark.timeout(300)

STANDIN = Path(__file__).resolve().parent / "standin"
PXDBG = [sys.executable, "-m", "pxdbg"]


@pytest.fixture(scope="module")
def standin():
    """The stand-in's basf2 classes and file writer (ROOT), loaded before pxdbg's writer could declare its own."""
    pytest.importorskip("ROOT", reason="the basf2 file tests need PyPI's 'root' package (installed by make test)")
    sys.path.insert(0, str(STANDIN))
    try:
        import belle2_files

        yield belle2_files
    finally:
        sys.path.remove(str(STANDIN))


def random_events(n_events: int, seed: int = 3) -> list[np.ndarray]:
    """(VxdID with segment bits, u, v, charge) digits: charges up to 400 ADC (PXDDigit's are 16-bit), a repeated
    pixel in each event, an empty event."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n_events):
        n = 0 if e == 1 else int(rng.integers(1, 400))
        vid = VXD_IDS[rng.integers(0, 40, n)] | rng.integers(0, 4, n).astype(np.uint16)  # segment: readout frame
        digits = np.stack([vid, rng.integers(0, 250, n), rng.integers(0, 768, n), rng.integers(1, 400, n)], axis=1)
        if n > 1:
            digits[-1, :3] = digits[0, :3]
        out.append(digits.astype(np.uint16))
    return out


def as_frame(digits: np.ndarray) -> SparseFrame:
    sensor = np.searchsorted(VXD_IDS, digits[:, 0] & ~np.uint16(0x1F))
    return SparseFrame.from_pixels(sensor, digits[:, 1], digits[:, 2], np.minimum(digits[:, 3], 255))


def test_uproot_reads_what_root_reads(standin, tmp_path):
    from pxdbg.basf2files import open_basf2

    events = random_events(6)
    path = tmp_path / "sample.root"
    standin.write_basf2_file(path, events, experiment=0, run=7)
    by_root = standin.read_basf2_digits(path)
    for written, read in zip(events, by_root):
        np.testing.assert_array_equal(written, read)  # ROOT gives back what it was given
    f = open_basf2(path)
    assert f.n_events == 6 and f.has_event_meta_data and f.background_meta is None
    assert (f.file_meta["nEvents"], f.file_meta["experimentLow"], f.file_meta["runLow"]) == (6, 0, 7)
    got = list(f.frames())
    assert len(got) == 6 and got[1].n_digits == 0
    for frame, digits in zip(got, by_root):
        assert frame == as_frame(digits)
    assert max(int(fr.charge.max(initial=0)) for fr in got) == 255  # 16-bit charges clipped to the generator's range


def test_bad_files_are_one_line_each(standin, tmp_path):
    import ROOT

    from pxdbg.rootio import RootDigitsWriter

    bad = {}
    standin.write_basf2_file(tmp_path / "svd.root", random_events(2), array_name="SVDDigits")
    bad["svd.root"] = "the event tree has no PXDDigits branch (its branches: EventMetaData, SVDDigits)"
    standin.write_basf2_file(tmp_path / "empty.root", [])
    bad["empty.root"] = "the event tree has no events"
    standin.write_basf2_file(tmp_path / "no_digits.root", [np.zeros((0, 4))] * 3)
    bad["no_digits.root"] = "the PXDDigits branch is empty: no digits in any of its 3 events"
    standin.write_basf2_file(tmp_path / "svd_sensor.root", [np.array([[vxd_id(3, 1, 1), 1, 2, 30]], np.uint16)])
    bad["svd_sensor.root"] = "event 0 has a digit with VxdID 0x6120, u 1, v 2 that is not a pixel of the 40 PXD"
    standin.write_basf2_file(tmp_path / "beyond.root", [np.array([[int(VXD_IDS[0]), 250, 2, 30]], np.uint16)])
    bad["beyond.root"] = "has a digit with VxdID 0x2120, u 250"
    # a TClonesArray of another class under the name PXDDigits
    f = ROOT.TFile(str(tmp_path / "named.root"), "RECREATE")
    tree = ROOT.TTree("tree", "tree")
    arr = ROOT.TClonesArray("TNamed")
    tree.Branch("PXDDigits", arr, 32000, 99)
    arr.ConstructedAt(0).SetName("x")
    tree.Fill()
    tree.Write()
    f.Close()
    bad["named.root"] = "PXDDigits is a TClonesArray of TNamed, not of Belle2::PXDDigit"
    # our own layout is not basf2's: it is read by the other reader; a ROOT file with neither is one line too
    with RootDigitsWriter(tmp_path / "ours.root", {"model": "parametric"}) as w:
        w.append(as_frame(random_events(1)[0]))
    f = ROOT.TFile(str(tmp_path / "other.root"), "RECREATE")
    ROOT.TNamed("x", "y").Write()
    f.Close()
    bad["other.root"] = "has no TTree with the branches vxd_id, u, v, charge"
    for name, message in bad.items():
        proc = subprocess.run(
            [*PXDBG, "validate", str(tmp_path / name), "--out", str(tmp_path / "v"), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and name in lines[0], (name, proc.stderr)
    proc = subprocess.run([*PXDBG, "info", str(tmp_path / "ours.root")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "our layout" in proc.stdout, proc.stderr


@pytest.mark.slow  # a steering job in ROOT's cling
def test_export_is_overlaid_by_bgoverlayinput(tmp_path):
    """pxdbg export --basf2 (in its own process, with pxdbg's own class declarations); the stand-in's BGOverlayInput
    accepts the file, and with no signal digits the overlay after BGOverlayExecutor is exactly the generated
    events, each once (the overlay starts at a random event and wraps around)."""
    pytest.importorskip("ROOT")
    out = tmp_path / "overlay.root"
    proc = subprocess.run(
        [*PXDBG, "export", "--basf2", str(out), "--events", "3", "--seed", "11", "-q"],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 events" in proc.stdout
    script = f"""
import json, sys
import numpy as np
import basf2
basf2.SIGNAL_DIGITS = []
path = basf2.create_path()
path.add_module("EventInfoSetter", evtNumList=[3])
path.add_module("BGOverlayInput", inputFileNames=[{str(out)!r}])
path.add_module("PXDDigitizer")
path.add_module("BGOverlayExecutor")
basf2.process(path)
json.dump([e["PXDDigits"].tolist() for e in basf2.processed_events], sys.stdout)
"""
    env = {**__import__("os").environ, "PYTHONPATH": str(STANDIN)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=200, env=env)
    assert proc.returncode == 0, proc.stderr
    import json

    overlaid = [as_frame(np.array(e, np.uint16).reshape(-1, 4)) for e in json.loads(proc.stdout)]
    generated = models.load("parametric").frames(11, range(3))
    assert sorted(f.n_digits for f in overlaid) == sorted(f.n_digits for f in generated)
    for frame in generated:
        assert sum(frame == o for o in overlaid) == 1


def test_bgoverlayinput_refuses_what_basf2_refuses(standin, tmp_path):
    """initialize() of BGOverlayInputModule.cc: a BG mixing sample (BackgroundMetaData), a file of another
    experiment, a file without the persistent tree."""
    import basf2

    events = random_events(2)
    standin.write_basf2_file(tmp_path / "mixing.root", events, background_type="RBB_LER")
    standin.write_basf2_file(tmp_path / "exp3.root", events, experiment=3)
    standin.write_basf2_file(tmp_path / "ok.root", events)
    cases = {
        "mixing.root": "aimed for BG mixing, not for BG overlay",
        "exp3.root": "aimed for a different experiment number",
    }
    for name, message in cases.items():
        basf2.Belle2.DataStore.Instance().reset()
        path = basf2.create_path()
        path.add_module("EventInfoSetter", evtNumList=[1])
        path.add_module("BGOverlayInput", inputFileNames=[str(tmp_path / name)])
        with pytest.raises(Exception, match=message):
            basf2.process(path)
    basf2.Belle2.DataStore.Instance().reset()
    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[1])
    path.add_module("BGOverlayInput", inputFileNames=[str(tmp_path / "ok.root")])
    basf2.process(path)
    basf2.Belle2.DataStore.Instance().reset()
    # pxdbg info says which is which
    proc = subprocess.run(
        [*PXDBG, "info", str(tmp_path / "mixing.root"), str(tmp_path / "exp3.root")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "BG mixing sample (RBB_LER): BGOverlayInput refuses it" in proc.stdout
    assert "overlay sample for experiment 3" in proc.stdout


def test_info_and_convert_round_trip(standin, tmp_path):
    """basf2 -> npz -> our root -> npz keeps every digit; npz -> basf2 too; info names format, events, stream,
    model, completeness and size per event; an existing output is refused without --force."""
    events = random_events(4)
    standin.write_basf2_file(tmp_path / "in.root", events)
    frames = [as_frame(d) for d in events]

    def pxdbg(*args):
        return subprocess.run([*PXDBG, *map(str, args)], capture_output=True, text=True, timeout=120)

    for args in (
        ("convert", tmp_path / "in.root", tmp_path / "a.npz"),
        ("convert", tmp_path / "a.npz", tmp_path / "b.root"),
        ("convert", tmp_path / "b.root", tmp_path / "c.npz"),
        ("convert", tmp_path / "c.npz", tmp_path / "d.root", "--basf2", "--experiment", "5"),
    ):
        proc = pxdbg(*args)
        assert proc.returncode == 0, (args, proc.stderr)
    assert list(DigitsFile(tmp_path / "c.npz")) == frames
    from pxdbg.basf2files import open_basf2

    d = open_basf2(tmp_path / "d.root")
    assert list(d.frames()) == frames and d.file_meta["experimentLow"] == 5
    proc = pxdbg("convert", tmp_path / "a.npz", tmp_path / "c.npz")
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr
    write_digits(tmp_path / "gen.npz", models.load("parametric").frames(4, range(2)), {"model": "parametric"})
    proc = pxdbg("info", tmp_path / "in.root", tmp_path / "b.root", tmp_path / "gen.npz", tmp_path / "d.root")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.count("events          4") == 3 and "events          2" in text
    assert "basf2 ROOT file" in text and "our layout" in text and "digits file (.npz" in text
    assert text.count("complete        yes") == 4 and text.count("per event") == 4
    proc = pxdbg("info", tmp_path / "missing.npz")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
