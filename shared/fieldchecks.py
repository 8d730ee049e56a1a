"""Declarative checks of single decoded values (msgpack, JSON) from outside: each says why a value does not fit.

A check is a function of one value returning ``None`` when it fits and otherwise the end of a sentence, "must
be ...", such as ``"an integer in [0, 65535], got one outside"``. Its text names types, ranges and lengths but
never quotes the value itself: a hostile peer's bytes never reach a log line or an error message. Checks
compose (:func:`list_of`, :func:`nullable`), so a message schema is a table of them (see
:data:`pxdbg.shared.protocol.SCHEMA`).
"""

from __future__ import annotations

from collections.abc import Callable

#: A check: ``None`` if the value fits, else why not (a phrase that quotes no value).
Check = Callable[[object], "str | None"]

#: Longest text a :func:`text` check admits unless told otherwise, characters.
DEFAULT_TEXT_LIMIT = 4096


def type_name(value: object) -> str:
    return type(value).__name__  # safe to format whatever the value is


def integer(lo: int, hi: int) -> Check:
    """An int (not a bool) in ``[lo, hi]``."""

    def check(value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"an integer, got {type_name(value)}"
        if not lo <= value <= hi:
            return f"an integer in [{lo}, {hi}], got one outside"
        return None

    return check


def text(limit: int = DEFAULT_TEXT_LIMIT) -> Check:
    """A str of at most ``limit`` characters."""

    def check(value) -> str | None:
        if not isinstance(value, str):
            return f"a string, got {type_name(value)}"
        if len(value) > limit:
            return f"a string of at most {limit} characters, got {len(value)}"
        return None

    return check


def boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"true or false, got {type_name(value)}"


def number(value: object) -> str | None:
    """An int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"a number, got {type_name(value)}"
    return None


def list_of(item: Check, limit: int, min_len: int = 0) -> Check:
    """A list of ``min_len``..``limit`` items, each passing ``item``."""

    def check(value) -> str | None:
        if not isinstance(value, list):
            return f"a list, got {type_name(value)}"
        if not min_len <= len(value) <= limit:
            return f"a list of {min_len}..{limit} items, got {len(value)}"
        for x in value:
            why = item(x)
            if why is not None:
                return f"a list whose items are each {why}"
        return None

    return check


def map_of_scalars(limit: int = 64) -> Check:
    """A flat map of short strings to scalars or short strings (identities, producer info, snapshots)."""

    def check(value) -> str | None:
        if not isinstance(value, dict):
            return f"a map, got {type_name(value)}"
        if len(value) > limit:
            return f"a map of at most {limit} entries, got {len(value)}"
        short_text = text()
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > 64:
                return "a map with short string keys"
            if v is not None and not isinstance(v, (bool, int, float)) and short_text(v) is not None:
                return "a map of scalars and short strings"
        return None

    return check


def nullable(check: Check) -> Check:
    """``None``, or a value passing ``check``."""
    return lambda value: None if value is None else check(value)


def any_map(value: object) -> str | None:
    """A map, its entries unchecked (whoever reads it checks them further)."""
    return None if isinstance(value, dict) else f"a map, got {type_name(value)}"
