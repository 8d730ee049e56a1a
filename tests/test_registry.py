"""The model registry: one entry per model, read by everything else; adding a model is its module + one entry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pxdbg.shared import registry
from pxdbg.shared.digitsfile import DigitsFile
from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.spec import ProducerSpec

REPO = Path(__file__).resolve().parent.parent

# The README's recipe, step 1: the model's module (a Model class and generate(model)).
TOY_MODULE = '''
"""toy: a tiny GAN-shaped generator, added to check the registry recipe."""

from __future__ import annotations

import torch
from torch import nn

from pxdbg.models.common import LATENT_DIM, seed_generate


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(LATENT_DIM, 8 * 24)
        self.conv = nn.Conv2d(1, 1, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(self.fc(z).view(-1, 1, 8, 24), scale_factor=32.0)
        return torch.tanh(4.0 * self.conv(x) - 1.5)


def generate(model: Model) -> torch.Tensor:
    return seed_generate(model)
'''

# The recipe, step 2: one registry entry.
TOY_ENTRY = """        ModelInfo("toy", GAN, "a tiny generator", latent_dim=96, output_layer="conv"),
"""


def test_every_registered_model_has_its_module_and_a_consistent_entry():
    import importlib

    assert registry.DEFAULT_MODEL in registry.REGISTRY
    assert registry.get(registry.DEFAULT_MODEL).public_checkpoint, "the embedded default ships its checkpoint"
    for name, info in registry.REGISTRY.items():
        assert info.name == name and info.kind in (registry.GAN, registry.SPARSE)
        module = importlib.import_module(info.module_name)
        assert hasattr(module, "Model") and hasattr(module, "generate")
        if info.is_gan:
            assert info.latent_dim > 0 and info.output_layer
            net = module.Model()
            assert f"{info.output_layer}.weight" in net.state_dict(), f"{name}: no output layer {info.output_layer!r}"
            if info.parameters is not None:
                n = sum(p.numel() for p in net.parameters())
                assert n == info.parameters, f"{name}: {n} parameters, the registry says {info.parameters}"
        else:
            assert hasattr(module, "generate_sparse")


def test_unknown_model_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown model 'nope'; the models are: .*parametric"):
        registry.get("nope")
    with pytest.raises(PxdbgError, match="unknown model"):
        ProducerSpec(model="nope")


def test_the_registry_imports_no_torch():
    code = (
        "import sys; from pxdbg.shared import registry, spec; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(len(registry.names()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout) >= 3


def _assemble(dst: Path) -> Path:
    """A copy of the package laid out as installed: pxdbg/ with its subpackages."""
    pkg = dst / "pxdbg"
    # copytree follows the subpackages' symlinks, so the copy holds real files that the test may edit
    shutil.copytree(REPO / "src" / "pxdbg", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_model_added_by_the_recipe_alone_runs_through_generate_and_a_local_producer(tmp_path):
    root = tmp_path / "site"
    pkg = _assemble(root)
    (pkg / "models" / "toy.py").write_text(TOY_MODULE)
    reg = pkg / "shared" / "registry.py"
    text = reg.read_text()
    anchor = "    )\n}\n"
    assert text.count(anchor) == 1, "the registry's entry list ends where the README's recipe says"
    reg.write_text(text.replace(anchor, TOY_ENTRY + anchor))

    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}

    def pxdbg(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "pxdbg", *args], capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path
        )
        assert proc.returncode == 0, f"pxdbg {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    where = subprocess.run(
        [sys.executable, "-c", "import pxdbg.models.toy as t; print(t.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(root), f"the assembled copy is not the one imported: {where}"
    ckpt = tmp_path / "toy.pt"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch; from pxdbg.models import toy; torch.manual_seed(3); "
            "torch.save(toy.Model().state_dict(), sys.argv[1])",
            str(ckpt),
        ],
        env=env,
        timeout=120,
        check=True,
    )

    assert "toy" in pxdbg("models").stdout
    gen, piped = tmp_path / "gen.npz", tmp_path / "run.npz"
    pxdbg(
        "generate",
        "--model",
        "toy",
        "--checkpoint",
        str(ckpt),
        "--events",
        "3",
        "--seed",
        "11",
        "--out",
        str(gen),
        "-q",
        "--threads",
        "1",
    )
    summary = json.loads(
        pxdbg(
            "run",
            "--workers",
            "1",
            "--model",
            "toy",
            "--checkpoint",
            str(ckpt),
            "--events",
            "3",
            "--seed",
            "11",
            "--threads",
            "1",
            "--out",
            str(piped),
            "--json",
            "-q",
        ).stdout
    )
    assert summary["model"].startswith("toy:")
    a, b = DigitsFile(gen), DigitsFile(piped)
    assert a.n_events == b.n_events == 3
    frames_a, frames_b = list(a), list(b)
    assert len(frames_a) == len(frames_b) == 3
    assert sum(f.n_digits for f in frames_a) > 0, "the toy model hits pixels, so the comparison has teeth"
    assert all(x == y for x, y in zip(frames_a, frames_b))
