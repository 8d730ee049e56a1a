"""Specs instead of parameter threading: what a producer runs, and how sockets are set up.

A :class:`ProducerSpec` says which model a producer serves and how it runs it. The ``produce`` parser builds one
from its options, local workers turn one back into ``pxdbg produce`` arguments, and ``BackgroundClient`` and the
basf2 module take one, so a new producer option is one field here (plus its use in the producer).
:class:`TransportOptions` holds the socket settings that :mod:`pxdbg.shared.transport`, the one choke point for
socket options, applies on both sides.

Torch-free: consumers resolve the identity they ask for from a checkpoint's checksum or the payload store.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields

from pxdbg.shared import payloads, registry
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.identity import PRECISIONS, ModelIdentity
from pxdbg.shared.validators import positive_int

#: Largest batch a producer may be asked to run in one model call.
MAX_BATCH_LIMIT = 4096


@dataclass(frozen=True)
class ProducerSpec:
    """What a producer serves and how it computes.

    ``checkpoint`` is a plain state_dict file; ``None`` takes the payload ``PXDBackgroundGenerator_<model>`` from
    the payload stores under ``globaltag``. ``checkpoint_sha256`` names a farm's checkpoint by checksum (for
    consumers that do not hold the file). ``max_batch`` and ``threads`` of ``None`` leave the producer's
    defaults.
    """

    model: str = registry.DEFAULT_MODEL
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    globaltag: str | None = None
    precision: str = "fp32"
    device: str = "cpu"
    max_batch: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        registry.get(self.model)  # a clear error for an unknown model
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        if self.checkpoint_sha256 is not None:
            digest = str(self.checkpoint_sha256).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"checkpoint_sha256 must be 64 hex digits, got {self.checkpoint_sha256!r}")
            object.__setattr__(self, "checkpoint_sha256", digest)
        if self.max_batch is not None:
            positive_int("max_batch", self.max_batch, MAX_BATCH_LIMIT)
        if self.threads is not None:
            positive_int("threads", self.threads)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a name such as 'cpu' or 'cuda', got {self.device!r}")

    @property
    def info(self) -> registry.ModelInfo:
        return registry.get(self.model)

    def replace(self, **changes) -> ProducerSpec:
        return dataclasses.replace(self, **changes)

    def identity(self, stores=None) -> ModelIdentity:
        """The identity of the frames this spec produces, resolved without torch (checksum or payload store)."""
        if self.checkpoint_sha256 is not None:
            digest = self.checkpoint_sha256
        elif self.checkpoint is not None:
            if not os.path.isfile(self.checkpoint):
                raise payloads.PayloadError(f"no checkpoint file at {self.checkpoint}")
            digest = payloads.sha256_file(self.checkpoint)
        else:
            try:
                digest = payloads.find(self.model, self.globaltag, stores).sha256
            except payloads.PayloadError as exc:
                raise payloads.PayloadError(
                    f"{exc} For a producer farm, name the farm's checkpoint by its sha256 instead "
                    f"(checkpoint_sha256=..., --checkpoint-sha256 ...)."
                ) from None
        return ModelIdentity(self.model, digest, self.precision)

    def produce_argv(self) -> list[str]:
        """The ``pxdbg produce`` options that recreate this spec (local workers start producers with them)."""
        argv = ["--model", self.model, "--precision", self.precision, "--device", self.device]
        for name, flag in (
            ("checkpoint", "--checkpoint"),
            ("globaltag", "--globaltag"),
            ("max_batch", "--max-batch"),
            ("threads", "--threads"),
        ):
            value = getattr(self, name)
            if value is not None:
                argv += [flag, str(value)]
        return argv

    # -- command line ---------------------------------------------------------------------------------
    @staticmethod
    def add_arguments(
        parser: argparse.ArgumentParser, *, compute: bool = True, farm: bool = False, prefix_help: str = ""
    ) -> None:
        """The spec's options. ``compute`` adds how the model runs (device, batch, threads); ``farm`` adds
        ``--checkpoint-sha256`` for consumers of a farm that do not hold the checkpoint file."""
        parser.add_argument(
            "--model",
            default=registry.DEFAULT_MODEL,
            choices=registry.names(),
            help="generator model (default %(default)s)",
        )
        parser.add_argument("--checkpoint", help="a plain state_dict file (default: the model's payload)")
        parser.add_argument("--globaltag", help=f"payload global tag (default {payloads.DEFAULT_GLOBALTAG})")
        parser.add_argument(
            "--precision",
            default="fp32",
            choices=PRECISIONS,
            help="GAN arithmetic: fp32 (default, exact), bf16 (CPU, GPU), fp16 and tf32 (GPU)",
        )
        if farm:
            parser.add_argument("--checkpoint-sha256", help="the farm's checkpoint, by checksum")
        if compute:
            parser.add_argument("--device", default="cpu", help=f"{prefix_help}device: cpu or cuda[:N]")
            parser.add_argument("--max-batch", type=int, help=f"{prefix_help}most frames per model call")
            parser.add_argument("--threads", type=int, help=f"{prefix_help}torch intra-op threads")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ProducerSpec:
        """A spec from parsed options (those :meth:`add_arguments` added; absent ones keep their defaults)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        return cls(**values)


@dataclass(frozen=True)
class TransportOptions:
    """Socket settings applied by :mod:`pxdbg.shared.transport` on both sides.

    ``hwm``: high-water mark, messages per peer (credits bound the queues; this is the second guard).
    ``linger_ms``: milliseconds a closing producer socket may spend delivering queued messages.
    CURVE key files (see :mod:`pxdbg.shared.security`; ``None`` reads ``PXDBG_CURVE_<FIELD>`` from the
    environment): a producer's ``curve_server_secret`` (its NAME.key_secret) and ``curve_allow_dir`` (the
    consumers' NAME.key files it admits); a consumer's ``curve_client_secret`` and ``curve_server_public`` (the
    producers' NAME.key). Paths only: key material never goes into argv.
    """

    hwm: int = 256
    linger_ms: int = 200
    curve_server_secret: str | None = None
    curve_allow_dir: str | None = None
    curve_client_secret: str | None = None
    curve_server_public: str | None = None

    def __post_init__(self) -> None:
        positive_int("hwm", self.hwm)
        if isinstance(self.linger_ms, bool) or not isinstance(self.linger_ms, int) or self.linger_ms < 0:
            raise ConfigError(f"linger_ms must be a non-negative integer, got {self.linger_ms!r}")

    def replace(self, **changes) -> TransportOptions:
        return dataclasses.replace(self, **changes)
