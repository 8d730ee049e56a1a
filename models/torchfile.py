"""Read a plain state_dict saved by ``torch.save`` (its zip format) as numpy arrays, without importing torch.

The parametric model is numpy code; importing torch only to read its tables costs a producer more than a
second at start. The checkpoint's pickle is read by an unpickler that knows five things: an (ordered) dict,
torch's tensor rebuild function, its storage types, and the two dict layouts pxdbg writes (a state_dict, or
``{"state_dict": ..., "pxdbg": {...}}``). Any other global is :class:`UnsupportedCheckpoint`; the caller
then reads the file with torch (``weights_only=True``), which gives the usual refusals. Nothing in the file
can run code here.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

#: torch storage classes and the numpy dtypes of their elements
_STORAGES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_MAX_PICKLE = 16 << 20  # a state_dict's pickle is names and shapes: kilobytes


class UnsupportedCheckpoint(Exception):
    """The file is not a plain little-endian torch zip state_dict this reader knows; read it with torch."""


class _Storage:
    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, np.ndarray):
        raise UnsupportedCheckpoint("a tensor without its storage")
    size, stride = tuple(int(x) for x in size), tuple(int(x) for x in stride)
    offset = int(offset)
    if any(x < 0 for x in (*size, *stride)) or offset < 0:
        raise UnsupportedCheckpoint("a negative size or stride")
    count = int(np.prod(size, dtype=np.int64)) if size else 1
    if count:  # every element the view touches must lie in the storage
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise UnsupportedCheckpoint("a tensor beyond its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:] if count else storage[:0],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)  # a copy: owns its memory, contiguous


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix = zf, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        raise UnsupportedCheckpoint(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise UnsupportedCheckpoint("an unknown persistent record")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        info = self.zf.getinfo(f"{self.prefix}/data/{key}")
        if numel < 0 or info.file_size != numel * kind.dtype.itemsize:
            raise UnsupportedCheckpoint("a storage whose size disagrees with its record")
        return np.frombuffer(self.zf.read(info), dtype=kind.dtype, count=numel)


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(state_dict as numpy arrays, pxdbg metadata or {}) of a torch zip checkpoint; raises
    :class:`UnsupportedCheckpoint` for anything else (a legacy pickle, a big-endian file, other objects)."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise UnsupportedCheckpoint("no data.pkl")
            prefix = pkl[0].split("/")[0]
            if f"{prefix}/byteorder" in zf.namelist() and zf.read(f"{prefix}/byteorder").strip() != b"little":
                raise UnsupportedCheckpoint("big-endian")
            info = zf.getinfo(pkl[0])
            if info.file_size > _MAX_PICKLE:
                raise UnsupportedCheckpoint("a large pickle")
            obj = _Unpickler(zf.read(info), zf, prefix).load()
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise UnsupportedCheckpoint(str(exc)) from None
    meta: dict = {}
    if isinstance(obj, dict) and "state_dict" in obj:
        meta = obj.get("pxdbg", {})
        obj = obj["state_dict"]
        if not isinstance(meta, dict):
            raise UnsupportedCheckpoint("pxdbg metadata that is not a dict")
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        raise UnsupportedCheckpoint("not a state_dict")
    return dict(obj), meta
