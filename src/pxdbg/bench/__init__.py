"""``pxdbg bench``: speed figures measured in one run on this machine (printed, never asserted).

One module per benchmark: :mod:`~pxdbg.bench.pipeline` (``pxdbg bench``: generation, the producer's wire path,
wire size, CURVE, consumer cost, digits files, throughput), :mod:`~pxdbg.bench.producer` (``--producer``: engine
speed and fidelity per GAN), :mod:`~pxdbg.bench.roofline` with :mod:`~pxdbg.bench.op_cost` (``--roofline``),
:mod:`~pxdbg.bench.curve` (CURVE per frame); :mod:`~pxdbg.bench.machine` holds the machine facts they print and
:mod:`~pxdbg.bench.weights` the random-weight GANs they run. torch is imported inside the functions that need it.
"""

from __future__ import annotations

from pxdbg.bench.machine import allocator, cpu_name, memory_bandwidth_gbs, peak_tflops
from pxdbg.bench.pipeline import (
    bench_consumer,
    bench_digits_file,
    bench_parametric,
    bench_producer_overhead,
    bench_producer_start,
    bench_throughput,
    bench_wire,
    print_files_and_start,
    run,
)
from pxdbg.bench.producer import BaselineEngine, bench_producer, fidelity, macs_per_image
from pxdbg.bench.roofline import (
    call_latents,
    compact,
    forward_once,
    forward_seconds,
    print_roofline,
    roofline,
    roofline_summary,
)
from pxdbg.bench.weights import gan_model, trained_like

# the names callers outside the bench used before it became a package
_trained_like, _gan, _fidelity = trained_like, gan_model, fidelity

__all__ = [
    "BaselineEngine",
    "allocator",
    "bench_consumer",
    "bench_digits_file",
    "bench_parametric",
    "bench_producer",
    "bench_producer_overhead",
    "bench_producer_start",
    "bench_throughput",
    "bench_wire",
    "call_latents",
    "compact",
    "cpu_name",
    "fidelity",
    "forward_once",
    "forward_seconds",
    "gan_model",
    "macs_per_image",
    "memory_bandwidth_gbs",
    "peak_tflops",
    "print_files_and_start",
    "print_roofline",
    "roofline",
    "roofline_summary",
    "run",
    "trained_like",
]
