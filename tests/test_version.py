"""The version is written once, in pyproject.toml, and read back by the package, its CLI and a bare source tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pxdbg
from pxdbg.shared import version as version_module

REPO = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")


def _declared() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_reports_the_version_pyproject_declares():
    assert pxdbg.__version__ == _declared()
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", pxdbg.__version__)


def test_the_cli_prints_it():
    out = subprocess.run(
        [sys.executable, "-m", "pxdbg", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == f"pxdbg {_declared()}"


PYPROJECT = """[build-system]
requires = ["setuptools>=64"]

[project]
name = "pxdbg"
version = "9.8.7"
dependencies = ["numpy"]

[tool.other]
version = "0.0.1"
"""


def test_the_pyproject_reader_takes_the_project_table_of_pxdbg_only(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    assert version_module._from_pyproject(path) == "9.8.7"
    path.write_text(PYPROJECT.replace('name = "pxdbg"', 'name = "other"'))
    assert version_module._from_pyproject(path) is None
    path.write_text(PYPROJECT.replace('version = "9.8.7"\n', ""))
    assert version_module._from_pyproject(path) is None, "the [tool.other] version is not the project's"
    assert version_module._from_pyproject(tmp_path / "missing.toml") is None


def _version_of_source_tree(root: Path) -> str:
    """pxdbg.__version__ as a copy under ``root``/src sees it, imported with site-packages off (-S): no metadata."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import pxdbg; print(pxdbg.__version__)"
    cmd = [sys.executable, "-S", "-c", code, str(root / "src")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True, cwd=root).stdout.strip()


@pytest.mark.timeout(120)
def test_a_source_tree_without_metadata_reads_its_pyproject(tmp_path):
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src" / "pxdbg", tmp_path / "src" / "pxdbg", ignore=ignore)  # follows the symlinks
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    assert _version_of_source_tree(tmp_path) == "9.8.7"
    (tmp_path / "pyproject.toml").unlink()
    assert _version_of_source_tree(tmp_path) == version_module.UNKNOWN
