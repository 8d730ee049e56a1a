"""The errors a :class:`~pxdbg.consumer.BackgroundClient` raises. Each is a user-facing one-line message."""

from __future__ import annotations

from pxdbg.shared.errors import PxdbgError


class PipelineError(PxdbgError, RuntimeError):
    """Base class of the errors a :class:`~pxdbg.consumer.BackgroundClient` raises."""


class NoProducerError(PipelineError, TimeoutError):
    """No producer answered within the connect timeout."""


class IdentityMismatchError(PipelineError):
    """Every producer serves another model identity than the one asked for."""


class ProducerFailure(PipelineError):
    """No usable producer is left: each failed, misbehaved or exited (the message says what each did)."""


class FrameTimeoutError(PipelineError, TimeoutError):
    """Producers are alive, but the next frame did not arrive within the frame timeout."""
