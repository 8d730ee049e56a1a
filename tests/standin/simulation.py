"""Stand-in of basf2's simulation package: the modules that matter to background overlay."""

from __future__ import annotations


def add_simulation(path, components=None, bkgfiles=None, **kwargs):
    if bkgfiles:
        path.add_module("BGOverlayInput", inputFileNames=bkgfiles)
    path.add_module("FullSim")
    path.add_module("PXDDigitizer")
    if bkgfiles:
        path.add_module("BGOverlayExecutor")
