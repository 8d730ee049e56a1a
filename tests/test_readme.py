"""The README's commands, run exactly as printed.

A fenced ``sh``/``bash`` or ``python`` block right after a ``<!-- runnable -->`` line (optionally
``<!-- runnable timeout=SECONDS -->``, and ``slow`` at the end for a block that takes a minute or more: its test
is marked slow, out of the fast suite) is run: shell blocks with ``bash -e`` and the venv's ``pxdbg`` first on
``PATH``, Python blocks with this interpreter, each in a fresh directory where ``examples`` and ``tests`` link
to the repository's. A block that fails, or runs past its bound (default 120 s), fails its test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MARK = re.compile(r"^<!-- runnable(?: timeout=(\d+))?( slow)? -->$")
FENCE = re.compile(r"^```(\w*)$")
LANGUAGES = {"sh": "shell", "bash": "shell", "python": "python"}

pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    timeout: float
    slow: bool = False


def runnable_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        mark = MARK.match(line.strip())
        if not mark:
            continue
        fence = FENCE.match(lines[i + 1].strip()) if i + 1 < len(lines) else None
        if fence is None or fence.group(1) not in LANGUAGES:
            raise AssertionError(f"README.md:{i + 1}: a runnable mark must precede a sh, bash or python block")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(lines[i + 2 : end]) + "\n"
        blocks.append(Block(i + 2, LANGUAGES[fence.group(1)], code, float(mark.group(1) or 120), bool(mark.group(2))))
    return blocks


BLOCKS = runnable_blocks(README.read_text())


def _section(line: int) -> str:
    heads = [(i, h) for i, h in enumerate(README.read_text().splitlines(), 1) if h.startswith("#") and i < line]
    return heads[-1][1].lstrip("# ").strip() if heads else "top"


def test_the_readme_has_runnable_blocks_and_the_parser_finds_them():
    assert {b.language for b in BLOCKS} == {"shell", "python"}, BLOCKS
    sample = "text\n<!-- runnable timeout=5 -->\n```sh\necho hi\n```\n```sh\nnot marked\n```\n"
    assert runnable_blocks(sample) == [Block(3, "shell", "echo hi\n", 5.0)]
    slow = "<!-- runnable timeout=300 slow -->\n```python\nprint(1)\n```\n<!-- runnable slow -->\n```sh\ntrue\n```\n"
    assert runnable_blocks(slow) == [
        Block(2, "python", "print(1)\n", 300.0, True),
        Block(6, "shell", "true\n", 120.0, True),
    ]
    with pytest.raises(AssertionError, match="must precede"):
        runnable_blocks("<!-- runnable -->\n```yaml\na: 1\n```\n")


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if b.slow else []) for b in BLOCKS],
    ids=[f"line {b.line} ({_section(b.line)})" for b in BLOCKS],
)
def test_readme_block_runs_as_printed(block: Block, tmp_path):
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("PXDBG_PAYLOADS", None)  # the shipped payloads, as a user starting out has
    argv = ["bash", "-e", "-o", "pipefail", "-c", block.code] if block.language == "shell" else [sys.executable, "-"]
    proc = subprocess.run(
        argv,
        input=block.code if block.language == "python" else None,
        capture_output=True,
        text=True,
        timeout=block.timeout,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, f"README.md:{block.line} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    print(f"\nREADME.md:{block.line} ({block.language}):\n{proc.stdout.rstrip()}")
