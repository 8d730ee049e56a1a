from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from pxdbg.shared import payloads


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


PXDBG = [sys.executable, "-m", "pxdbg"]
REPO = Path(__file__).resolve().parent.parent
