"""Where a job's events go, and what happens to them when it stops: the resumable-output policy.

An existing output is the user's data (perhaps a partial file a stop message said to resume): it is replaced
only with ``force`` and continued only with ``resume``, and a resumed output's stream (seed, first frame) is the
one it was written with unless the caller gives another. A job stopped by SIGINT or SIGTERM (a batch system's
pre-emption), or failing, keeps the events written so far as a partial file marked incomplete, or removes an
empty one; signals wait while that file is closed, since the batch system follows up with SIGKILL.

Used by ``pxdbg generate`` and ``pxdbg run``; the texts it reports go to a ``notify`` callable (the CLI prints
them on stderr).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

from pxdbg.shared.errors import ConfigError, PxdbgError

log = logging.getLogger("pxdbg.outputs")

#: The file types an output may be (the digits file, or our ROOT layout).
SUFFIXES = (".npz", ".root")


class Interrupted(Exception):
    """SIGTERM (a batch system's pre-emption or ``scancel``), handled like Ctrl-C."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within: SIGTERM raises :class:`Interrupted` in the main thread (as SIGINT raises KeyboardInterrupt)."""

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within: SIGTERM and SIGINT are ignored, so an output is finished before the job reacts to them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def refuse_overwrite(path: str, force: bool, *, resumable: bool = False) -> None:
    """Raise :class:`ConfigError` if ``path`` exists and ``force`` is not given; ``resumable``: the hint names
    ``--resume`` too."""
    if force or not os.path.exists(path):
        return
    hint = "; or continue a partial one with --resume" if resumable else ""
    raise ConfigError(f"{path} exists; name a new file, or pass --force to replace it{hint}")


def parse_seed(text: str | None) -> tuple[int, bool]:
    """A stream seed from its text (decimal, or 0x... hexadecimal), or a random one for None; and whether it was
    drawn at random (then the job prints it, so that it can be reproduced)."""
    if text is None:
        return int.from_bytes(os.urandom(8), "big", signed=True), True
    from pxdbg.shared.seeding import check_seed

    try:
        return check_seed(int(text, 0)), False
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad --seed {text!r}: {exc}") from None


def stream_start(
    seed: str | None, first_frame: int | None, *, out: str | None = None, resume: bool = False, by_event: bool = False
) -> tuple[int, bool, int]:
    """The stream seed (and whether it was drawn at random) and the first frame of a job.

    With ``resume``, an interrupted ``out`` gives the seed and first frame it was written with, where they are
    not given (an event-keyed file gives the seed its frames were keyed with). ``by_event``: the frames are
    chosen by event numbers instead, so the first frame is 0 unless given."""
    previous = None
    if resume and out:
        from pxdbg.shared.digitsfile import interrupted_meta

        previous = interrupted_meta(out)
    if previous is not None and seed is None:
        keyed = previous.get("event_keyed")  # the seed given; the file holds its frames' derived stream seed
        stream_seed, random_seed = int(keyed["seed"] if isinstance(keyed, dict) else previous["seed"]), False
    else:
        stream_seed, random_seed = parse_seed(seed)
    first = first_frame
    if first is None and by_event:
        first = 0
    elif first is None:
        first = int(previous.get("first_frame", 0)) if previous is not None else 0
    if first < 0:
        raise ConfigError(f"--first-frame must be non-negative, got {first}")
    return stream_seed, random_seed, first


def _log_warning(text: str) -> None:
    log.warning("%s", text)


class RunOutput:
    """The output file of a job, if any (``path`` None: the events are counted, not kept): new, or resumed,
    and kept as a valid partial file when the job stops.

    Use as a context manager around the job. On SIGINT/SIGTERM (inside :func:`interruptible`) the exit keeps
    the events, reports what it kept, swallows the interruption and sets :attr:`stopped` to the exit status
    (128 + signal); on any other exception it keeps the events, reports that, and lets the exception go on.
    ``notify`` receives the reports (default: a warning in the log).
    """

    def __init__(
        self,
        path: str | None,
        events: int,
        meta: dict,
        *,
        resume: bool = False,
        force: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.path, self.events, self.meta = path, events, meta
        self.stopped = 0
        self.notify = notify or _log_warning
        self.writer = None
        if self.path:
            if not self.path.endswith(SUFFIXES):
                raise ConfigError(f"--out must name a .npz or .root file, got {self.path!r}")
            if not resume:
                refuse_overwrite(self.path, force, resumable=True)
            from pxdbg.rootio import digits_writer

            self.writer = digits_writer(self.path, meta, resume=resume)
        #: events in the output so far (a resumed output's included)
        self.done = self.writer.n_events if self.writer is not None else 0
        if self.done > events:
            # the resumed events are the user's: closed as a partial output again (never dropped with its spool)
            with contextlib.suppress(OSError, PxdbgError):
                self.writer.close(complete=False)
            raise ConfigError(f"{self.path} already holds {self.done} events, more than --events {events}")

    def append(self, frame) -> None:
        if self.writer is not None:
            self.writer.append(frame)
        self.done += 1

    def __enter__(self) -> RunOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        with signals_held():
            if exc_type is None:
                if self.writer is not None:
                    self.writer.close()
                return False
            kept = self._keep()
        if issubclass(exc_type, (KeyboardInterrupt, Interrupted)):
            why = exc.signame if isinstance(exc, Interrupted) else "SIGINT"
            self.notify(f"pxdbg: stopped by {why} after {self.done} of {self.events} events; {kept}")
            self.stopped = 128 + getattr(signal, why)
            return True
        if kept and self.writer is not None:  # the error itself follows in one line; this says what was kept
            self.notify(f"pxdbg: the run failed after {self.done} of {self.events} events; {kept}")
        return False

    def _keep(self) -> str:
        """Close the events so far as a partial output (resumable), or drop an empty one; say which."""
        if self.writer is None:
            return "no output file was asked for"
        if self.writer.n_events == 0:
            self.writer.abort()
            return ""
        try:
            self.writer.close(complete=False)
        except (OSError, PxdbgError) as exc:
            return f"the events so far could not be written ({exc}); what was written stays for --resume"
        next_frame = int(self.meta.get("first_frame", 0)) + self.writer.n_events
        hint = "--resume" if self.path.endswith(".npz") else f"--first-frame {next_frame} into a new file"
        return f"{self.path} holds them (marked partial); continue with the same command and {hint}"
