"""Stand-in of basf2's mdst package."""

from __future__ import annotations


def add_mdst_output(path, mc=True, filename="mdst.root", **kwargs):
    path.add_module("RootOutput", outputFileName=filename)
