"""The basf2 module against the basf2 stand-in (tests/standin: basf2's data store, overlay modules and data
objects declared in C++ through cling) and real ROOT (PyROOT, cling, TClonesArray, TFile)."""

from __future__ import annotations

import os
import subprocess
import sys
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
#: the PXD digits of the stand-in overlay file: what BGOverlayInput reads when nothing replaces them
SAMPLED = np.array([[8480, 1, 100, 200], [8480, 1, 101, 7], [16672, 3, 5, 50]], np.uint16)


@pytest.fixture
def basf2(monkeypatch):
    pytest.importorskip("ROOT", reason="the basf2 tests need PyPI's 'root' package (installed by make test)")
    monkeypatch.syspath_prepend(str(STANDIN))
    import basf2

    basf2.log_messages.clear()
    basf2.conditions.globaltags.clear()
    basf2.set_random_seed("basf2-default-seed")
    return basf2


@pytest.fixture
def bgfile(basf2, tmp_path):
    import belle2_root

    path = tmp_path / "beam-background.root"
    belle2_root.write_background_file(path, SAMPLED, events=4)
    return path


def expected(seed: int, n: int, first: int = 0) -> list[np.ndarray]:
    frames = models.load("parametric").frames(seed, range(first, first + n))
    return [np.stack([VXD_IDS[f.sensor], f.u, f.v, f.charge], axis=1).astype(np.uint16) for f in frames]


def overlay(signal: np.ndarray, background: np.ndarray) -> np.ndarray:
    """BGOverlayExecutor's rule, written independently: a background digit on a signal pixel adds its charge
    to that digit (uint16 arithmetic), any other background digit is appended in background order."""
    merged = [list(map(int, d)) for d in signal]
    where = {(d[0], d[1], d[2]): i for i, d in enumerate(merged)}
    for sid, u, v, c in background.tolist():
        if (sid, u, v) in where:
            merged[where[(sid, u, v)]][3] = (merged[where[(sid, u, v)]][3] + c) % 65536
        else:
            merged.append([sid, u, v, c])
    return np.array(merged, np.uint16).reshape(-1, 4)


def run_path(basf2, module, bgfile, events: int = 3):
    from pxdbg.background_generator import inject_simulation

    path = basf2.create_path()
    path.add_module("EventInfoSetter", evtNumList=[events])
    path.add_module("EvtGenInput")
    add_simulation = inject_simulation(module)
    add_simulation(path, bkgfiles=[str(bgfile)])
    basf2.process(path)
    return basf2.processed_events


def assert_generated_digits_reach_the_overlay(basf2, got, want):
    assert len(got) == len(want) > 0
    signal = np.array(basf2.SIGNAL_DIGITS, np.uint16)
    for event, frame in zip(got, want):
        np.testing.assert_array_equal(event["PXDDigits_beamBG"], frame)  # the file's digits were replaced
        np.testing.assert_array_equal(event["PXDDigits"], overlay(signal, frame))  # ... and merged by the executor
    # the module wrote the event array of BGOverlayInput, which is not written out; no persistent twin exists
    assert basf2.registered["event"]["PXDDigits_beamBG"] is False
    assert "PXDDigits_beamBG" not in basf2.registered["persistent"]
    assert "PXDDigits_beamBG" not in basf2.persistent_arrays


@pytest.mark.parametrize("mode", ["in-process", "workers"])
def test_generated_digits_reach_the_overlay(basf2, bgfile, monkeypatch, mode):
    from pxdbg.background_generator import PXDBackgroundGenerator

    want = expected(77, 3, first=4)
    # signal on two pixels of the first generated frame (charges add) and one pixel of its own (kept)
    signal = [
        (*want[0][0][:3].tolist(), 30),
        (*want[0][-1][:3].tolist(), 65530),
        (8480, 249, 767, 9),
    ]
    assert not any(tuple(d[:3]) == (8480, 249, 767) for d in want[0].tolist())
    monkeypatch.setattr(basf2, "SIGNAL_DIGITS", signal)
    extra = {"workers": 1, "prefetch": 2} if mode == "workers" else {}
    module = PXDBackgroundGenerator(model="parametric", seed=77, keying="position", first_frame=4, **extra)
    got = run_path(basf2, module, bgfile, events=3)
    assert_generated_digits_reach_the_overlay(basf2, got, want)
    assert got[0]["PXDDigits"][1][3] == (65530 + int(want[0][-1][3])) % 65536  # PXDDigit's unsigned short charge
    assert not any(level in ("WARNING", "ERROR") for level, _ in basf2.log_messages), basf2.log_messages


def test_module_farm_mode(basf2, bgfile, tmp_path):
    from pxdbg.background_generator import PXDBackgroundGenerator

    with producers(tmp_path) as p:
        ep = p.start("farm")
        module = PXDBackgroundGenerator(model="parametric", seed=-5, endpoints=[ep], prefetch=3, keying="position")
        got = run_path(basf2, module, bgfile, events=4)
    assert_generated_digits_reach_the_overlay(basf2, got, expected(-5, 4))


def test_seed_and_first_frame_logged_once_each_event_at_debug(basf2, bgfile):
    from pxdbg.background_generator import PXDBackgroundGenerator

    basf2.set_random_seed("run-4711")
    module = PXDBackgroundGenerator(model="parametric", keying="position", first_frame=2)  # the conditions payload
    assert "PXDBackgroundGenerator" in basf2.conditions.globaltags
    got = run_path(basf2, module, bgfile, events=3)
    seed = seed_from_framework_seed("run-4711")
    assert_generated_digits_reach_the_overlay(basf2, got, expected(seed, 3, first=2))
    mine = [(level, m) for level, m in basf2.log_messages if "PXD" in m and "background" in m.lower()]
    infos = [m for level, m in mine if level == "INFO"]
    assert sum(f"seed initialized to {seed}" in m for m in infos) == 1
    assert sum(f"event i uses frame 2 + i of stream {seed}" in m for m in infos) == 1
    debug = [m for level, m in mine if level == "DEBUG"]
    assert [f"frame {i}," in m for i, m in zip((2, 3, 4), debug)] == [True] * 3 and len(debug) == 3
    assert not any("frame 3," in m for m in infos)


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
    from pxdbg.shared.errors import ConfigError

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
    with pytest.raises(ConfigError, match="in-process only"):
        PXDBackgroundGenerator(model="parametric", workers=1, compat_rng=True)
    with pytest.raises(ConfigError, match="on the CPU"):
        PXDBackgroundGenerator(model="resnet", device="cuda", compat_rng=True)
    with pytest.raises(ConfigError, match="fp32"):
        PXDBackgroundGenerator(model="resnet", precision="bf16", compat_rng=True)
    with pytest.raises(ConfigError, match="first_frame"):
        PXDBackgroundGenerator(model="parametric", first_frame=3, compat_rng=True)
    with pytest.raises(ConfigError, match="invalid `keying`"):
        PXDBackgroundGenerator(model="parametric", keying="run")
    with pytest.raises(ConfigError, match="keying='position'"):
        PXDBackgroundGenerator(model="parametric", first_frame=3)  # event keys choose the frames themselves
    for name in ("frame_timeout", "connect_timeout", "heartbeat_timeout"):
        for bad in (0, -1, float("nan"), float("inf"), "5"):
            with pytest.raises(ValueError, match=f"`{name}`"):
                PXDBackgroundGenerator(model="parametric", **{name: bad})
    with pytest.raises(ValueError, match="above 1 s"):
        PXDBackgroundGenerator(model="parametric", heartbeat_timeout=0.8)


def test_models_come_from_the_registry(basf2, monkeypatch):
    """A model added to the registry is a valid `model` of the module, with its payload name from the entry."""
    from pxdbg.background_generator import PXDBackgroundGenerator
    from pxdbg.shared import registry

    extra = registry.ModelInfo("toy", registry.SPARSE, "a registry entry added by the test")
    monkeypatch.setitem(registry.REGISTRY, "toy", extra)
    module = PXDBackgroundGenerator(model="toy", seed=1)
    assert module.model == "toy" and registry.get(module.model).payload == "PXDBackgroundGenerator_toy"
    for name in registry.names():
        assert PXDBackgroundGenerator(model=name, seed=1).model == name


def test_in_process_checkpoint_sha256_must_match(basf2, bgfile, tmp_path):
    from pxdbg.background_generator import PXDBackgroundGenerator
    from pxdbg.shared import payloads
    from pxdbg.shared.errors import PxdbgError

    ckpt = payloads.find("parametric").path
    right = payloads.sha256_file(ckpt)
    wrong = ("0" if right[0] != "0" else "1") + right[1:]
    module = PXDBackgroundGenerator(
        model="parametric", checkpoint=str(ckpt), checkpoint_sha256=wrong, seed=3, keying="position"
    )
    with pytest.raises(PxdbgError, match=f"has sha256 {right}, but {wrong} was asked for"):
        run_path(basf2, module, bgfile, events=1)
    module = PXDBackgroundGenerator(
        model="parametric", checkpoint=str(ckpt), checkpoint_sha256=right, seed=3, keying="position"
    )
    assert_generated_digits_reach_the_overlay(basf2, run_path(basf2, module, bgfile, events=1), expected(3, 1))


def upstream_generate(net, latent_dim: int = 96):
    """The upstream models' ``generate`` (pxd/scripts/pxd/background_generator/models/{convnet,resnet}.py),
    written anew: 40 latents from torch's global normal generator on the model's device, rows 3..252 of the
    output, x -> clamp(256^clamp(x/2 + 1/2, 0, 1) - 1, 0, 255) as uint8."""
    import torch

    device = next(net.parameters()).device
    with torch.no_grad():
        x = net(torch.randn(40, latent_dim, device=device))[:, 0, 3:-3, :].cpu()
        x = x.mul_(0.5).add_(0.5).clamp_(0.0, 1.0)
        return torch.pow(256.0, x).sub_(1.0).clamp_(0.0, 255.0).to(torch.uint8)


def upstream_events(generate, seed: int, n: int) -> list[np.ndarray]:
    """The upstream module's event loop (pxd/scripts/pxd/background_generator/__init__.py), written anew:
    torch.manual_seed(seed) once at initialize, then per event one call of the model's generate function,
    whose non-zero pixels become digits in nonzero order (sensor index, u, v) with the VxdID of the index."""
    import torch

    torch.manual_seed(seed)
    events = []
    for _ in range(n):
        x = generate()
        sensor, u, v = (t.numpy() for t in x.nonzero(as_tuple=True))
        charge = x.numpy()[sensor, u, v]
        events.append(np.stack([VXD_IDS[sensor], u, v, charge], axis=1).astype(np.uint16))
    return events


def test_compat_rng_follows_the_upstream_event_loop(basf2, bgfile):
    """With compat_rng the module's events are the upstream loop's for the same model and seed (the sequence:
    one manual_seed, successive draws from torch's global state); the default per-frame streams differ."""
    from pxdbg.background_generator import PXDBackgroundGenerator
    from pxdbg.models import parametric

    module = PXDBackgroundGenerator(model="parametric", seed=-12345, compat_rng=True)
    got = run_path(basf2, module, bgfile, events=3)
    net = models.load("parametric").net
    want = upstream_events(lambda: parametric.generate(net), -12345, 3)
    assert_generated_digits_reach_the_overlay(basf2, got, want)
    assert not np.array_equal(want[0], want[1])
    assert not np.array_equal(want[0], expected(-12345, 1)[0])  # not the per-frame stream's frame 0
    infos = [m for level, m in basf2.log_messages if level == "INFO"]
    assert sum("upstream-compatible torch random sequence" in m for m in infos) == 1


def test_gan_generate_is_the_upstream_generate():
    """pxdbg's GAN ``generate`` (what compat_rng calls per event) draws and transforms as the upstream one: equal
    uint8 images from the same global seed, on a small stand-in network with the generator's interface."""
    import torch

    from pxdbg.models import convnet, resnet

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(96, 8 * 24)
            self.out = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, z):
            y = self.fc(z).view(-1, 1, 8, 24)
            y = torch.nn.functional.interpolate(y, scale_factor=32, mode="nearest")
            return self.out(y).mul(3.0).sub(2.0).tanh_()  # a few thousand pixels are hit

    torch.manual_seed(0)
    net = Small().eval()
    for ours in (convnet.generate, resnet.generate):
        mine = upstream_events(lambda ours=ours: ours(net), 99, 1)
        theirs = upstream_events(lambda: upstream_generate(net), 99, 1)
        assert len(mine) == len(theirs) == 1 and 1000 < len(mine[0]) < 40 * 250 * 768
        np.testing.assert_array_equal(mine[0], theirs[0])


@pytest.mark.slow
def test_compat_rng_resnet_event_equals_the_upstream_module(basf2, bgfile, tmp_path):
    """A real generator (resnet, trained-like output layer): the module's first event in compat mode equals the
    upstream loop run on a fresh copy of the same weights (default memory layout, as the upstream module)."""
    import torch

    from pxdbg.models import resnet

    ckpt = tmp_path / "resnet.pt"
    _sparse_checkpoint("resnet", ckpt)
    from pxdbg.background_generator import PXDBackgroundGenerator

    module = PXDBackgroundGenerator(model="resnet", checkpoint=str(ckpt), seed=2024, nintra=2, compat_rng=True)
    got = run_path(basf2, module, bgfile, events=1)
    net = resnet.Model()
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    want = upstream_events(lambda: upstream_generate(net.eval()), 2024, 1)
    assert want[0].shape[0] > 1000
    assert_generated_digits_reach_the_overlay(basf2, got, want)


def test_fast_fill_equals_the_python_loop(basf2):
    import ROOT

    from pxdbg.background_generator import DigitFiller
    from pxdbg.shared.frame import SparseFrame

    full = models.load("parametric").frames(3, [0])[0]
    edges = SparseFrame.from_pixels(
        np.array([0, 39, 39]), np.array([0, 249, 249]), np.array([0, 0, 767]), np.array([1, 255, 7])
    )
    fast, slow = DigitFiller(), DigitFiller(force_python=True)
    assert fast.fast and not slow.fast
    a, b = ROOT.TClonesArray("Belle2::PXDDigit"), ROOT.TClonesArray("Belle2::PXDDigit")
    fast.fill(a, edges)
    slow.fill(b, edges)
    np.testing.assert_array_equal(basf2.read_digits(a), basf2.read_digits(b))
    assert basf2.read_digits(a).tolist() == [
        [8480, 0, 0, 1],
        [2 << 13 | 12 << 8 | 2 << 5, 249, 0, 255],
        [2 << 13 | 12 << 8 | 2 << 5, 249, 767, 7],
    ]
    part = SparseFrame(full.sensor[:3000], full.u[:3000], full.v[:3000], full.charge[:3000])  # the loop is slow
    fast.fill(a, part)
    slow.fill(b, part)
    assert basf2.read_digits(a).shape == (part.n_digits, 4) == (3000, 4)
    np.testing.assert_array_equal(basf2.read_digits(a), basf2.read_digits(b))


def test_module_file_imports_without_basf2():
    code = (
        "import sys; import pxdbg.background_generator as m; "
        "assert 'basf2' not in sys.modules and 'ROOT' not in sys.modules and 'torch' not in sys.modules\n"
        "try:\n    m.PXDBackgroundGenerator\nexcept ImportError as e:\n    assert 'b2setup' in str(e); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_module_and_its_imports_parse_as_python38():
    """basf2 releases built on older externals run Python 3.8: the module file and what it imports at import time
    must be 3.8 syntax and must not use functools.cache (3.9). (Checked by hand with a 3.8 interpreter too.)"""
    import ast

    import pxdbg.background_generator as m

    files = [Path(m.__file__)] + [
        Path(sys.modules[name].__file__)
        for name in ("pxdbg.shared.registry", "pxdbg.shared.errors", "pxdbg.shared.geometry", "pxdbg.shared.seeding")
    ]
    for path in files:
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 8))
        uses = {
            f"{n.value.id}.{n.attr}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
        }
        assert "functools.cache" not in uses, path


def _sparse_checkpoint(name: str, path: Path) -> None:
    import torch

    from pxdbg.bench import _gan

    torch.save(_gan(name, 0.01).net.state_dict(), path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "model"), [("steering_inject_simulation.py", "resnet"), ("background_generator.py", "convnet")]
)
def test_steering_examples_run(tmp_path, example, model):
    pytest.importorskip("ROOT")
    from pxdbg.shared import payloads

    ckpt = tmp_path / f"{model}.pt"
    _sparse_checkpoint(model, ckpt)
    store = tmp_path / "conditions"
    payloads.add(ckpt, model, store=store)
    background = tmp_path / "background"
    background.mkdir()
    write = (
        f"import sys; sys.path.insert(0, {str(STANDIN)!r}); import numpy as np, belle2_root; "
        f"belle2_root.write_background_file({str(background / 'overlay.root')!r}, np.array({SAMPLED.tolist()}))"
    )
    subprocess.run([sys.executable, "-c", write], check=True, timeout=120, capture_output=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
        "PXDBG_PAYLOADS": str(store),
        "BASF2_STANDIN_MAX_EVENTS": "1",
        "BELLE2_BACKGROUND_DIR": str(background),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / example)],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model {model}:" in proc.stderr and "processed 1 events" in proc.stderr
    assert "the background of event (exp, run, evt) depends only on seed" in proc.stderr  # keying="event"
    assert "overlay.root" in proc.stderr  # get_background_files found the file in BELLE2_BACKGROUND_DIR


def test_overlay_example_merges_like_bgoverlayexecutor():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import overlay_event_loop as ex
    finally:
        sys.path.pop(0)
    from pxdbg.shared.frame import SparseFrame

    signal = {
        "sensor": np.array([0, 3], np.uint8),
        "u": np.array([5, 1], np.uint8),
        "v": np.array([7, 2], np.uint16),
        "charge": np.array([30, 40], np.uint16),
    }
    bg = SparseFrame.from_pixels(np.array([0, 0]), np.array([5, 6]), np.array([7, 7]), np.array([200, 9]))
    merged = ex.overlay(signal, bg)
    assert merged["charge"].tolist() == [230, 40, 9]  # same pixel: 30 + 200 (no uint8 overflow); else appended
    assert merged["sensor"].tolist() == [0, 3, 0] and merged["u"].tolist() == [5, 1, 6]
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "overlay_event_loop.py"), "--events", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.count("background digits") == 3, proc.stderr


def test_module_farm_mode_with_curve_keys(basf2, bgfile, tmp_path, python_env):
    """A farm that admits only allow-listed consumers: the module's key files get it the same frames."""
    import shutil
    import socket

    from pxdbg.background_generator import PXDBackgroundGenerator
    from pxdbg.shared import security
    from pxdbg.shared.errors import ConfigError

    server_public, server_secret = security.new_key_pair(tmp_path / "keys", "producer")
    client_public, client_secret = security.new_key_pair(tmp_path / "keys", "job")
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(client_public, allow)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pxdbg",
            "produce",
            "--bind",
            endpoint,
            "--curve-server-secret",
            str(server_secret),
            "--curve-allow-dir",
            str(allow),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=python_env,
    )
    try:
        with pytest.raises(ConfigError, match="CURVE keys are for a producer farm"):
            PXDBackgroundGenerator(model="parametric", seed=3, workers=1, curve_client_secret=str(client_secret))
        module = PXDBackgroundGenerator(
            model="parametric",
            seed=3,
            endpoints=[endpoint],
            prefetch=2,
            keying="position",
            curve_client_secret=str(client_secret),
            curve_server_public=str(server_public),
        )
        got = run_path(basf2, module, bgfile, events=3)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert_generated_digits_reach_the_overlay(basf2, got, expected(3, 3))
