"""Checks of single settings given in code or on a command line: positive seconds, positive counts.

Each raises :class:`~pxdbg.shared.errors.ConfigError` (a ``ValueError``) with one line naming the setting and
what it must be; :func:`seconds_argument` and :func:`count_argument` are the same checks as argparse types. A
bool is not a number here (``timeout=True`` is a mistake, not one second), nor is NaN or infinity a duration.
"""

from __future__ import annotations

import argparse
import math

from pxdbg.shared.errors import ConfigError


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number of seconds above zero; ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def positive_int(name: str, value: object, limit: int | None = None) -> int:
    """``value`` if it is an int of at least 1 (and at most ``limit``); ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (limit is not None and value > limit):
        bound = f"1..{limit}" if limit is not None else "a positive integer"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return value


def seconds_argument(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    try:
        return positive_seconds("the value", value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}") from None


def count_argument(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        return positive_int("the value", int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}") from None
