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


def _gan(name: str, occupancy: float | None, precision: str = "fp32", device: str = "cpu",
         images_per_call: int | None = None):
    import torch

    from pxdbg import models

    net = models.model_module(name).Model().eval()
    if occupancy is not None:
        # Trained-like output: an untrained generator's output varies by ~0.2 % around one value. Scale the
        # output layer so its pre-activation spreads with unit width (most pixels then sit deep below the
        # threshold, as in trained models) and set its bias so a share ``occupancy`` of pixels is hit.
        with torch.inference_mode():
            z = torch.randn(1, 96, generator=torch.Generator().manual_seed(0))
            y = net(z)[0, 0]
            pre = torch.atanh(y.clamp(-0.999999, 0.999999)).flatten()[::5]
            last = net.features[20] if name == "convnet" else net.conv
            last.weight.mul_(1.0 / float(pre.std()))
            last.bias.copy_((last.bias - float(pre.mean())) / float(pre.std()))
            y = net(z)[0, 0]
            pre = torch.atanh(y.clamp(-0.999999, 0.999999)).flatten()[::5]
            # a pixel is hit (>= 1 ADC) when tanh(pre) > 2 log(2) / log(256) - 1 = -0.75
            last.bias.add_(float(torch.atanh(torch.tensor(-0.75)) - torch.quantile(pre, 1 - occupancy)))
    return models.BackgroundModel(name, net.to(device), "0" * 64, None, torch.device(device), precision,
                                  images_per_call=images_per_call)


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
    print(f"1 producer  {t['frames_per_s_1_producers']:7.1f} frames/s")
    print(f"2 producers {t['frames_per_s_2_producers']:7.1f} "
          f"frames/s (this machine has {os.cpu_count()} cores, shared with the consumer)")
    return result


# -- producer speed and fidelity (pxdbg bench --producer) ------------------------------------------------------
def macs_per_image(net) -> int:
    """Multiply-adds of one image through ``net`` (convolutions and linear layers), counted with hooks."""
    import torch

    total = 0

    def conv(mod, inp, out):
        nonlocal total
        total += out[0].numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    def linear(mod, inp, out):
        nonlocal total
        total += mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(conv) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 96, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return total


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device, precision: str) -> float:
    """A large matrix product on the device, in the precision's arithmetic: the practical peak, TFLOP/s."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = 8192 if device.type == "cuda" else 4096
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 4
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _fidelity(ref, other) -> dict:
    """Changes of ``other`` against ``ref`` (uint8 images on one device): pixels, occupancy, mean hit charge."""
    changed = float((ref != other).float().mean())
    occ_ref, occ = float((ref > 0).float().mean()), float((other > 0).float().mean())
    q_ref = float(ref[ref > 0].float().mean()) if occ_ref else float("nan")
    q = float(other[other > 0].float().mean()) if occ else float("nan")
    return {"pixels_changed": changed, "occupancy_rel_change": occ / occ_ref - 1 if occ_ref else float("nan"),
            "mean_hit_adc_rel_change": q / q_ref - 1 if occ_ref else float("nan"), "occupancy": occ_ref}


def bench_producer(args) -> dict:
    import builtins
    import functools
    import sys

    import torch

    from pxdbg import models
    from pxdbg.models.common import generate_images, latents
    from pxdbg.shared.seeding import frame_rng

    print = functools.partial(builtins.print, file=sys.stderr if args.json else sys.stdout)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device here")
    quick = args.quick
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    precisions = ("fp32", "tf32", "bf16", "fp16") if cuda else ("fp32", "bf16")
    batches = ((1, 4, 8) if quick else (1, 4, 8, 16)) if cuda else (1,)
    name_dev = torch.cuda.get_device_name(device) if cuda else f"{_cpu_name()}, {threads} threads"
    result = {"device": name_dev, "rows": [], "peak_tflops": {}}
    print(f"pxdbg bench --producer on {name_dev}; GAN weights random, last bias set for ~1 % occupancy")
    for p in precisions:
        result["peak_tflops"][p] = peak_tflops(device, p)
    print("practical peak (matrix product): " + ", ".join(f"{p} {v:.1f} TFLOP/s"
                                                            for p, v in result["peak_tflops"].items()))
    header = (f"{'model':8s} {'prec':5s} {'frames/call':>11s} {'frames/s':>9s} {'s/event':>8s} {'TFLOP/s':>8s} "
              f"{'of peak':>7s} {'pixels chg':>10s} {'occ chg':>8s} {'adc chg':>8s}")
    print(header)
    keys = [(12345, i) for i in range(max(batches) * (2 if cuda else 1))]
    for name in ("convnet", "resnet"):
        base = _gan(name, 0.01, "fp32", args.device)
        state = {k: v.clone() for k, v in base.net.state_dict().items()}
        macs = macs_per_image(base.net)
        ref = None
        for p in precisions:
            for fpc in batches:
                m = _gan(name, None, p, args.device, images_per_call=None if not cuda else 40 * fpc)
                m.net.load_state_dict(state)
                n_frames = fpc * (2 if cuda else 1)
                if cuda:
                    m.dense_frames_for(keys[:fpc])  # warm-up and CUDA graph capture
                _sync(device)
                t0 = time.perf_counter()
                dense = m.dense_frames_for(keys[:n_frames])
                _sync(device)
                dt = time.perf_counter() - t0
                fps = n_frames / dt
                tflops = fps * 40 * macs * 2 / 1e12
                if p == "fp32" and fpc == batches[0]:
                    ref = dense[:1]
                fid = _fidelity(ref, dense[:1])
                row = {"model": name, "precision": p, "frames_per_call": fpc, "frames_per_s": fps,
                       "s_per_event": 1 / fps, "tflops": tflops, "share_of_peak": tflops / result["peak_tflops"][p],
                       **fid}
                result["rows"].append(row)
                print(f"{name:8s} {p:5s} {fpc:11d} {fps:9.2f} {1 / fps:8.2f} {tflops:8.2f} "
                      f"{100 * row['share_of_peak']:6.1f}% {100 * fid['pixels_changed']:9.3f}% "
                      f"{100 * fid['occupancy_rel_change']:+7.2f}% {100 * fid['mean_hit_adc_rel_change']:+7.2f}%")
        if not cuda:  # the seed module's configuration: fp32, one thread, 40 images per call, no channels_last
            torch.set_num_threads(1)
            seed_net = models.model_module(name).Model().eval()
            seed_net.load_state_dict(state)
            z = latents([frame_rng(*keys[0])])
            t0 = time.perf_counter()
            generate_images(seed_net, z)
            dt = time.perf_counter() - t0
            torch.set_num_threads(threads)
            result["rows"].append({"model": name, "precision": "fp32", "config": "seed default: 1 thread, 40 "
                                   "images per call", "s_per_event": dt, "frames_per_s": 1 / dt})
            print(f"{name:8s} fp32  seed default (1 thread, 40 images per call, contiguous): {dt:.2f} s/event")
    return result

