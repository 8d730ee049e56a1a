"""The consumer side: the client an event loop uses to get frames. It must not import torch."""

from __future__ import annotations

from pxdbg.consumer.client import BackgroundClient
from pxdbg.consumer.errors import (
    FrameTimeoutError,
    IdentityMismatchError,
    NoProducerError,
    PipelineError,
    ProducerFailure,
)
from pxdbg.consumer.options import ClientOptions

__all__ = [
    "BackgroundClient",
    "ClientOptions",
    "FrameTimeoutError",
    "IdentityMismatchError",
    "NoProducerError",
    "PipelineError",
    "ProducerFailure",
]
