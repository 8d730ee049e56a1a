"""Print the wire codecs' figures on the default model's frames: bytes per digit and time per frame, one core.

    python tools/wire_figures.py [frames]

The numbers come from :func:`pxdbg.shared.codecs.measure` (best of several passes); ``pxdbg bench`` prints the
same table.
"""

from __future__ import annotations

import os
import sys

from pxdbg import models
from pxdbg.bench.machine import cpu_name
from pxdbg.shared import codecs, registry


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    frames = models.load(registry.DEFAULT_MODEL).frames(2024, range(n))
    digits = sum(f.n_digits for f in frames) / n
    print(
        f"{n} frames of the {registry.DEFAULT_MODEL} model, {digits:.0f} digits each; {cpu_name()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for row in codecs.measure(frames, repeat=7):
        print(
            f"{row['codec']:5s} {row['bytes_per_digit']:5.2f} bytes/digit  encode {row['encode_ms']:5.2f} ms "
            f"(+{row['added_encode_ms']:.2f})  decode {row['decode_ms']:5.2f} ms (+{row['added_decode_ms']:.2f})"
        )


if __name__ == "__main__":
    main()
