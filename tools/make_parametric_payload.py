"""Rebuild the shipped parametric payload from the shipped reference figures.

    python tools/make_parametric_payload.py

Writes shared/payloads/parametric-<sha>.pt and registers it in shared/payloads/index.json.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch

from pxdbg.models import parametric
from pxdbg.shared import payloads

store = Path(__file__).resolve().parent.parent / "shared" / "payloads"
buf = io.BytesIO()
torch.save(parametric.fit().state_dict(), buf)
with tempfile.TemporaryDirectory() as tmp:
    src = Path(tmp) / "parametric.pt"
    src.write_bytes(buf.getvalue())
    for old in store.glob("parametric-*.pt"):
        old.unlink()
    print(payloads.add(src, "parametric", store=store))
