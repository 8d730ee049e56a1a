"""The errors a user can cause. Each says what was wrong and what to do, in one line.

``pxdbg`` prints a :class:`PxdbgError` as one line and exits with status 2 (1 for a pipeline failure during a
run); any other exception is a bug and keeps its traceback. Subsystems derive their own error types from
these bases (``CheckpointError``, ``PayloadError``, ``ProtocolError``, the consumer's ``PipelineError`` ...).
"""

from __future__ import annotations


class PxdbgError(Exception):
    """Base class of every error a user can cause: bad input, a missing file, a misconfiguration."""


class ConfigError(PxdbgError, ValueError):
    """A setting is invalid (an option, a spec field, an endpoint string)."""


class MissingDependencyError(PxdbgError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, feature: str):
    """Import an optional dependency, or raise :class:`MissingDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the Python package {module.split('.')[0]!r}, which is not installed; "
            f"install it with: pip install 'pxdbg[{extra}]'"
        ) from exc
