"""``pxdbg bench``: speed figures measured in one run on this machine (printed, never asserted).

1. generation: the parametric model per frame on one core, against convnet and resnet (random weights,
   fp32, the CPU's threads) per event in this process;
2. producer overhead: sparsify + encode + send (over a real zmq socket) as a share of the GAN model time
   for one frame, with random weights (every pixel hit: the dense fallback) and with a last-layer bias set
   for ~1 % occupancy (a trained generator's sparsity);
3. wire: bytes per digit and per frame for parametric frames, against the dense 7.68 MB;
4. consumer cost per event when warm (p50 / p99 of ``next()``) with local parametric producers;
5. throughput with 1 and 2 local producers.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from pxdbg.shared.geometry import FRAME_PIXELS


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _gan(name: str, occupancy: float | None):
    import torch

    from pxdbg import models

    net = models.model_module(name).Model().eval()
    if occupancy is not None:  # choose the last bias so ~occupancy of pixels are hit, like a trained model
        with torch.inference_mode():
            z = torch.randn(1, 96, generator=torch.Generator().manual_seed(0))
            y = net(z)[0, 0]
            pre = torch.atanh(y.clamp(-0.999999, 0.999999))
            last = net.features[20] if name == "convnet" else net.conv
            shift = float(torch.atanh(torch.tensor(-0.75)) - torch.quantile(pre.flatten()[::5], 1 - occupancy))
            last.bias.add_(shift)
    return models.BackgroundModel(name, net, "0" * 64, None, torch.device("cpu"))


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
    return out


def bench_producer_overhead(quick: bool) -> dict:
    import torch
    import zmq

    from pxdbg.models.common import wire_frames
    from pxdbg.shared import protocol

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}
    ctx = zmq.Context()
    rx, tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    rx.bind("inproc://bench")
    tx.connect("inproc://bench")
    try:
        cases = (("random_weights", None),) if quick else (("random_weights", None), ("sparse_1pct", 0.01))
        for name in ("convnet", "resnet"):
            for label, occ in cases:
                m = _gan(name, occ)
                t0 = time.perf_counter()
                dense = m.dense_frames_for([(0, 2)])
                t1 = time.perf_counter()
                frame = wire_frames(dense, protocol.SPARSE_MAX_DIGITS)[0]
                enc = protocol.encode_frame(0, 2, "bench", frame)
                tx.send_multipart(enc.parts(), copy=False)
                t2 = time.perf_counter()
                rx.recv_multipart(copy=False)
                key = f"{name}_{label}"
                out[key] = {"model_s": t1 - t0, "post_s": t2 - t1, "overhead": (t2 - t1) / (t1 - t0),
                            "occupancy": enc.header["n"] / FRAME_PIXELS, "encoding": enc.header["enc"],
                            "wire_bytes": enc.nbytes}
    finally:
        rx.close(0)
        tx.close(0)
        ctx.term()
    return out


def bench_wire() -> dict:
    from pxdbg import models
    from pxdbg.shared import protocol

    frames = models.load("parametric").frames(3, range(20))
    sizes = [sum(memoryview(p).nbytes for p in protocol.encode_frame(3, i, "x" * 40, f).parts())
             for i, f in enumerate(frames)]
    digits = sum(f.n_digits for f in frames)
    return {"bytes_per_digit": sum(sizes) / digits, "bytes_per_frame": float(np.mean(sizes)),
            "dense_bytes_per_frame": FRAME_PIXELS, "dense_over_wire": FRAME_PIXELS / float(np.mean(sizes))}


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
    return {"events": n, "wait_ms_p50": float(np.percentile(w, 50)), "wait_ms_p99": float(np.percentile(w, 99)),
            "wait_ms_max": float(w.max())}


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
    result = {"machine": f"{_cpu_name()}, {os.cpu_count()} cores", "quick": quick}
    print(f"pxdbg bench on {result['machine']}{' (quick)' if quick else ''}", flush=True)

    o = result["producer_overhead"] = bench_producer_overhead(quick)
    g = result["generation"] = bench_parametric(quick)
    g["gan_threads"] = os.cpu_count()
    for name in ("convnet", "resnet"):
        g[f"{name}_s_per_event"] = o[f"{name}_random_weights"]["model_s"]
        g[f"{name}_over_parametric"] = g[f"{name}_s_per_event"] / g["parametric_s_per_frame_1core"]
    print("\n-- generation in this process (random-weight GANs, fp32, one event of 40 images) --")
    print(f"parametric     {1e3 * g['parametric_s_per_frame_1core']:8.2f} ms per frame on 1 core "
          f"(target <= 20 ms), {g['parametric_digits_per_frame']:.0f} digits per frame")
    for name in ("convnet", "resnet"):
        print(f"{name:14s} {g[f'{name}_s_per_event']:8.2f} s per event on {g['gan_threads']} thread(s): "
              f"{g[f'{name}_over_parametric']:,.0f} x parametric")

    print("\n-- producer overhead: sparsify + encode + send, as a share of model time (one frame, CPU) --")
    for key, v in o.items():
        print(f"{key:26s} model {v['model_s']:6.2f} s, post {1e3 * v['post_s']:7.1f} ms: "
              f"{100 * v['overhead']:5.2f} % (target <= 5 %); occupancy {100 * v['occupancy']:.1f} %, "
              f"{v['encoding']} encoding, {v['wire_bytes'] / 1e6:.2f} MB")

    w = result["wire"] = bench_wire()
    print("\n-- wire (parametric frames) --")
    print(f"{w['bytes_per_digit']:.3f} bytes per digit (target <= 4.0), {w['bytes_per_frame'] / 1e3:.1f} kB per "
          f"frame against {w['dense_bytes_per_frame'] / 1e6:.2f} MB dense ({w['dense_over_wire']:.1f} x smaller)")

    c = result["consumer"] = bench_consumer(quick)
    ratio = g["convnet_s_per_event"] / (c["wait_ms_p50"] / 1e3)
    c["convnet_generation_over_wait_p50"] = ratio
    print("\n-- consumer cost per event when warm (2 local parametric producers, prefetch 32) --")
    print(f"next(): p50 {c['wait_ms_p50']:.3f} ms (target <= 1 ms), p99 {c['wait_ms_p99']:.3f} ms, "
          f"max {c['wait_ms_max']:.2f} ms over {c['events']} events; in-process convnet generation is "
          f"{ratio:,.0f} x the p50 (target >= 1000 x)")

    t = result["throughput"] = bench_throughput(quick)
    print("\n-- throughput, local parametric producers, consumer doing no work --")
    print(f"1 producer  {t['frames_per_s_1_producers']:7.1f} frames/s\n2 producers {t['frames_per_s_2_producers']:7.1f} "
          f"frames/s (this machine has {os.cpu_count()} cores, shared with the consumer)")
    return result
