"""Stand-in of basf2's simulation package: the modules that matter to background overlay."""

from __future__ import annotations

import os


def add_simulation(path, components=None, bkgfiles=None, fullsim_gil_seconds: float | None = None, **kwargs):
    """As simulation/scripts/simulation.py: "background mixing or overlay input before process forking", then
    FullSim, the digitizers and the overlay executor. ``fullsim_gil_seconds`` (or the environment variable
    ``BASF2_STANDIN_FULLSIM_GIL_SECONDS``, for steering files) is the time FullSim's stand-in keeps the GIL
    per event (seconds)."""
    if fullsim_gil_seconds is None:
        fullsim_gil_seconds = float(os.environ.get("BASF2_STANDIN_FULLSIM_GIL_SECONDS", "0"))
    if bkgfiles:
        path.add_module("BGOverlayInput", inputFileNames=bkgfiles)
    path.add_module("FullSim", gil_seconds=fullsim_gil_seconds)
    path.add_module("PXDDigitizer")
    if bkgfiles:
        path.add_module("BGOverlayExecutor")
