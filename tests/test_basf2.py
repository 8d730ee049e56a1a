"""The basf2 module against a thin basf2 stand-in and real ROOT (PyROOT, cling, TClonesArray, TFile)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_helpers import producers
from pxdbg import models
from pxdbg.shared.geometry import VXD_IDS
from pxdbg.shared.seeding import seed_from_framework_seed

pytestmark = pytest.mark.timeout(240)
STANDIN = Path(__file__).resolve().parent / "standin"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def basf2(monkeypatch):
    pytest.importorskip("ROOT", reason="the basf2 tests need PyPI's 'root' package (installed by make test)")
    monkeypatch.syspath_prepend(str(STANDIN))
    import basf2

    basf2.log_messages.clear()
    basf2.conditions.globaltags.clear()
    basf2.set_random_seed("basf2-default-seed")
    return basf2


def expected(seed: int, n: int, first: int = 0) -> list[np.ndarray]:
    frames = models.load("parametric").frames(seed, range(first, first + n))
    return [np.stack([VXD_IDS[f.sensor], f.u, f.v, f.charge], axis=1).astype(np.uint16) for f in frames]


def run_path(basf2, module, events: int = 3, overlay: bool = True):
    from pxdbg.background_generator import inject_simulation

    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[events])
    path.add_module("EvtGenInput")
    add_simulation = inject_simulation(module)
    add_simulation(path, bkgfiles=["bg.root"] if overlay else None)
    basf2.process(path)
    return [ev["PXDDigits_beamBG"] for ev in basf2.processed_events]


@pytest.mark.parametrize("mode", ["in-process", "workers"])
def test_module_modes_fill_the_overlay_collection(basf2, mode):
    from pxdbg.background_generator import PXDBackgroundGenerator

    extra = {"workers": 1, "prefetch": 2} if mode == "workers" else {}
    module = PXDBackgroundGenerator(model="parametric", seed=77, first_frame=4, **extra)
    got = run_path(basf2, module, events=3)
    want = expected(77, 3, first=4)
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # the sampled stand-in digits were replaced, in sensor order
    # the module sits right after BGOverlayInput; the executor merged the same digits into PXDDigits
    merged = basf2.processed_events[-1]["PXDDigits"]
    np.testing.assert_array_equal(merged, want[-1])
    infos = [m for level, m in basf2.log_messages if level == "INFO"]
    assert any("stream seed 77, frame 6," in m for m in infos), "each event's seed and frame index are logged"
    assert not any(level == "WARNING" for level, _ in basf2.log_messages), basf2.log_messages


def test_module_farm_mode(basf2, tmp_path):
    from pxdbg.background_generator import PXDBackgroundGenerator

    with producers(tmp_path) as p:
        ep = p.start("farm")
        module = PXDBackgroundGenerator(model="parametric", seed=-5, endpoints=[ep], prefetch=3)
        got = run_path(basf2, module, events=4)
    for g, w in zip(got, expected(-5, 4)):
        np.testing.assert_array_equal(g, w)


def test_seed_from_the_basf2_seed_and_payload_from_conditions(basf2):
    from pxdbg.background_generator import PXDBackgroundGenerator

    basf2.set_random_seed("run-4711")
    module = PXDBackgroundGenerator(model="parametric")
    assert "PXDBackgroundGenerator" in basf2.conditions.globaltags
    got = run_path(basf2, module, events=1)
    seed = seed_from_framework_seed("run-4711")
    assert any(f"seed initialized to {seed}" in m for _, m in basf2.log_messages)
    np.testing.assert_array_equal(got[0], expected(seed, 1)[0])


def test_missing_bgoverlayinput_is_a_clear_error(basf2):
    from pxdbg.background_generator import PXDBackgroundGenerator

    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[1])
    path.add_module(PXDBackgroundGenerator(model="parametric", seed=1))
    with pytest.raises(RuntimeError, match="needs BGOverlayInput"):
        basf2.process(path)
    assert any(level == "ERROR" and "BGOverlayInput" in m for level, m in basf2.log_messages)


def test_constructor_checks_like_the_seed(basf2):
    from pxdbg.background_generator import PXDBackgroundGenerator

    with pytest.raises(ValueError, match="invalid `model`"):
        PXDBackgroundGenerator(model="gan")
    with pytest.raises(ValueError, match="not a file"):
        PXDBackgroundGenerator(checkpoint="/nonexistent.pt")
    with pytest.raises(ValueError, match="2\\*\\*63"):
        PXDBackgroundGenerator(seed=2**63)
    with pytest.raises(ValueError, match="`nintra` > 0"):
        PXDBackgroundGenerator(nintra=0)
    with pytest.raises(TypeError, match="globaltag"):
        PXDBackgroundGenerator(globaltag=1)


def test_fast_fill_equals_the_python_loop_and_costs(basf2, capsys):
    import ROOT

    from pxdbg.background_generator import DigitFiller
    from pxdbg.shared.frame import SparseFrame

    full = models.load("parametric").frames(3, [0])[0]
    edges = SparseFrame.from_pixels(np.array([0, 39, 39]), np.array([0, 249, 249]), np.array([0, 0, 767]),
                                    np.array([1, 255, 7]))
    fast, slow = DigitFiller(), DigitFiller(force_python=True)
    assert fast.fast and not slow.fast
    a, b = ROOT.TClonesArray("Belle2::PXDDigit"), ROOT.TClonesArray("Belle2::PXDDigit")
    fast.fill(a, edges)
    slow.fill(b, edges)
    np.testing.assert_array_equal(basf2.read_digits(a), basf2.read_digits(b))
    assert basf2.read_digits(a).tolist() == [[8480, 0, 0, 1], [2 << 13 | 12 << 8 | 2 << 5, 249, 0, 255],
                                             [2 << 13 | 12 << 8 | 2 << 5, 249, 767, 7]]
    t0 = time.perf_counter()
    for _ in range(5):
        fast.fill(a, full)
    fast_s = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    slow.fill(b, full)
    slow_s = time.perf_counter() - t0
    np.testing.assert_array_equal(basf2.read_digits(a), basf2.read_digits(b))
    assert basf2.read_digits(a).shape == (full.n_digits, 4)
    with capsys.disabled():
        print(f"\n[digit fill, {full.n_digits} digits] C++: {1e3 * fast_s:.2f} ms per event; Python loop: "
              f"{slow_s:.2f} s per event ({1e6 * slow_s / full.n_digits:.1f} us per digit)")
    assert slow_s > fast_s


def test_module_file_imports_without_basf2():
    code = ("import sys; import pxdbg.background_generator as m; "
            "assert 'basf2' not in sys.modules and 'ROOT' not in sys.modules and 'torch' not in sys.modules\n"
            "try:\n    m.PXDBackgroundGenerator\nexcept ImportError as e:\n    assert 'b2setup' in str(e); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def _sparse_checkpoint(name: str, path: Path) -> None:
    import torch

    from pxdbg.bench import _gan

    torch.save(_gan(name, 0.01).net.state_dict(), path)


@pytest.mark.slow
@pytest.mark.parametrize(("example", "model"), [("steering_inject_simulation.py", "resnet"),
                                                ("background_generator.py", "convnet")])
def test_steering_examples_run(tmp_path, example, model):
    pytest.importorskip("ROOT")
    from pxdbg.shared import payloads

    ckpt = tmp_path / f"{model}.pt"
    _sparse_checkpoint(model, ckpt)
    store = tmp_path / "conditions"
    payloads.add(ckpt, model, store=store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
           "PXDBG_PAYLOADS": str(store), "BASF2_STANDIN_MAX_EVENTS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / example)], capture_output=True, text=True,
                          timeout=200, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model {model}:" in proc.stderr and "frame 0," in proc.stderr and "processed 1 events" in proc.stderr


def test_overlay_example_merges_like_bgoverlayexecutor():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import overlay_event_loop as ex
    finally:
        sys.path.pop(0)
    from pxdbg.shared.frame import SparseFrame

    signal = {"sensor": np.array([0, 3], np.uint8), "u": np.array([5, 1], np.uint8),
              "v": np.array([7, 2], np.uint16), "charge": np.array([30, 40], np.uint16)}
    bg = SparseFrame.from_pixels(np.array([0, 0]), np.array([5, 6]), np.array([7, 7]), np.array([200, 9]))
    merged = ex.overlay(signal, bg)
    assert merged["charge"].tolist() == [230, 40, 9]  # same pixel: 30 + 200 (no uint8 overflow); else appended
    assert merged["sensor"].tolist() == [0, 3, 0] and merged["u"].tolist() == [5, 1, 6]
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "overlay_event_loop.py"), "--events", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.count("background digits") == 3, proc.stderr
