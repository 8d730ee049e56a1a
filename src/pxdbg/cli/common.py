"""What the subcommands share: argument types, the progress line, the stream and output of a job."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time

from pxdbg import outputs
from pxdbg.shared.validators import count_argument, seconds_argument

log = logging.getLogger("pxdbg")

QUIET_HELP = "no progress lines and no INFO log lines: warnings, errors and the result only"


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


#: argparse types of counts and durations: the shared setting checks (:mod:`pxdbg.shared.validators`)
positive = count_argument
seconds = seconds_argument


class Progress:
    """A one-line progress report on stderr: redrawn on a terminal, every 10 % otherwise."""

    def __init__(self, total: int, what: str = "events", enabled: bool = True) -> None:
        self.total, self.what, self.enabled = total, what, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.next_pct = 10

    def update(self, done: int, extra=None) -> None:
        """Report ``done``; ``extra`` is a callable giving more text, called only when a line is printed."""
        if not self.enabled:
            return
        now = time.perf_counter()
        pct = 100 * done // max(self.total, 1)
        if self.tty and (now - self.last > 0.25 or done == self.total):
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            text = extra() if extra else ""
            sys.stderr.write(f"\r{done}/{self.total} {self.what} ({pct:3d} %) {rate:8.1f}/s {text}   ")
            if done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif not self.tty and (pct >= self.next_pct or done == self.total):
            self.next_pct = pct + 10
            rate = done / max(now - self.t0, 1e-9)
            text = extra() if extra else ""
            print(f"{done}/{self.total} {self.what} ({pct} %), {rate:.1f}/s {text}", file=sys.stderr, flush=True)


def stream(args: argparse.Namespace) -> tuple[int, bool, int]:
    """The stream seed (and whether it was drawn at random) and first frame of ``generate`` or ``run``."""
    return outputs.stream_start(
        args.seed,
        args.first_frame,
        out=getattr(args, "out", None),
        resume=getattr(args, "resume", False),
        by_event=getattr(args, "event", None) is not None,
    )


def output(args: argparse.Namespace, meta: dict) -> outputs.RunOutput:
    """The ``--out`` of ``generate`` or ``run`` (none: the events are only counted); its reports go to stderr."""
    return outputs.RunOutput(
        getattr(args, "out", None),
        args.events,
        meta,
        resume=getattr(args, "resume", False),
        force=getattr(args, "force", False),
        notify=lambda text: print(text, file=sys.stderr),
    )


def has_random_weights(model) -> bool:
    """Whether a loaded model's checkpoint is marked as seeded random weights (``pxdbg models init``)."""
    if not model.is_gan or model.checkpoint_path is None:
        return False
    from pxdbg.models import random_weights

    return random_weights.is_random(model.checkpoint_path)
