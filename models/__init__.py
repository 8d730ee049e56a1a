"""Generator models: checkpoint loading and checks, and batched per-frame generation.

Each model lives in its own module ``pxdbg.models.<name>`` with a ``Model`` class (a ``torch.nn.Module``)
and a ``generate(model)`` function returning one frame as a (40, 250, 768) uint8 tensor (the seed's
contract), plus its entry in the torch-free registry :mod:`pxdbg.shared.registry`.
:func:`load` turns a name and a checkpoint into a :class:`BackgroundModel` ready for inference,
whose :meth:`BackgroundModel.frames` generates frames from per-frame random streams.

torch is imported when a GAN is loaded (or torch-only API is used): the parametric model on the CPU loads
its checkpoint with :mod:`pxdbg.models.torchfile` and generates with numpy, so its producers start fast.
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

# torch's CPU allocator puts tensors of 2 MB and more on transparent huge pages. A GAN's activations (50 MB and
# more per call at 256 x 768) are fresh allocations on every call; on 4 kB pages each costs ~12,000 page faults,
# and the element-wise passes between convolutions ran 3x slower (see the README, "Producer speed"). torch reads
# the switch at its first large allocation, so it is set here, before any model is built; a value the user set
# (THP_MEM_ALLOC_ENABLE=0 switches it off) is kept. Without kernel support (transparent_hugepage "never") it
# changes nothing.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from pxdbg.shared import payloads, registry
from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.identity import ModelIdentity
from pxdbg.shared.seeding import frame_rng

if TYPE_CHECKING:
    import torch

#: The implemented generator models, from the registry (each a module of this package).
MODELS: tuple[str, ...] = registry.names()
DEFAULT_MODEL = registry.DEFAULT_MODEL


class CheckpointError(PxdbgError, ValueError):
    """A checkpoint cannot be used: unsafe, unreadable, or made for another model."""


def model_module(name: str) -> ModuleType:
    """The module ``pxdbg.models.<name>`` of a registered model."""
    return importlib.import_module(registry.get(name).module_name)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain state_dict with ``torch.load(weights_only=True)``; refuse anything that would run code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if not zipfile.is_zipfile(path) and magic[:1] != b"\x80":  # neither torch's zip format nor a pickle
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a PyTorch file")
    try:
        with warnings.catch_warnings():  # the refusal below says what matters; torch's protocol note is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects beyond tensors, and unpickling them could run "
            f"code. pxdbg loads only plain state_dicts (torch.load(..., weights_only=True)). If you trust "
            f"the file, convert it once: torch.save(torch.load(p, weights_only=False).state_dict(), new_p). "
            f"Detail: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: it is damaged or not a state_dict ({exc!r})") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def _which_model(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    for name in registry.names():
        net = model_module(name).Model()
        ref = net.state_dict()
        if set(ref) == set(state_dict) and all(ref[k].shape == state_dict[k].shape for k in ref):
            return name
    return None


def _load_state(net: torch.nn.Module, name: str, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    check = getattr(model_module(name), "check_state_dict", None)  # a model's own reason to refuse, if any
    problem = check(state_dict) if check is not None else None
    if problem:
        raise CheckpointError(f"checkpoint {source} does not fit the model {name!r}: {problem}.")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        fits = _which_model(state_dict)
        hint = f" It looks like a checkpoint of the model {fits!r}: load it with that model." if fits else ""
        detail = "; ".join(
            f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"checkpoint {source} does not fit the model {name!r} ({detail}).{hint}")
    import torch

    not_finite = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        raise CheckpointError(
            f"checkpoint {source} holds NaN or infinite values in {len(not_finite)} tensor(s): "
            f"{', '.join(not_finite[:5])}{' ...' if len(not_finite) > 5 else ''}; it cannot generate background"
        )
    net.load_state_dict(state_dict, strict=True)


class BackgroundModel:
    """A generator model ready for inference (eval mode, no gradients) with its identity.

    GANs run through a :class:`~pxdbg.models.engine.GanEngine` (precision, memory layout, fixed call shape,
    CUDA graphs); frame n of stream S draws its latent from its own random stream, so its pixels do not
    depend on the batch it was generated in.
    """

    def __init__(
        self,
        name: str,
        net: torch.nn.Module,
        checkpoint_sha256: str,
        checkpoint_path: Path | None,
        device: torch.device,
        precision: str = "fp32",
        *,
        images_per_call: int | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.name = name
        self.info = registry.get(name)
        self.module = model_module(name)
        self.net = net
        self.checkpoint_path = checkpoint_path
        self.device = device
        self.identity = ModelIdentity(name, checkpoint_sha256, precision)
        self.engine = None
        if self.is_gan:
            from pxdbg.models.engine import GanEngine

            self.engine = GanEngine(
                net, device, precision, info=self.info, images_per_call=images_per_call, cuda_graphs=cuda_graphs
            )
        elif precision != "fp32":
            raise ConfigError(f"the {name} model has no precision setting; use fp32")

    def __repr__(self) -> str:
        return f"BackgroundModel({self.identity}, device={self.device})"

    @property
    def is_gan(self) -> bool:
        return self.info.is_gan

    def generate(self) -> torch.Tensor:
        """One frame from torch's global random state (the seed's contract): (40, 250, 768) uint8, CPU."""
        return self.module.generate(self.net)

    def dense_frames(self, seed: int, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` of stream ``seed`` as a (B, 40, 250, 768) uint8 tensor on the model's device."""
        return self.dense_frames_for([(seed, i) for i in indices])

    def frames(self, seed: int, indices: Sequence[int]) -> list[SparseFrame]:
        """Frames ``indices`` of stream ``seed`` as sparse digits on the host (sparsified on the device)."""
        return self.frames_for([(seed, i) for i in indices])

    def dense_frames_for(self, keys: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Frames given as (stream seed, frame index) pairs, dense (B, 40, 250, 768) uint8 on the device."""
        rngs = [frame_rng(seed, i) for seed, i in keys]
        if not self.is_gan:
            import torch

            frames = self.module.generate_sparse(self.net, rngs)
            return torch.from_numpy(np.stack([f.to_dense() for f in frames])).to(self.device)
        from pxdbg.models.common import latents

        return self.engine.images(latents(rngs, self.info.latent_dim)).view(len(rngs), 40, 250, 768)

    def frames_for(self, keys: Sequence[tuple[int, int]]) -> list[SparseFrame]:
        """Frames given as (stream seed, frame index) pairs, as sparse digits on the host.

        GAN frames are sparsified on the model's device, so only digits cross to the host.
        """
        if not self.is_gan:
            return self.module.generate_sparse(self.net, [frame_rng(seed, i) for seed, i in keys])
        return self.engine.sparsify(self.dense_frames_for(keys))

    # -- what a producer sends: the one wire path, for the producer and the bench alike ----------------------
    def wire_frames_for(self, keys: Sequence[tuple[int, int]]) -> list[SparseFrame | np.ndarray]:
        """Frames ``keys`` as they go on the wire: sparse digits, or a dense host (40, 250, 768) uint8 array for
        a frame with more hits than the sparse encodings hold (see :meth:`to_wire`)."""
        if not self.is_gan:
            return self.module.generate_sparse(self.net, [frame_rng(seed, i) for seed, i in keys])
        return self.to_wire(self.dense_frames_for(keys))

    def to_wire(self, dense: torch.Tensor) -> list[SparseFrame | np.ndarray]:
        """A generated dense batch (B, 40, 250, 768) uint8 on the device, as it goes on the wire: sparsified
        by the engine (on the device, through pinned memory on CUDA), except frames above
        ``protocol.SPARSE_MAX_DIGITS`` hits, which stay dense (smaller, and an untrained GAN that hits every
        pixel is not sparsified digit by digit)."""
        from pxdbg.models.common import wire_frames
        from pxdbg.shared import protocol

        sparsify = self.engine.sparsify if self.engine is not None else None
        return wire_frames(dense, protocol.SPARSE_MAX_DIGITS, sparsify=sparsify)

    def encode(self, seed: int, idx: int, frame: SparseFrame | np.ndarray, codec: str | None = None):
        """Frame ``idx`` of stream ``seed`` (one item of :meth:`wire_frames_for`) as a ``frame`` message of this
        model's identity, its sparse encodings compressed with ``codec`` (the one negotiated with the consumer;
        None: uncompressed). Returns a :class:`pxdbg.shared.protocol.EncodedFrame`."""
        from pxdbg.shared import protocol

        return protocol.encode_frame(seed, idx, str(self.identity), frame, codec=codec)


def load(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    globaltag: str | None = None,
    device: str | torch.device = "cpu",
    stores: list[str | os.PathLike] | None = None,
    precision: str = "fp32",
    images_per_call: int | None = None,
    cuda_graphs: bool | None = None,
) -> BackgroundModel:
    """A model ready for inference.

    ``checkpoint`` is a path to a plain state_dict (read with ``weights_only=True``); ``None`` takes the
    default payload ``PXDBackgroundGenerator_<name>`` from the payload stores under ``globaltag``.
    ``precision``, ``images_per_call`` and ``cuda_graphs`` are passed to the GAN engine.
    """
    info = registry.get(name)
    if not info.is_gan and str(device) == "cpu":
        fast = _load_numpy(name, checkpoint, globaltag, stores, precision)
        if fast is not None:
            return fast
    import torch

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for, but torch sees no CUDA device here; run on the CPU (device 'cpu')"
        )
    module = model_module(name)
    if checkpoint is None:
        payload = payloads.find(name, globaltag, stores)
        path, digest = payload.path, payload.sha256
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}")
        digest = payloads.sha256_file(path)
    state_dict = read_state_dict(path)
    net = module.Model()
    _load_state(net, name, state_dict, str(path))
    net = net.to(device).eval().requires_grad_(False)
    return BackgroundModel(
        name, net, digest, path, device, precision, images_per_call=images_per_call, cuda_graphs=cuda_graphs
    )


class CpuDevice:
    """The device of a model that runs numpy code on the CPU, without torch (``str()`` and ``.type`` as
    ``torch.device("cpu")``)."""

    type = "cpu"
    index = None

    def __str__(self) -> str:
        return "cpu"

    def __repr__(self) -> str:
        return "device(type='cpu')"


def _checkpoint_path(name: str, checkpoint, globaltag, stores) -> tuple[Path, str]:
    if checkpoint is None:
        payload = payloads.find(name, globaltag, stores)
        return payload.path, payload.sha256
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    return path, payloads.sha256_file(path)


def _load_numpy(name: str, checkpoint, globaltag, stores, precision: str) -> BackgroundModel | None:
    """A numpy model (the parametric one) loaded without torch, or None where its checkpoint needs torch to read
    (then :func:`load` reads it with torch, with the usual checks and refusals)."""
    from pxdbg.models import torchfile

    module = model_module(name)
    if not hasattr(module, "Sampler"):
        return None
    path, digest = _checkpoint_path(name, checkpoint, globaltag, stores)
    try:
        state, _ = torchfile.read(path)
    except torchfile.UnsupportedCheckpoint:
        return None
    expected = module.BUFFERS
    if set(state) != set(expected) or any(state[k].shape != expected[k][0] for k in expected):
        return None  # torch's loader names what is missing or of the wrong shape
    not_finite = [k for k, v in state.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if not_finite:
        raise CheckpointError(
            f"checkpoint {path} holds NaN or infinite values in {len(not_finite)} tensor(s): "
            f"{', '.join(not_finite[:5])}{' ...' if len(not_finite) > 5 else ''}; it cannot generate background"
        )
    sampler = module.Sampler({k: state[k].astype(expected[k][1]) for k in expected})
    return BackgroundModel(name, sampler, digest, path, CpuDevice(), precision)


def load_spec(spec, *, check_sample: bool = True, **engine_options) -> BackgroundModel:
    """The model a :class:`~pxdbg.shared.spec.ProducerSpec` names, ready for inference.

    A spec that names its checkpoint by ``checkpoint_sha256`` as well is checked against the file actually
    loaded: a mismatch is a :class:`CheckpointError`, never a silent substitution. ``check_sample`` generates
    one frame (the producer's warm-up) and refuses a checkpoint whose frames are empty.
    """
    model = load(
        spec.model,
        spec.checkpoint,
        globaltag=spec.globaltag,
        device=spec.device,
        precision=spec.precision,
        **engine_options,
    )
    if spec.checkpoint_sha256 is not None and model.identity.checkpoint_sha256 != spec.checkpoint_sha256:
        raise CheckpointError(
            f"checkpoint {model.checkpoint_path} has sha256 {model.identity.checkpoint_sha256}, but "
            f"{spec.checkpoint_sha256} was asked for; give the checkpoint that was asked for, or drop the checksum"
        )
    if check_sample:
        check_sample_frame(model)
    return model


def check_sample_frame(model: BackgroundModel) -> None:
    """Generate one frame and refuse a model whose output is no background: no hit at all (a broken or
    all-zero network) or charges outside 1..255 ADC."""
    (frame,) = model.frames(seed=0, indices=[0])
    if frame.n_digits == 0:
        raise CheckpointError(
            f"checkpoint {model.checkpoint_path} generates empty frames (a sample frame has no "
            f"hit); it is not a trained {model.name} background model"
        )
    if int(frame.charge.min()) < 1:
        raise CheckpointError(f"checkpoint {model.checkpoint_path} generates hits of charge 0 ADC")


def check_checkpoint(name: str, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a safe checkpoint that loads strictly into ``name``."""
    net = model_module(name).Model()
    _load_state(net, name, read_state_dict(path), str(path))
