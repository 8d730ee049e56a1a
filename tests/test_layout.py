"""Static tools see the package: every ``pxdbg.*`` import resolves to a file of the checkout without running code.

The top-level folders (``shared/``, ``models/``, ``producer/``, ``consumer/``) are the subpackages; ``src/pxdbg/``
reaches them through relative symlinks, so an editable install is a plain path entry (``src/``) rather than an
import hook that only the interpreter understands. jedi stands in for IDEs, pyright and mypy here: it reads the
environment's ``sys.path`` and the files, and never executes a finder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

jedi = pytest.importorskip("jedi")

REPO = Path(__file__).resolve().parent.parent

# (source, line, column of the name to resolve, the file it must land in, relative to the checkout)
CASES = [
    ("from pxdbg.consumer.client import BackgroundClient\n", 1, 37, "consumer/client.py"),
    ("from pxdbg.shared.registry import REGISTRY\n", 1, 36, "shared/registry.py"),
    ("import pxdbg.producer.queues\n", 1, 24, "producer/queues.py"),
    ("from pxdbg.models.common import LATENT_DIM\n", 1, 34, "models/common.py"),
]


def _script(code: str) -> jedi.Script:
    # smart_sys_path=False: only the interpreter's sys.path (site-packages and its .pth entries), as an IDE on .venv
    # sees it; jedi would otherwise add the checkout itself and could find the package by accident
    project = jedi.Project(REPO, smart_sys_path=False)
    environment = jedi.create_environment(sys.executable, safe=False)
    return jedi.Script(code, path=REPO / "tests" / "_jedi_probe.py", project=project, environment=environment)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("code", "line", "column", "expected"), CASES, ids=[c[3] for c in CASES])
def test_jedi_resolves_pxdbg_imports_to_the_checkout(code, line, column, expected):
    names = _script(code).goto(line, column, follow_imports=True)
    assert names, f"jedi resolved nothing for {code.strip()!r}: the install is not visible to static tools"
    paths = {Path(n.module_path).resolve() for n in names if n.module_path is not None}
    assert paths == {(REPO / expected).resolve()}, paths


@pytest.mark.timeout(120)
def test_jedi_infers_a_method_of_the_client():
    code = "from pxdbg.consumer.client import BackgroundClient\nBackgroundClient.next\n"
    (name,) = _script(code).goto(2, 18, follow_imports=True)
    assert name.type == "function"
    assert Path(name.module_path).resolve() == (REPO / "consumer" / "client.py").resolve()


def test_the_src_package_links_each_top_level_folder():
    for sub in ("shared", "models", "producer", "consumer"):
        link = REPO / "src" / "pxdbg" / sub
        assert link.is_symlink(), f"src/pxdbg/{sub} must be a symlink to ../../{sub}"
        # relative, so a clone anywhere (and a container's COPY of src/ beside the folders) keeps it valid
        assert not Path(link.readlink()).is_absolute()
        assert link.resolve() == (REPO / sub).resolve()
