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


def _trained_like(name: str, occupancy: float | None, seed: int = 0):
    """A random-weight GAN of model ``name`` (fp32, eval mode, CPU) whose output looks trained.

    An untrained generator's output varies by ~0.2 % around one value. With ``occupancy`` the output layer
    (the registry's ``output_layer``) is scaled so its pre-activation spreads with unit width (most pixels
    then sit deep below the threshold, as in trained models) and its bias is set so a share ``occupancy`` of
    the pixels is hit. A spectrally normalised output layer divides the scale out; its bias still sets the
    occupancy.
    """
    import importlib

    import torch

    from pxdbg.models.common import output_to_adc
    from pxdbg.models.fold import hit_threshold
    from pxdbg.shared import registry

    info = registry.get(name)
    module = importlib.import_module(info.module_name)
    with torch.random.fork_rng(devices=[]):  # the same weights in every run, torch's global state untouched
        torch.manual_seed(seed)
        net = module.Model().eval().requires_grad_(False)
    if occupancy is None:
        return net
    g = torch.Generator().manual_seed(0)
    k = info.images_per_event if info.conditional else 1
    z = torch.randn(k, info.latent_dim, generator=g)
    labels = torch.arange(k) % info.images_per_event

    def pre_activation():
        y = net(z, labels) if info.conditional else net(z)
        return torch.atanh(y[:, 0].clamp(-0.999999, 0.999999)).flatten()[::5]

    # a pixel is hit (>= 1 ADC, or the model's own cut) when tanh(pre) exceeds the model's threshold
    threshold = hit_threshold(getattr(module, "output_to_adc", output_to_adc))
    last = net.get_submodule(info.output_layer)
    with torch.inference_mode():
        pre = pre_activation()
        last.weight.mul_(1.0 / float(pre.std()))
        last.bias.copy_((last.bias - float(pre.mean())) / float(pre.std()))
        pre = pre_activation()
        last.bias.add_(float(torch.atanh(torch.tensor(threshold)) - torch.quantile(pre, 1 - occupancy)))
    return net


def _gan(
    name: str, occupancy: float | None, precision: str = "fp32", device: str = "cpu", images_per_call: int | None = None
):
    """A :class:`BackgroundModel` of :func:`_trained_like` weights (identity with a zero checksum)."""
    import torch

    from pxdbg import models

    net = _trained_like(name, occupancy)
    return models.BackgroundModel(
        name, net.to(device), "0" * 64, None, torch.device(device), precision, images_per_call=images_per_call
    )


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
                out[key] = {
                    "model_s": t1 - t0,
                    "post_s": t2 - t1,
                    "overhead": (t2 - t1) / (t1 - t0),
                    "occupancy": enc.header["n"] / FRAME_PIXELS,
                    "encoding": enc.header["enc"],
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
    result = {"machine": f"{_cpu_name()}, {os.cpu_count()} cores", "quick": quick}
    print(f"pxdbg bench on {result['machine']}{' (quick)' if quick else ''}", flush=True)

    o = result["producer_overhead"] = bench_producer_overhead(quick)
    g = result["generation"] = bench_parametric(quick)
    g["gan_threads"] = os.cpu_count()
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
            f"{v['encoding']} encoding, {v['wire_bytes'] / 1e6:.2f} MB"
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

    from pxdbg import curve_cost

    v = result["curve"] = curve_cost.measure(frames=100 if quick else 400)
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

    t = result["throughput"] = bench_throughput(quick)
    print("\n-- throughput, local parametric producers, consumer doing no work --")
    print(f"1 producer  {t['frames_per_s_1_producers']:7.1f} frames/s")
    print(
        f"2 producers {t['frames_per_s_2_producers']:7.1f} "
        f"frames/s (this machine has {os.cpu_count()} cores, shared with the consumer)"
    )
    return result


# -- producer speed and fidelity (pxdbg bench --producer) ------------------------------------------------------
def macs_per_image(net, info=None) -> int:
    """Multiply-adds of one image through ``net`` (convolutions and linear layers), counted with hooks.

    ``info`` (the registry entry) gives the latent size and, for a conditional model, runs one event and
    divides by its images."""
    import torch

    total = 0

    def conv(mod, inp, out):
        nonlocal total
        total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    def linear(mod, inp, out):
        nonlocal total
        total += out.numel() // mod.out_features * mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(conv) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    device = next(net.parameters()).device
    n = info.images_per_event if info is not None and info.conditional else 1
    try:
        with torch.inference_mode():
            z = torch.zeros(n, info.latent_dim if info is not None else 96, device=device)
            if info is not None and info.conditional:
                net(z, torch.arange(n, device=device) % info.images_per_event)
            else:
                net(z)
    finally:
        for h in hooks:
            h.remove()
    return total // n


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device, precision: str) -> float:
    """A large matrix product on the device, in the precision's arithmetic: the practical peak, TFLOP/s."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = 8192 if device.type == "cuda" else 4096
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b
        _sync(device)
        reps = 20 if device.type == "cuda" else 4
        best = float("inf")
        for _ in range(2):  # the better of two rounds: the machine may be shared
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n**3 * reps / best / 1e12


def _fidelity(ref, other) -> dict:
    """Changes of ``other`` against ``ref`` (uint8 images on one device): pixels, occupancy, mean hit charge."""
    changed = float((ref != other).float().mean())
    occ_ref, occ = float((ref > 0).float().mean()), float((other > 0).float().mean())
    q_ref = float(ref[ref > 0].float().mean()) if occ_ref else float("nan")
    q = float(other[other > 0].float().mean()) if occ else float("nan")
    return {
        "pixels_changed": changed,
        "occupancy_rel_change": occ / occ_ref - 1 if occ_ref else float("nan"),
        "mean_hit_adc_rel_change": q / q_ref - 1 if occ_ref else float("nan"),
        "occupancy": occ_ref,
    }


class BaselineEngine:
    """The engine as it ran before batch-norm folding (the bench's baseline row): the checkpoint's module in
    channels_last, bf16/fp16 by autocast with the output layer kept in fp32 (its input cast on every call),
    fixed calls of ``images_per_call`` images."""

    def __init__(self, net, device, precision: str, info, images_per_call: int) -> None:
        import copy
        import functools

        import torch

        from pxdbg.models.engine import precision_flags

        self.net = copy.deepcopy(net).to(device=device, memory_format=torch.channels_last)
        self.device, self.info, self.images_per_call = device, info, images_per_call
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.flags = functools.partial(precision_flags, precision)
        if self.dtype is not None:
            layer = self.net.get_submodule(info.output_layer)
            plain_forward = layer.forward

            def forward_fp32(x):
                with torch.autocast(device_type=device.type, enabled=False):
                    return plain_forward(x.float())

            layer.forward = forward_fp32

    def images(self, z):
        import contextlib
        import importlib

        import torch

        from pxdbg.models.common import output_to_adc

        to_adc = getattr(importlib.import_module(self.info.module_name), "output_to_adc", output_to_adc)
        step, out = self.images_per_call, []
        for start in range(0, z.shape[0], step):
            chunk = z[start : start + step].to(self.device)
            cast = (
                torch.autocast(device_type=self.device.type, dtype=self.dtype)
                if self.dtype is not None
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), self.flags(), cast:
                if self.info.conditional:
                    y = self.net(chunk, torch.arange(chunk.shape[0], device=self.device) % self.info.images_per_event)
                else:
                    y = self.net(chunk)
            out.append(to_adc(y[:, 0].float()))
        return torch.cat(out)


def bench_producer(args) -> dict:
    """Per GAN model of the registry: today's engine (baseline) beside the folded engine in each precision and
    output-layer mode, s/event, GFLOP per event, achieved TFLOP/s and share of the matrix-product peak probed in
    this run, the speed-up over the baseline, and the fidelity against the exact fp32 run on the same latents."""
    import builtins
    import functools
    import sys

    import torch

    from pxdbg.models.common import latents
    from pxdbg.models.engine import CPU_IMAGES_PER_CALL, GanEngine, recommended_threads
    from pxdbg.shared import registry
    from pxdbg.shared.seeding import frame_rng

    print = functools.partial(builtins.print, file=sys.stderr if args.json else sys.stdout)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device here")
    quick = args.quick
    gans = [registry.get(n) for n in registry.names() if registry.get(n).is_gan]
    threads = recommended_threads(gans[0], device) if not cuda else torch.get_num_threads()
    torch.set_num_threads(threads)
    precisions = ("fp32", "tf32", "bf16", "fp16") if cuda else ("fp32", "bf16")
    rounds = 1 if quick else 3
    name_dev = torch.cuda.get_device_name(device) if cuda else f"{_cpu_name()}, {threads} threads"
    result = {"device": name_dev, "threads": threads, "rows": [], "peak_tflops": {}}
    print(
        f"pxdbg bench --producer on {name_dev}; GAN weights random, output layer set for ~1 % occupancy; "
        f"one event per configuration, best of {rounds} round(s) after a warm-up call"
    )
    for p in precisions:
        result["peak_tflops"][p] = peak_tflops(device, p)
    print(
        "practical peak (matrix product, this run): "
        + ", ".join(f"{p} {v:.2f} TFLOP/s" for p, v in result["peak_tflops"].items())
    )
    print(
        f"{'model':7s} {'configuration':34s} {'img/call':>8s} {'s/event':>8s} {'build s':>7s} {'GFLOP/ev':>8s} "
        f"{'TFLOP/s':>7s} {'of peak':>7s} {'x today':>7s} {'pix chg':>8s} {'occ chg':>8s} {'adc chg':>8s}"
    )
    for n_model, info in enumerate(gans):
        if n_model:  # the peak again between models: the best probe of the run is the peak (a shared machine)
            for p in precisions:
                result["peak_tflops"][p] = max(result["peak_tflops"][p], peak_tflops(device, p))
        net = _trained_like(info.name, 0.01).to(device)
        gflop = 2 * macs_per_image(net, info) * info.images_per_event / 1e9
        z = latents([frame_rng(12345, 0)], dim=info.latent_dim)
        per_call = (info.images_per_event if info.conditional else CPU_IMAGES_PER_CALL) if not cuda else 320
        configs = []  # (label, precision, engine factory, images per call, baseline?)
        for p in precisions:
            configs.append(
                (
                    f"today: {p}" + (", autocast, output fp32" if p in ("bf16", "fp16") else ""),
                    p,
                    functools.partial(BaselineEngine, net, device, p, info, per_call),
                    per_call,
                    True,
                )
            )
            outs = ("bf16x2", "fp32", "bf16") if p in ("bf16", "fp16") else (None,)
            for out in outs:
                label = f"folded: {p}" + (f", output {out}" if out else "")
                kw = {"output_precision": out} if out else {}
                configs.append(
                    (label, p, functools.partial(GanEngine, net, device, p, info=info, **kw), per_call, False)
                )
        if not quick and not info.conditional:  # images per call, re-measured for the default bf16 engine
            p = "fp16" if cuda else "bf16"
            for ipc in (160, 640) if cuda else (4, 16, 40):
                configs.append(
                    (
                        f"folded: {p}, output bf16x2",
                        p,
                        functools.partial(GanEngine, net, device, p, info=info, images_per_call=ipc),
                        ipc,
                        False,
                    )
                )
        engines, builds = [], []
        for _label, _p, make, ipc, is_baseline in configs:
            t0 = time.perf_counter()
            engine = make() if is_baseline else make(images_per_call=ipc)
            builds.append(time.perf_counter() - t0)  # folding, casting and calibrating: once per producer
            engine.images(z[: engine.images_per_call])  # warm-up (and CUDA graph capture)
            _sync(device)
            engines.append(engine)
        best, first = [float("inf")] * len(engines), [None] * len(engines)
        for _ in range(rounds):  # round robin: a busy spell of the machine hits every configuration alike
            for i, engine in enumerate(engines):
                t0 = time.perf_counter()
                out = engine.images(z)
                _sync(device)
                best[i] = min(best[i], time.perf_counter() - t0)
                first[i] = out if first[i] is None else first[i]
        del engines
        ref = first[0]  # today's fp32 engine: the exact fp32 maths, the fidelity reference
        baseline_s = {p: best[i] for i, (_, p, _, _, is_baseline) in enumerate(configs) if is_baseline}
        for i, (label, p, _, ipc, _) in enumerate(configs):
            dt = best[i]
            tflops = gflop / dt / 1e3
            fid = _fidelity(ref, first[i])
            row = {
                "model": info.name,
                "configuration": label,
                "precision": p,
                "images_per_call": ipc,
                "threads": threads,
                "s_per_event": dt,
                "build_s": builds[i],
                "gflop_per_event": gflop,
                "tflops": tflops,
                "share_of_peak": tflops / result["peak_tflops"][p],
                "speedup_over_today": baseline_s[p] / dt,
                **fid,
            }
            result["rows"].append(row)
            print(
                f"{info.name:7s} {label:34s} {ipc:8d} {dt:8.3f} {builds[i]:7.1f} {gflop:8.0f} {tflops:7.3f} "
                f"{100 * row['share_of_peak']:6.1f}% {row['speedup_over_today']:6.2f}x "
                f"{100 * fid['pixels_changed']:7.3f}% {100 * fid['occupancy_rel_change']:+7.2f}% "
                f"{100 * fid['mean_hit_adc_rel_change']:+7.2f}%",
                flush=True,
            )
        if not cuda and not quick:  # threads per producer: the default bf16 engine on one thread
            torch.set_num_threads(1)
            try:
                engine = GanEngine(net, device, "bf16", info=info)
                engine.images(z[: engine.images_per_call])
                t0 = time.perf_counter()
                engine.images(z)
                dt = time.perf_counter() - t0
            finally:
                torch.set_num_threads(threads)
            default = next(
                r
                for r in result["rows"]
                if r["model"] == info.name
                and r["configuration"] == "folded: bf16, output bf16x2"
                and r["images_per_call"] == per_call
            )
            result["rows"].append(
                {
                    "model": info.name,
                    "configuration": "folded: bf16, output bf16x2, 1 thread",
                    "precision": "bf16",
                    "threads": 1,
                    "s_per_event": dt,
                    "thread_scaling": dt / default["s_per_event"],
                }
            )
            print(
                f"{info.name:7s} {'folded: bf16, output bf16x2, 1 thread':34s} {engine.images_per_call:8d} "
                f"{dt:8.3f}  ({threads} threads are {result['rows'][-1]['thread_scaling']:.2f}x faster)"
            )
    for p in precisions:
        result["peak_tflops"][p] = max(result["peak_tflops"][p], peak_tflops(device, p))
    print(
        "\npractical peak, best probe of the run: "
        + ", ".join(f"{p} {v:.2f} TFLOP/s" for p, v in result["peak_tflops"].items())
        + "; against it (the column above used the probes made so far):"
    )
    for row in result["rows"]:
        if "tflops" in row:
            row["share_of_peak"] = row["tflops"] / result["peak_tflops"][row["precision"]]
            if row["configuration"].startswith("today") or row["images_per_call"] == (
                320 if cuda else (40 if registry.get(row["model"]).conditional else CPU_IMAGES_PER_CALL)
            ):
                print(
                    f"{row['model']:7s} {row['configuration']:34s} {row['s_per_event']:8.3f} s/event "
                    f"{100 * row['share_of_peak']:6.1f}% of peak, {row['speedup_over_today']:5.2f}x today's engine"
                )
    return result
