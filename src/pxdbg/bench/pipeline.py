"""``pxdbg bench``: speed figures measured in one run on this machine (printed, never asserted).

1. generation: the parametric model per frame on one core, against convnet and resnet (random weights,
   fp32, the CPU's threads) per event in this process;
2. producer overhead: sparsify + encode + send (over a real zmq socket) as a share of the GAN model time
   for one frame, with random weights (every pixel hit: the dense fallback) and with a last-layer bias set
   for ~1 % occupancy (a trained generator's sparsity);
3. wire: bytes per digit and per frame for parametric frames, against the dense 7.68 MB, and for each wire codec
   the bytes per digit and the CPU time it adds per frame on each side; what CURVE costs per frame;
4. consumer cost per event when warm (p50 / p99 of ``next()``) with local parametric producers;
5. throughput with 1 and 2 local producers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pxdbg.bench.machine import cpu_name
from pxdbg.bench.weights import gan_model
from pxdbg.shared.cpus import usable_cpus
from pxdbg.shared.geometry import FRAME_PIXELS


def bench_parametric(quick: bool) -> dict:
    import torch

    from pxdbg import models

    out = {}
    torch.set_num_threads(1)
    par = models.load("parametric")
    par.frames(1, range(3))
    n = 30 if quick else 100
    t0 = time.perf_counter()
    frames = par.frames(1, range(n))
    out["parametric_s_per_frame_1core"] = (time.perf_counter() - t0) / n
    out["parametric_digits_per_frame"] = float(np.mean([f.n_digits for f in frames]))
    return out


def bench_producer_overhead(quick: bool) -> dict:
    """Per GAN (random weights, and set for ~1 % occupancy unless ``quick``): one frame's model time, and the
    time of the producer's own wire path after it (:meth:`BackgroundModel.to_wire` and
    :meth:`BackgroundModel.encode` in the codec a default consumer negotiates) plus a send over a zmq socket."""
    import torch
    import zmq

    from pxdbg.shared import codecs

    torch.set_num_threads(usable_cpus())
    codec = codecs.negotiate(codecs.available(), codecs.available())  # what a default consumer gets
    out = {}
    ctx = zmq.Context()
    rx, tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    rx.bind("inproc://bench")
    tx.connect("inproc://bench")
    try:
        cases = (("random_weights", None),) if quick else (("random_weights", None), ("sparse_1pct", 0.01))
        for name in ("convnet", "resnet"):
            for label, occ in cases:
                m = gan_model(name, occ)
                t0 = time.perf_counter()
                dense = m.dense_frames_for([(0, 2)])
                t1 = time.perf_counter()
                enc = m.encode(0, 2, m.to_wire(dense)[0], codec=codec)
                tx.send_multipart(enc.parts(), copy=False)
                t2 = time.perf_counter()
                rx.recv_multipart(copy=False)
                key = f"{name}_{label}"
                out[key] = {
                    "model_s": t1 - t0,
                    "post_s": t2 - t1,
                    "overhead": (t2 - t1) / (t1 - t0),
                    "occupancy": enc.header["n"] / FRAME_PIXELS,
                    "encoding": enc.header["enc"],
                    "codec": codec,
                    "wire_bytes": enc.nbytes,
                }
    finally:
        rx.close(0)
        tx.close(0)
        ctx.term()
    return out


def bench_wire() -> dict:
    from pxdbg import models
    from pxdbg.shared import protocol

    frames = models.load("parametric").frames(3, range(20))
    sizes = [
        sum(memoryview(p).nbytes for p in protocol.encode_frame(3, i, "x" * 40, f).parts())
        for i, f in enumerate(frames)
    ]
    digits = sum(f.n_digits for f in frames)
    from pxdbg.shared import codecs

    return {
        "codecs": codecs.measure(frames, repeat=5),
        "bytes_per_digit": sum(sizes) / digits,
        "bytes_per_frame": float(np.mean(sizes)),
        "dense_bytes_per_frame": FRAME_PIXELS,
        "dense_over_wire": FRAME_PIXELS / float(np.mean(sizes)),
    }


def bench_digits_file(quick: bool) -> dict:
    """Digits files of parametric frames, uncompressed (``pxdbg-digits-1``, the format before compression) and
    compressed (``pxdbg-digits-2``, the default): bytes per event against the zstd wire's, and the time to write
    (append and assemble, fsync included) and read one event, the best of three runs each, in a temporary
    directory."""
    import tempfile

    from pxdbg.models import load
    from pxdbg.shared import codecs
    from pxdbg.shared.digitsfile import DigitsFile, write_digits

    n = 40 if quick else 150
    frames = load("parametric").frames(11, range(n))
    digits = sum(f.n_digits for f in frames)
    wire = next(r for r in codecs.measure(frames[:20], ["zstd"], repeat=1) if r["codec"] == "zstd")
    out = {"events": n, "digits_per_event": digits / n, "wire_bytes_per_event": wire["bytes_per_digit"] * digits / n}
    with tempfile.TemporaryDirectory(prefix="pxdbg-bench-") as tmp:
        for name, compress in (("uncompressed", False), ("compressed", True)):
            write_s = read_s = float("inf")
            for rep in range(3):
                path = Path(tmp) / f"{name}-{rep}.npz"
                t0 = time.perf_counter()
                write_digits(path, frames, {"seed": 11}, compress=compress)
                t1 = time.perf_counter()
                DigitsFile(path)
                t2 = time.perf_counter()
                write_s, read_s = min(write_s, t1 - t0), min(read_s, t2 - t1)
                size = path.stat().st_size
                path.unlink()
            out[name] = {
                "bytes_per_event": size / n,
                "write_ms_per_event": 1e3 * write_s / n,
                "read_ms_per_event": 1e3 * read_s / n,
            }
    out["compressed_over_wire"] = out["compressed"]["bytes_per_event"] / out["wire_bytes_per_event"]
    return out


def bench_producer_start(repeat: int = 3) -> dict:
    """Seconds from starting ``pxdbg produce`` of the default (parametric) model to its serving, and whether it
    imported torch, the median of ``repeat`` starts on an ipc endpoint."""
    import subprocess
    import sys
    import tempfile

    times, torch_loaded = [], []
    with tempfile.TemporaryDirectory(prefix="pxdbg-bench-") as tmp:
        os.chmod(tmp, 0o700)
        for i in range(repeat):
            cmd = [sys.executable, "-X", "importtime", "-m", "pxdbg", "produce", "--bind", f"ipc://{tmp}/p{i}.sock"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            seen = []
            try:
                for line in proc.stderr:  # ends with the process: a start that fails is not waited for
                    seen.append(line)
                    if b" serving " in line:
                        times.append(time.perf_counter() - t0)
                        break
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
                proc.stderr.close()
            torch_loaded.append(any(line.rstrip().endswith(b"| torch") for line in seen))
    if not times:
        raise RuntimeError("pxdbg produce did not start")
    return {"start_s": float(np.median(times)), "starts": len(times), "torch_imported": any(torch_loaded)}


def print_files_and_start(result: dict, print) -> None:
    """The figures of :func:`bench_digits_file` and :func:`bench_producer_start`, as ``pxdbg bench`` prints them."""
    f = result["digits_file"]
    print(f"\n-- digits files ({f['events']} parametric events, {f['digits_per_event']:.0f} digits each) --")
    for name in ("uncompressed", "compressed"):
        r = f[name]
        print(
            f"{name:13s} {r['bytes_per_event'] / 1e3:7.1f} kB per event, write {r['write_ms_per_event']:.2f} ms, "
            f"read {r['read_ms_per_event']:.2f} ms per event"
        )
    print(
        f"the zstd wire carries {f['wire_bytes_per_event'] / 1e3:.1f} kB per event: the compressed file is "
        f"{f['compressed_over_wire']:.2f} x that (target <= 1.2)"
    )
    s = result["producer_start"]
    print(
        f"\n-- a parametric producer's start: {s['start_s']:.2f} s to serving (median of {s['starts']}; target < 1 s), "
        f"torch {'imported' if s['torch_imported'] else 'not imported'} --"
    )


def bench_consumer(quick: bool) -> dict:
    from pxdbg.consumer import BackgroundClient

    n = 150 if quick else 400
    with BackgroundClient(workers=2, seed=7, prefetch=32) as client:
        client.wait_for_producers()
        for _ in range(5):
            client.next()
        time.sleep(1.0)  # fill the window
        waits = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.next()
            waits.append(time.perf_counter() - t0)
            time.sleep(0.03)  # the event loop's own work, leaving the producers CPU
    w = np.asarray(waits) * 1e3
    return {
        "events": n,
        "wait_ms_p50": float(np.percentile(w, 50)),
        "wait_ms_p99": float(np.percentile(w, 99)),
        "wait_ms_max": float(w.max()),
    }


def bench_throughput(quick: bool) -> dict:
    from pxdbg.consumer import BackgroundClient

    n = 200 if quick else 600
    out = {}
    for k in (1, 2):
        with BackgroundClient(workers=k, seed=9, prefetch=32) as client:
            client.wait_for_producers()
            for _ in range(32):
                client.next()
            t0 = time.perf_counter()
            for _ in range(n):
                client.next()
            out[f"frames_per_s_{k}_producers"] = n / (time.perf_counter() - t0)
    return out


def run(args) -> dict:
    import builtins
    import functools
    import sys

    print = functools.partial(builtins.print, file=sys.stderr if getattr(args, "json", False) else sys.stdout)
    quick = bool(getattr(args, "quick", False))
    result = {"machine": f"{cpu_name()}, {usable_cpus()} usable CPUs", "quick": quick}
    print(f"pxdbg bench on {result['machine']}{' (quick)' if quick else ''}", flush=True)

    o = result["producer_overhead"] = bench_producer_overhead(quick)
    g = result["generation"] = bench_parametric(quick)
    g["gan_threads"] = usable_cpus()
    for name in ("convnet", "resnet"):
        g[f"{name}_s_per_event"] = o[f"{name}_random_weights"]["model_s"]
        g[f"{name}_over_parametric"] = g[f"{name}_s_per_event"] / g["parametric_s_per_frame_1core"]
    print("\n-- generation in this process (random-weight GANs, fp32, one event of 40 images) --")
    print(
        f"parametric     {1e3 * g['parametric_s_per_frame_1core']:8.2f} ms per frame on 1 core "
        f"(target <= 15 ms), {g['parametric_digits_per_frame']:.0f} digits per frame"
    )
    for name in ("convnet", "resnet"):
        print(
            f"{name:14s} {g[f'{name}_s_per_event']:8.2f} s per event on {g['gan_threads']} thread(s): "
            f"{g[f'{name}_over_parametric']:,.0f} x parametric"
        )

    print("\n-- producer overhead: sparsify + encode + send, as a share of model time (one frame, CPU) --")
    for key, v in o.items():
        print(
            f"{key:26s} model {v['model_s']:6.2f} s, post {1e3 * v['post_s']:7.1f} ms: "
            f"{100 * v['overhead']:5.2f} % (target <= 5 %); occupancy {100 * v['occupancy']:.1f} %, "
            f"{v['encoding']} encoding, codec {v['codec'] or 'none'}, {v['wire_bytes'] / 1e6:.2f} MB"
        )

    w = result["wire"] = bench_wire()
    print("\n-- wire (parametric frames) --")
    print(
        f"{w['bytes_per_digit']:.3f} bytes per digit uncompressed, {w['bytes_per_frame'] / 1e3:.1f} kB per "
        f"frame against {w['dense_bytes_per_frame'] / 1e6:.2f} MB dense ({w['dense_over_wire']:.1f} x smaller)"
    )
    for row in w["codecs"]:
        print(
            f"codec {row['codec']:5s} {row['bytes_per_digit']:5.2f} bytes per digit"
            f"{' (target <= 2.5)' if row['codec'] != 'none' else ''}, CPU per frame: "
            f"encode {row['encode_ms']:5.2f} ms (+{row['added_encode_ms']:.2f}), decode {row['decode_ms']:5.2f} ms "
            f"(+{row['added_decode_ms']:.2f}) (target <= 1 ms added)"
        )

    from pxdbg.bench import curve

    v = result["curve"] = curve.measure(frames=100 if quick else 400)
    print("\n-- CURVE (authentication and encryption) per frame, tcp loopback, 8 requests in flight --")
    for name, r in v.items():
        print(
            f"{name:24s} plaintext {1e3 * r['plaintext_s']:7.3f} ms, CURVE {1e3 * r['curve_s']:7.3f} ms: "
            f"+{1e3 * r['extra_s']:.3f} ms ({r['ratio']:.2f} x; {r['curve_mb_per_s']:.0f} MB/s with CURVE)"
        )

    c = result["consumer"] = bench_consumer(quick)
    ratio = g["convnet_s_per_event"] / (c["wait_ms_p50"] / 1e3)
    c["convnet_generation_over_wait_p50"] = ratio
    print("\n-- consumer cost per event when warm (2 local parametric producers, prefetch 32) --")
    print(
        f"next(): p50 {c['wait_ms_p50']:.3f} ms (target <= 1 ms), p99 {c['wait_ms_p99']:.3f} ms, "
        f"max {c['wait_ms_max']:.2f} ms over {c['events']} events; in-process convnet generation is "
        f"{ratio:,.0f} x the p50 (target >= 1000 x)"
    )

    result["digits_file"] = bench_digits_file(quick)
    result["producer_start"] = bench_producer_start()
    print_files_and_start(result, print)

    t = result["throughput"] = bench_throughput(quick)
    print("\n-- throughput, local parametric producers, consumer doing no work --")
    print(f"1 producer  {t['frames_per_s_1_producers']:7.1f} frames/s")
    print(
        f"2 producers {t['frames_per_s_2_producers']:7.1f} "
        f"frames/s (this machine has {usable_cpus()} usable CPUs, shared with the consumer)"
    )
    return result
