"""Stand-in of basf2's background/scripts/background.py: get_background_files, with its behaviour."""

from __future__ import annotations

import glob
import os

from basf2 import B2INFO, pretty_print_table


def get_background_files(folder=None, output_file_info=True):
    """The sorted ``*.root`` files of ``folder`` (default: $BELLE2_BACKGROUND_DIR); RuntimeError when the
    variable is unset or no file is found, as basf2's own function."""
    env_name = "BELLE2_BACKGROUND_DIR"
    if folder is None:
        if env_name not in os.environ:
            raise RuntimeError(
                f"Environment variable {env_name} for backgound files not set. Terminanting this script."
            )
        folder = os.environ[env_name]
    files = sorted(glob.glob(folder + "/*.root"))
    if not files:
        raise RuntimeError(f"No background files found in folder {folder} . Terminating this script.")
    B2INFO(f"Background files loaded from folder {folder}")
    if output_file_info:
        rows = [["- Background file name -", "- file size -"]] + [[f, os.path.getsize(f)] for f in files]
        pretty_print_table(rows, [0, 0])
    return files
