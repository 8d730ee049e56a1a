"""Stand-in of basf2's reconstruction package."""

from __future__ import annotations


def add_reconstruction(path, **kwargs):
    path.add_module("Reconstruction")
