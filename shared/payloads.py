"""The payload store: default checkpoints addressed by global tag (the conditions-database role).

A store is a directory with an ``index.json``::

    {"format": "pxdbg-payloads-1",
     "globaltags": {"PXDBackgroundGenerator": {
         "PXDBackgroundGenerator_parametric": {"file": "parametric-v1.pt", "sha256": "..."}}}}

Stores are searched in this order: stores given to the call, the stores set with :func:`set_stores`, the
directories in the environment variable ``PXDBG_PAYLOADS`` (separated by ``os.pathsep``), the user store
(``$XDG_DATA_HOME/pxdbg/payloads``, by default ``~/.local/share/pxdbg/payloads``) and last the store shipped
with the package (which holds the parametric payload). The first store whose index names the payload under
the global tag wins; its file's sha256 must match the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pxdbg.shared.errors import PxdbgError

DEFAULT_GLOBALTAG = "PXDBackgroundGenerator"
INDEX_NAME = "index.json"
INDEX_FORMAT = "pxdbg-payloads-1"
ENV_VAR = "PXDBG_PAYLOADS"
BUILTIN_STORE = Path(__file__).resolve().parent / "payloads"

_configured_stores: list[Path] = []


class PayloadError(PxdbgError, LookupError):
    """A payload is missing, unreadable, or its checksum does not match the store's index."""


@dataclass(frozen=True)
class Payload:
    name: str
    globaltag: str
    path: Path
    sha256: str
    store: Path


def payload_name(model: str) -> str:
    return f"PXDBackgroundGenerator_{model}"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def set_stores(stores: list[str | os.PathLike]) -> None:
    """Set the stores searched before ``PXDBG_PAYLOADS`` (the setting; an empty list clears it)."""
    _configured_stores[:] = [Path(s).expanduser() for s in stores]


def user_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "pxdbg" / "payloads"


def search_path(stores: list[str | os.PathLike] | None = None) -> list[Path]:
    path = [Path(s).expanduser() for s in (stores or [])]
    path += _configured_stores
    path += [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    path += [user_store(), BUILTIN_STORE]
    seen: list[Path] = []
    for p in path:
        if p not in seen:
            seen.append(p)
    return seen


def read_index(store: Path) -> dict:
    index_path = store / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        return {"format": INDEX_FORMAT, "globaltags": {}}
    except (OSError, ValueError) as exc:
        raise PayloadError(f"cannot read payload index {index_path}: {exc}") from exc
    if index.get("format") != INDEX_FORMAT or not isinstance(index.get("globaltags"), dict):
        raise PayloadError(f"{index_path} is not a pxdbg payload index (format {INDEX_FORMAT})")
    return index


def find(
    model: str, globaltag: str | None = None, stores: list[str | os.PathLike] | None = None, verify: bool = True
) -> Payload:
    """Locate the default payload of ``model`` under ``globaltag``; check its sha256 when ``verify``."""
    globaltag = globaltag or DEFAULT_GLOBALTAG
    name = payload_name(model)
    searched = search_path(stores)
    for store in searched:
        entry = read_index(store)["globaltags"].get(globaltag, {}).get(name)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("file", "sha256")):
            raise PayloadError(
                f"the payload index {store / INDEX_NAME} has a malformed entry for {name} in global "
                f"tag {globaltag} (it needs 'file' and 'sha256'); re-register the payload with "
                f"'pxdbg payload add PATH --model {model} --store {store}'"
            )
        path = store / entry["file"]
        if not path.is_file():
            raise PayloadError(
                f"payload {name} in global tag {globaltag} names {path}, which does not exist; "
                f"re-register it with 'pxdbg payload add --store {store} ...'"
            )
        if verify:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise PayloadError(
                    f"checksum mismatch for payload {name} ({path}): the index of {store} says "
                    f"sha256 {entry['sha256']}, the file has {actual}. The file was changed or damaged; "
                    f"restore it or register the new file with 'pxdbg payload add'."
                )
        return Payload(name, globaltag, path, entry["sha256"], store)
    where = ", ".join(str(s) for s in searched)
    hint = ""
    from pxdbg.shared import registry

    if model in registry.REGISTRY and not registry.get(model).public_checkpoint:
        hint = (
            f" There are no public weights for {model}: the Belle II default checkpoints live in the "
            f"conditions database. If you hold a checkpoint (a plain state_dict), pass it as "
            f"checkpoint=PATH (--checkpoint PATH) or register it once with "
            f"'pxdbg payload add PATH --model {model}'."
        )
    raise PayloadError(f"no payload {name} in global tag {globaltag!r} in the payload stores [{where}].{hint}")


def add(
    path: str | os.PathLike, model: str, globaltag: str | None = None, store: str | os.PathLike | None = None
) -> Payload:
    """Copy a checkpoint into ``store`` (default: the first of ``PXDBG_PAYLOADS``, else the user store) and
    register it as the default payload of ``model`` under ``globaltag``."""
    src = Path(path)
    if not src.is_file():
        raise PayloadError(f"no checkpoint file at {src}")
    globaltag = globaltag or DEFAULT_GLOBALTAG
    if store is None:
        env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
        store = env[0] if env else user_store()
    store = Path(store).expanduser()
    store.mkdir(parents=True, exist_ok=True)
    digest = sha256_file(src)
    filename = f"{model}-{digest[:16]}{src.suffix or '.pt'}"
    dst = store / filename
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    index = read_index(store)
    index["globaltags"].setdefault(globaltag, {})[payload_name(model)] = {"file": filename, "sha256": digest}
    tmp_index = store / (INDEX_NAME + ".part")
    tmp_index.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_index, store / INDEX_NAME)
    return Payload(payload_name(model), globaltag, dst, digest, store)
