"""Seeded random weights for a GAN (``pxdbg models init``): real shapes and costs without published weights.

The output layer is scaled so that a share ``occupancy`` of the pixels is hit, as in a trained generator, so
producers, the bench and a farm run on realistic frame sizes. The frames are no background: the checkpoint says
so in its metadata (``{"state_dict": ..., "pxdbg": {"random_weights": true, ...}}``, still a plain
``weights_only`` file), ``pxdbg payload add`` refuses it without ``--force``, a producer logs it, and digits
files made from it carry ``"random_weights": true``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from pxdbg.shared import registry
from pxdbg.shared.errors import ConfigError

FORMAT = 1


def write(name: str, path: str | os.PathLike, *, seed: int = 0, occupancy: float = 0.01) -> Path:
    """Write seeded random weights of GAN ``name`` to ``path`` (a ``.pt`` file)."""
    import torch

    from pxdbg.bench import _trained_like

    info = registry.get(name)
    if not info.is_gan:
        raise ConfigError(f"{name} is not a GAN: its payload ships with pxdbg, or make one with pxdbg calibrate")
    if not 0 < occupancy < 0.5:
        raise ConfigError(f"occupancy is a share of the pixels hit, between 0 and 0.5; got {occupancy}")
    net = _trained_like(name, occupancy, seed=seed)
    meta = {"format": FORMAT, "random_weights": True, "model": name, "seed": int(seed), "occupancy": occupancy}
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    # through a buffer: torch names the archive's folder after a file it saves to, and one seed should give one
    # sha256 (one model identity) whatever the file is called
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "pxdbg": meta}, buffer)
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    return path


def metadata(path: str | os.PathLike) -> dict:
    """The ``pxdbg`` metadata of a checkpoint (``{}`` for a plain state_dict or a file this cannot read)."""
    from pxdbg.models import torchfile

    try:
        return torchfile.read(path)[1]
    except torchfile.UnsupportedCheckpoint:
        return {}


def is_random(path: str | os.PathLike) -> bool:
    return bool(metadata(path).get("random_weights"))
