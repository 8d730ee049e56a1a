"""ROOT files written by pxdbg read back in ROOT itself and in uproot, and match the npz output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pxdbg.shared.digitsfile import DigitsFile
from pxdbg.shared.geometry import VXD_IDS

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rootio")
    for suffix in ("npz", "root"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pxdbg",
                "generate",
                "--events",
                "130",
                "--seed",
                "8",
                "--first-frame",
                "2",
                "--out",
                str(d / f"g.{suffix}"),
                "-q",
            ],
            check=True,
            timeout=150,
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pxdbg",
            "run",
            "--workers",
            "1",
            "--events",
            "5",
            "--seed",
            "8",
            "--first-frame",
            "2",
            "--out",
            str(d / "r.root"),
            "-q",
        ],
        check=True,
        timeout=150,
    )
    return d


def test_root_file_reads_back_in_root(files):
    ROOT = pytest.importorskip("ROOT")
    npz = DigitsFile(files / "g.npz")
    f = ROOT.TFile.Open(str(files / "g.root"))
    tree = f.Get("pxd_background")
    assert tree.GetEntries() == 130
    for i in (0, 99, 100, 129):  # both sides of a basket boundary
        tree.GetEntry(i)
        frame = npz.frame(i)
        assert tree.frame == i + 2
        for branch, want in (
            ("vxd_id", VXD_IDS[frame.sensor]),
            ("u", frame.u),
            ("v", frame.v),
            ("charge", frame.charge),
        ):
            got = np.asarray(list(getattr(tree, branch)), dtype=np.int64)
            np.testing.assert_array_equal(got, want.astype(np.int64))
    meta = json.loads(str(f.Get("meta").GetString()))
    assert meta["seed"] == 8 and meta["model"] == "parametric" and meta["first_frame"] == 2
    f.Close()


def test_root_file_reads_back_in_uproot_and_matches_run(files):
    uproot = pytest.importorskip("uproot")
    npz = DigitsFile(files / "g.npz")
    arrays = uproot.open(files / "g.root")["pxd_background"].arrays(library="np")
    for i in range(npz.n_events):
        frame = npz.frame(i)
        np.testing.assert_array_equal(arrays["v"][i], frame.v)
        np.testing.assert_array_equal(arrays["vxd_id"][i], VXD_IDS[frame.sensor])
        np.testing.assert_array_equal(arrays["charge"][i], frame.charge)
    run = uproot.open(files / "r.root")["pxd_background"].arrays(library="np")
    for i in range(5):
        np.testing.assert_array_equal(run["u"][i], npz.frame(i).u)
        np.testing.assert_array_equal(run["charge"][i], npz.frame(i).charge)


def test_unknown_output_suffix_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pxdbg", "generate", "--events", "1", "--out", str(tmp_path / "x.hdf5")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and ".npz or .root" in proc.stderr
