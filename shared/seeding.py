"""Per-frame random streams.

Frame ``n`` of the stream with seed ``S`` draws from its own generator, derived from (S, n) alone, so a
frame's content depends only on the model identity, S and n: never on which process made it, which batch it
was in, or what was generated before it.
"""

from __future__ import annotations

import hashlib

import numpy as np

SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1


def check_seed(seed: int) -> int:
    """Return ``seed`` as an int if it is a valid stream seed (a signed 64-bit integer)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"a stream seed is an integer, got {type(seed).__name__}")
    seed = int(seed)
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"a stream seed lies in [-2**63, 2**63 - 1], got {seed}")
    return seed


def seed_from_framework_seed(framework_seed: object) -> int:
    """The seed document's rule: the first 8 bytes of sha512(str(seed)) as a signed big-endian integer."""
    digest = hashlib.sha512(str(framework_seed).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def frame_seed_sequence(seed: int, index: int) -> np.random.SeedSequence:
    """The SeedSequence of frame ``index`` of stream ``seed`` (child ``index`` of the stream's sequence)."""
    seed = check_seed(seed)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"a frame index is a non-negative integer, got {index!r}")
    return np.random.SeedSequence(entropy=seed % 2**64, spawn_key=(int(index),))


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """A PCG64 generator for frame ``index`` of stream ``seed``."""
    return np.random.Generator(np.random.PCG64(frame_seed_sequence(seed, index)))


# -- event-keyed streams ------------------------------------------------------------------------------------
# basf2 keys its own randomness by event (framework/core/src/RandomGenerator.cc, c_eventDependent: the seed is
# hashed with the EventMetaData's experiment, run and event), so the background of an event must not depend on
# where the event falls in its job either. An event key (experiment, run, event) is packed into one frame index
# of an event-keyed stream derived from the stream seed: consecutive events of a run are consecutive indices,
# so a producer, a digits file and a prefetch window treat them like any other frames.
#: EventMetaData.h: experiment numbers lie in [0, 1023]; 10 bits
EXPERIMENT_BITS = 10
#: run numbers take the 21 bits left below 2**63 (Belle II's raw-data format keeps 14 bits of run number)
RUN_BITS = 21
#: EventMetaData.h: the event number is an unsigned int
EVENT_BITS = 32
EXPERIMENT_MAX = 2**EXPERIMENT_BITS - 1
RUN_MAX = 2**RUN_BITS - 1
EVENT_MAX = 2**EVENT_BITS - 1
_EVENT_DOMAIN = b"pxdbg/event-keyed/v1"


def event_index(experiment: int, run: int, event: int) -> int:
    """The frame index of event (experiment, run, event) in an event-keyed stream.

    Raises :class:`ValueError` for numbers outside experiment 0..1023, run 0..2097151, event 0..2**32-1.
    """
    for name, value, top in (
        ("experiment", experiment, EXPERIMENT_MAX),
        ("run", run, RUN_MAX),
        ("event", event, EVENT_MAX),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= top:
            raise ValueError(f"an event key needs {name} in 0..{top}, got {value!r}")
    return (int(experiment) << (RUN_BITS + EVENT_BITS)) | (int(run) << EVENT_BITS) | int(event)


def event_key(index: int) -> tuple[int, int, int]:
    """(experiment, run, event) of an event-keyed stream's frame ``index`` (the inverse of :func:`event_index`)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < 2**63:
        raise ValueError(f"a frame index lies in 0..2**63-1, got {index!r}")
    index = int(index)
    return index >> (RUN_BITS + EVENT_BITS), (index >> EVENT_BITS) & RUN_MAX, index & EVENT_MAX


def event_stream_seed(seed: int) -> int:
    """The seed of the event-keyed stream of stream seed ``seed``.

    A separate stream, so that event (0, 0, n) of seed S never repeats frame n of S's position-keyed stream
    (the two can meet in one production). The first 8 bytes of sha256(domain + S), signed big-endian.
    """
    seed = check_seed(seed)
    digest = hashlib.sha256(_EVENT_DOMAIN + seed.to_bytes(8, "big", signed=True)).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
