"""pxdbg calibrate: a round trip that can fail, the payload as a model like any other, and samples too small.

The "truth" is tools/structured_background.py: hot regions in (u, v), long clusters along v on some sensors,
two groups of correlated sensors and different charge spectra per layer. A model calibrated on one truth sample
must pass every two-sample check against another; the shipped (uniform) parametric model must fail the same
structure checks against it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pxdbg import models
from pxdbg.calibrate import calibrate
from pxdbg.shared import payloads
from pxdbg.shared.digitsfile import DigitsFile, write_digits
from pxdbg.shared.frame import SparseFrame
from pxdbg.validate.metrics import SampleMetrics, clusters, compare

pytestmark = pytest.mark.timeout(600)

PXDBG = [sys.executable, "-m", "pxdbg"]
TOOL = Path(__file__).resolve().parent.parent / "tools" / "structured_background.py"
# the calibrated model's correlations carry the noise of its N_CAL events; fewer validation events and the
# correlation check would lose its teeth
N_CAL, N_VAL = 300, 100
STRUCTURE_CHECKS = (
    "cluster-size distribution, layer 1",
    "cluster-size distribution, layer 2",
    "cluster-charge distribution, layer 1",
    "cluster-charge distribution, layer 2",
    "per-sensor hit-density profile along u",
    "per-sensor hit-density profile along v",
    "sensor-occupancy correlation matrix",
    "per-sensor mean hit charge",
)


def run(args, timeout=300, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    d = tmp_path_factory.mktemp("truth")
    for name, events, seed in (("cal.npz", N_CAL, 1), ("val.npz", N_VAL, 2)):
        proc = run([sys.executable, TOOL, "--events", events, "--seed", seed, "--out", d / name])
        assert proc.returncode == 0, proc.stderr
    return d / "cal.npz", d / "val.npz"


@pytest.fixture(scope="module")
def calibrated(truth):
    out = truth[0].parent / "mine.pt"
    proc = run([*PXDBG, "calibrate", truth[0], "-o", out, "-q"])
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def _metrics(frames, name):
    m = SampleMetrics(name=name)
    for f in frames:
        m.add(f)
    return m


@pytest.mark.slow
def test_round_trip_passes_where_the_uniform_model_fails(truth, calibrated):
    payload, _ = calibrated
    val = DigitsFile(truth[1])
    reference = _metrics((val.frame(i) for i in range(N_VAL)), "truth")
    mine = _metrics(models.load("parametric", checkpoint=payload).frames(1, range(N_VAL)), "calibrated")
    checks = {c.metric.split(" (worst")[0]: c for c in compare(mine, reference)}
    assert [c.line() for c in checks.values() if c.verdict != "PASS"] == []
    # the shipped model, uniform within each sensor and with one shape table for all, against the same truth
    shipped = _metrics(models.load("parametric").frames(1, range(N_VAL)), "shipped")
    uniform = {c.metric.split(" (worst")[0]: c for c in compare(shipped, reference)}
    for name in STRUCTURE_CHECKS:
        assert checks[name].verdict == "PASS" and uniform[name].verdict == "FAIL", (checks[name], uniform[name])
        # and by far more than the calibrated model misses
        assert abs(uniform[name].distance) > 1.5 * abs(checks[name].distance), name


@pytest.mark.slow
def test_calibrated_payload_is_a_model_like_any_other(calibrated, tmp_path, python_env):
    payload, stdout = calibrated
    sha = payloads.sha256_file(payload)
    assert f"(sha256 {sha}: the model identity)" in stdout
    assert "ms (CPU) per frame on one core" in stdout and "library of 256 per sensor" in stdout
    m = models.load("parametric", checkpoint=payload)
    assert m.identity.checkpoint_sha256 == sha
    a = m.frames(7, [3, 4])
    assert a[0] == m.frames(7, [3])[0] and a[1] == m.frames(7, [4])[0] and a[0] != a[1]
    for f in a:
        f.validate()
    # registered in a store, it is the default parametric payload there; local producers serve it by its sha256
    store = tmp_path / "store"
    proc = run([*PXDBG, "payload", "add", payload, "--model", "parametric", "--store", store], env=python_env)
    assert proc.returncode == 0, proc.stderr
    env = {**python_env, payloads.ENV_VAR: str(store)}
    out = tmp_path / "run.npz"
    proc = run([*PXDBG, "run", "--workers", "1", "--events", 3, "--seed", 7, "--out", out, "-q"], env=env)
    assert proc.returncode == 0, proc.stderr
    served = DigitsFile(out)
    assert served.meta["checkpoint_sha256"] == sha
    assert [served.frame(i) for i in range(3)] == m.frames(7, range(3))


@pytest.mark.slow
def test_calibration_is_reproducible_and_reads_root(truth, tmp_path):
    """The same events and seed give the same payload, whether they come from a digits file or a ROOT file."""
    pytest.importorskip("uproot")
    from pxdbg.rootio import RootDigitsWriter

    source = DigitsFile(truth[0])
    small = write_digits(tmp_path / "small.npz", (source.frame(i) for i in range(24)))
    with RootDigitsWriter(tmp_path / "small.root", {"model": "structured-background"}) as w:
        for i in range(24):
            w.append(source.frame(i))
    a = calibrate(small, seed=3).model.state_dict()
    b = calibrate(tmp_path / "small.root", seed=3).model.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_calibration_from_a_basf2_file_is_the_npz_round_trip(truth, calibrated, tmp_path):
    """The calibration sample as a basf2 file (written by ROOT from the stand-in's classes, as RootOutput writes
    them: what a Belle II user has) gives the same payload, byte for byte, as the digits file: the round trip above
    passes for it as for the npz."""
    pytest.importorskip("ROOT")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "standin"))
    try:
        import belle2_files
    finally:
        sys.path.pop(0)
    from pxdbg.shared.geometry import VXD_IDS

    source = DigitsFile(truth[0])
    events = []
    for i in range(N_CAL):
        f = source.frame(i)
        events.append(np.stack([VXD_IDS[f.sensor], f.u, f.v, f.charge], axis=1).astype(np.uint16))
    belle2_files.write_basf2_file(tmp_path / "overlay.root", events)
    out = tmp_path / "from-basf2.pt"
    proc = run([*PXDBG, "calibrate", tmp_path / "overlay.root", "-o", out, "-q"])
    assert proc.returncode == 0, proc.stderr
    assert payloads.sha256_file(out) == payloads.sha256_file(calibrated[0])


def test_samples_too_small_get_one_clear_line(truth, tmp_path):
    source = DigitsFile(truth[0])
    few = write_digits(tmp_path / "few.npz", (source.frame(i) for i in range(5)))
    proc = run([*PXDBG, "calibrate", few, "-o", tmp_path / "x.pt", "-q"])
    assert proc.returncode == 2
    assert "has 5 events; calibration needs at least 20" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    def thinned(f: SparseFrame) -> SparseFrame:
        # sensors 2.11.x and 2.12.x (index 36..39) keep only a 40 x 4 pixel window: a few clusters per event
        window = (f.u >= 100) & (f.u < 140) & (f.v >= 100) & (f.v < 104)
        keep = (f.sensor < 36) | window
        return SparseFrame(f.sensor[keep], f.u[keep], f.v[keep], f.charge[keep])

    thin = write_digits(tmp_path / "thin.npz", (thinned(source.frame(i)) for i in range(25)))
    proc = run([*PXDBG, "calibrate", thin, "-o", tmp_path / "x.pt", "-q"])
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "4 sensor(s) have fewer than 100 whole clusters" in line
    assert all(name in line for name in ("2.11.1", "2.11.2", "2.12.1", "2.12.2")) and "give a larger sample" in line
    assert not (tmp_path / "x.pt").exists()
    proc = run([*PXDBG, "calibrate", truth[0], "-o", tmp_path / "x.npz"])
    assert proc.returncode == 2 and "a .pt file" in proc.stderr
    proc = run([*PXDBG, "calibrate", tmp_path / "none.npz", "-o", tmp_path / "x.pt"])
    assert proc.returncode == 2 and "no background sample at" in proc.stderr


def test_truth_has_the_structure_it_claims(truth):
    """The truth sample is not uniform: otherwise the round trip would prove nothing."""
    f = DigitsFile(truth[1])
    frames = [f.frame(i) for i in range(40)]
    occ = np.array([fr.sensor_counts() for fr in frames], dtype=float)
    c = np.corrcoef(np.log(occ), rowvar=False)
    group_a = c[np.ix_(range(8), range(8))][~np.eye(8, dtype=bool)].mean()
    across = c[np.ix_(range(8), range(28, 40))].mean()
    assert group_a > 0.6 and abs(across) < 0.3, (group_a, across)
    # layer 2's hit charges are far above layer 1's
    charge1 = np.concatenate([fr.charge[fr.sensor < 16] for fr in frames]).mean()
    charge2 = np.concatenate([fr.charge[fr.sensor >= 16] for fr in frames]).mean()
    assert charge2 > 1.3 * charge1
    # sensor 0 has long clusters along v, sensor 1 compact ones: clusters 5 or more pixels long in v
    long_share = {}
    for s in (0, 1):
        lengths = []
        for fr in frames[:5]:
            labels, size, _ = clusters(fr)
            lo, hi = np.full(size.size, 1 << 20), np.zeros(size.size, np.int64)
            np.minimum.at(lo, labels, fr.v.astype(np.int64))
            np.maximum.at(hi, labels, fr.v.astype(np.int64))
            first = np.zeros(size.size, np.intp)
            first[labels] = np.arange(labels.size)
            lengths.append((hi - lo + 1)[fr.sensor[first] == s])
        long_share[s] = np.mean(np.concatenate(lengths) >= 5)
    assert long_share[0] > 4 * long_share[1], long_share
    # hot regions: the busiest tenth of each sensor's 10 x 16 pixel cells holds far more than a tenth of its hits
    grid = np.zeros((40, 25 * 48))
    for fr in frames:
        np.add.at(grid, (fr.sensor, (fr.u // 10).astype(int) * 48 + fr.v // 16), 1)
    top = np.sort(grid, axis=1)[:, -120:].sum(axis=1) / grid.sum(axis=1)
    assert np.all(top > 0.25), top.min()
