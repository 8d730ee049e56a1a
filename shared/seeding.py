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
