"""Stand-in of basf2's background package."""

from __future__ import annotations


def get_background_files(folder=None, output_file_info=True):
    return ["standin-beam-background.root"]
