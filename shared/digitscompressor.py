"""Compressing a digits writer's spool in the background while events are still being appended.

The writer appends raw columns to its spool and tells :class:`BackgroundCompressor` how many digits are on disk;
threads compress each block of :data:`~pxdbg.shared.digitscodec.BLOCK_DIGITS` digits as soon as every column
holds it, reading it back from the spool (page cache), and append the block's frame to ``<column>.zst`` in the
spool. zstd and numpy release the GIL, so the event loop does not wait for them; at close only the last, partial
block is left. The state is one number (digits on disk), so memory stays at one block per thread whatever the
backlog. The raw columns stay in the spool until the output is assembled, so a run killed outright resumes from
them (the compressed blocks are made again): what a file holds never depends on the timing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from pxdbg.shared.digitscodec import BLOCK_DIGITS, COLUMNS, DigitsFileError, compress_block

#: The columns each thread compresses: ``v`` costs about as much as the other three together, and two threads
#: beside the event loop keep a 2-CPU node busy without starving it.
GROUPS = (("v",), ("sensor", "u", "charge"))
#: How long one wait lasts before the other side is checked for life again (seconds).
_POLL_S = 0.5


class BackgroundCompressor:
    """Threads that compress the spool ``spool``'s columns block by block; ``ready`` digits are on disk."""

    def __init__(self, spool: Path, output: Path, ready: int = 0) -> None:
        self._spool = spool
        self._output = output
        self._cond = threading.Condition()
        self._ready = ready
        self._final: int | None = None
        self._blocks_done = [0] * len(GROUPS)
        self._finished = [False] * len(GROUPS)
        self._stopping = False
        self._error: BaseException | None = None
        # blocks of an earlier run are made again from its raw columns
        self._sinks = {name: open(spool / f"{name}.zst", "wb") for name, _ in COLUMNS}
        self._threads = [
            threading.Thread(target=self._run, args=(g,), name=f"pxdbg-compress-{output.name}-{g}", daemon=True)
            for g in range(len(GROUPS))
        ]
        for thread in self._threads:
            thread.start()

    # -- the writer's side -------------------------------------------------------------------------------------
    def advance(self, ready: int) -> None:
        """``ready`` digits of every column are on disk. Raises a thread's failure, if one had one."""
        with self._cond:
            self._raise_failure()
            self._ready = ready
            if any(self._block_ready(g) for g in range(len(GROUPS))):
                self._cond.notify_all()

    def finish(self, total: int) -> None:
        """Compress up to ``total`` digits (the last block too) and close the ``.zst`` files; returns when they are
        whole. Waits as long as the backlog takes, checking that the threads live."""
        with self._cond:
            self._raise_failure()
            self._ready = self._final = total
            self._cond.notify_all()
            while not all(self._finished):
                self._raise_failure()
                if not all(t.is_alive() for g, t in enumerate(self._threads) if not self._finished[g]):
                    raise RuntimeError("a background compressor thread ended without finishing or failing")
                self._cond.wait(_POLL_S)
            self._raise_failure()

    def cancel(self) -> None:
        """Tell the threads to stop after the block in hand, without waiting (a writer dropped unclosed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop the threads (an abort, or a failure elsewhere) and close their files; what they wrote stays."""
        self.cancel()
        for thread in self._threads:
            thread.join(timeout=60)  # at most one block in flight each: well under a second
            if thread.is_alive():
                raise RuntimeError(f"{thread.name} did not stop within 60 s")
        for sink in self._sinks.values():
            try:
                sink.close()
            except OSError:
                pass  # a full disk, already reported by the thread that wrote it; the spool is resumed from raw

    def _raise_failure(self) -> None:
        if self._error is not None:
            exc = self._error
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise DigitsFileError(
                f"compressing {self._output} failed ({why}); its events are kept in {self._spool}: "
                f"run the same command with --resume to finish it"
            )

    def _block_ready(self, group: int) -> bool:
        return self._ready >= (self._blocks_done[group] + 1) * BLOCK_DIGITS

    # -- the threads --------------------------------------------------------------------------------------------
    def _run(self, group: int) -> None:
        names = GROUPS[group]
        dtypes = dict(COLUMNS)
        fds = {}
        try:
            for name in names:
                fds[name] = os.open(self._spool / name, os.O_RDONLY)
            while True:
                with self._cond:
                    while not self._stopping and self._final is None and not self._block_ready(group):
                        self._cond.wait(_POLL_S)
                    if self._stopping:
                        return
                    start, upto, final = self._blocks_done[group] * BLOCK_DIGITS, self._ready, self._final
                if final is not None and start >= final:
                    break
                end = min(start + BLOCK_DIGITS, upto)
                for name in names:
                    self._sinks[name].write(self._compress(fds[name], name, np.dtype(dtypes[name]), start, end))
                with self._cond:
                    self._blocks_done[group] += 1
            for name in names:
                self._sinks[name].close()
            with self._cond:
                self._finished[group] = True
                self._cond.notify_all()
        except BaseException as exc:  # surfaced at the writer's next append or close, as one line
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            for fd in fds.values():
                os.close(fd)
            for name in names:  # what was written stays (a stopped writer's spool is resumed or dropped)
                try:
                    self._sinks[name].close()
                except OSError as exc:  # its buffer could not be written (a full disk): the blocks are redone
                    with self._cond:
                        self._error = self._error or exc
                        self._cond.notify_all()

    @staticmethod
    def _compress(fd: int, name: str, dtype: np.dtype, start: int, end: int) -> bytes:
        """Digits ``start:end`` of one raw spool column as their zstd frame (the digit before ``start`` is read
        too: the first difference is from it)."""
        first = max(start - 1, 0)
        nbytes = (end - first) * dtype.itemsize
        raw = os.pread(fd, nbytes, first * dtype.itemsize)
        if len(raw) != nbytes:
            raise OSError(f"the spool column {name} is shorter than the {end} digits said to be on disk")
        items = np.frombuffer(raw, dtype)
        prev = int(items[0]) if start else 0
        return compress_block(name, items[start - first :], prev)
