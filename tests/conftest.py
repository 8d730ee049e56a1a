from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from pxdbg.shared import payloads


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The farm tests share one emulated cluster (namespaces, addresses, Slurm ports): never on parallel workers."""
    if os.environ.get("PYTEST_XDIST_WORKER") and item.get_closest_marker("farm"):
        pytest.fail("the farm tests run one at a time: deselect them (-m 'not farm') under -n, or run them without -n")


@pytest.fixture(autouse=True)
def _isolated_payload_stores(tmp_path_factory, monkeypatch):
    """No test sees the user's payload store or PXDBG_PAYLOADS; the shipped store stays visible."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.delenv(payloads.ENV_VAR, raising=False)
    payloads.set_stores([])
    yield
    payloads.set_stores([])


@pytest.fixture
def python_env():
    """Environment for subprocesses: the same interpreter and the test's payload settings."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def random_frame(rng: np.random.Generator, occupancy: float = 0.01):
    from pxdbg.shared.frame import SparseFrame

    dense = np.zeros((40, 250, 768), np.uint8)
    mask = rng.random(dense.shape) < occupancy
    dense[mask] = rng.integers(1, 256, int(mask.sum()))
    return SparseFrame.from_dense(dense), dense


@pytest.fixture
def frame_factory():
    return random_frame


#: Narrow widths of each GAN: the published layers, shapes and names at a fraction of the cost, for tests of structure
#: (folding, engines, batching); each model keeps one full-size test of the same kind in the slow suite.
NARROW_WIDTHS = {
    "convnet": (32, 32, 16, 16, 8, 8),
    "resnet": (32, 32, 16, 16, 8, 8),
    "ieagan": ((16, 16), (16, 8), (8, 8), (8, 8), (8, 4), (4, 4)),
}


@pytest.fixture
def narrow_widths() -> dict[str, tuple]:
    return NARROW_WIDTHS


@pytest.fixture
def narrow_gan():
    """``narrow_gan(name)``: a GAN of that name with NARROW_WIDTHS channels, initialised from a fixed seed (imports
    torch). Unseeded, its output's spread varied from run to run, and a test that needs a non-constant output
    failed once in CI (std 0.0010 against its bound of 0.001)."""
    import importlib

    import torch

    def build(name: str, seed: int = 0):
        with torch.random.fork_rng(devices=[]):  # the global generator's state is left as it was
            torch.manual_seed(seed)
            return importlib.import_module(f"pxdbg.models.{name}").Model(NARROW_WIDTHS[name])

    return build


PXDBG = [sys.executable, "-m", "pxdbg"]
REPO = Path(__file__).resolve().parent.parent
