"""Warnings about something that may repeat without end (bad messages, refused handshakes, failed lookups),
logged sparsely: the first few in full, then one in every so many, each with the running count.

A hostile or broken peer can send a million bad messages; logging each would fill a disk and hide everything
else, and logging none would hide the attack. The count itself lives with its owner (a counter that is also
exported), so this is a function of that count, not an object with state of its own.
"""

from __future__ import annotations

import logging

#: How many occurrences are logged in full before thinning starts.
FIRST = 5
#: After the first few, one occurrence in this many is logged.
EVERY = 1000


def is_logged(n: int, *, first: int = FIRST, every: int = EVERY) -> bool:
    """True for the ``n``-th occurrence (1-based) that is logged: ``n <= first`` or ``n`` a multiple of ``every``."""
    return n <= first or n % every == 0


def warn_sparsely(
    logger: logging.Logger, n: int, msg: str, *args: object, first: int = FIRST, every: int = EVERY
) -> bool:
    """Log ``msg % args`` as a warning if the ``n``-th occurrence is one to log (:func:`is_logged`); return whether
    it was. The message should carry ``n`` itself ("... (%d so far)") so a reader knows how many were skipped."""
    if not is_logged(n, first=first, every=every):
        return False
    logger.warning(msg, *args)
    return True
