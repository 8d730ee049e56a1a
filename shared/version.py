"""The package version, without importing anything heavy.

pyproject.toml is the one place it is written: an installed package reads it from its metadata, a source tree put
on ``sys.path`` by hand (no metadata) from the pyproject.toml beside it.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

UNKNOWN = "0+unknown"


def _from_pyproject(path: Path) -> str | None:
    """The ``version`` of the ``[project]`` table of ``path`` if that project is pxdbg, else None."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    # a line scan rather than tomllib, which Python 3.9 and 3.10 lack
    table = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", text + "\n[", re.MULTILINE | re.DOTALL)
    if not table or not re.search(r'^name\s*=\s*"pxdbg"\s*$', table.group(1), re.MULTILINE):
        return None
    found = re.search(r'^version\s*=\s*"([^"\n]+)"', table.group(1), re.MULTILINE)
    return found.group(1) if found else None


def _version() -> str:
    try:
        return version("pxdbg")
    except PackageNotFoundError:
        pass
    # resolve(): in a checkout src/pxdbg/shared is a symlink to the top-level shared/, beside pyproject.toml; a copy
    # with real files has it three levels up (src/pxdbg/shared)
    for folder in list(Path(__file__).resolve().parents)[:4]:
        found = _from_pyproject(folder / "pyproject.toml")
        if found:
            return found
    return UNKNOWN


__version__ = _version()
