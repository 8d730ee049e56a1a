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
from pathlib import Path

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
    """Per GAN (random weights, and set for ~1 % occupancy unless ``quick``): one frame's model time, and the
    time of the producer's own wire path after it (:meth:`BackgroundModel.to_wire` and
    :meth:`BackgroundModel.encode` in the codec a default consumer negotiates) plus a send over a zmq socket."""
    import torch
    import zmq

    from pxdbg.shared import codecs

    torch.set_num_threads(os.cpu_count() or 1)
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
                m = _gan(name, occ)
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

    result["digits_file"] = bench_digits_file(quick)
    result["producer_start"] = bench_producer_start()
    print_files_and_start(result, print)

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


# -- per-layer roofline (pxdbg bench --producer --roofline) --------------------------------------------------------
def memory_bandwidth_gbs(device, mib: int = 256) -> float:
    """Practical memory bandwidth, GB/s: the best of a few copies of a ``mib`` MiB tensor (bytes read plus bytes
    written per second), with the intra-op threads torch has now."""
    import torch

    n = mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults and allocation outside the timing
    _sync(device)
    reps = 10 if device.type == "cuda" else 1
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n * 4 / best / 1e9


_LAYER = "pxdbg.layer:"  # the prefix of the profiler scopes that name a module
_DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::Half": 2,
    "c10::BFloat16": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
    "short int": 2,
    "short": 2,
    "signed char": 1,
    "unsigned char": 1,
    "bool": 1,
    "c10::Float8_e4m3fn": 1,
    "c10::Float8_e5m2": 1,
}
_DTYPE_PRECISION = {"float": "fp32", "c10::BFloat16": "bf16", "c10::Half": "fp16", "double": "fp32"}
# ops that move no data (views, shape changes, allocations): timed, not put on the roofline
_NO_TRAFFIC = {
    "aten::view",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::_unsafe_view",
    "aten::permute",
    "aten::slice",
    "aten::select",
    "aten::as_strided",
    "aten::expand",
    "aten::expand_as",
    "aten::view_as",
    "aten::t",
    "aten::transpose",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::flatten",
    "aten::unflatten",
    "aten::narrow",
    "aten::split",
    "aten::chunk",
    "aten::unbind",
    "aten::detach",
    "aten::alias",
    "aten::lift_fresh",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::new_empty",
    "aten::new_empty_strided",
    "aten::resize_",
    "aten::set_",
}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var", "std", "all", "any"}
_NORMS = {"batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training", "layer_norm", "group_norm"}
_MOVES = {"pixel_shuffle", "pixel_unshuffle", "clone", "contiguous", "to", "_to_copy", "copy_", "cat", "stack", "pad"}
# where a convolution's stride, padding and dilation are among its arguments, by operator (bias and an extra tensor
# shift them): (stride, padding, dilation); the rest are taken as conv2d
_CONV_ARGS = {
    "convolution": (3, 4, 5),
    "_convolution": (3, 4, 5),
    "convolution_overrideable": (3, 4, 5),
    "mkldnn_convolution": (4, 3, 5),
    "_convolution_pointwise": (4, 3, 5),
    "cudnn_convolution": (3, 2, 4),
    "cudnn_convolution_add_relu": (5, 6, 7),
}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _tensors(shapes, dtypes) -> list:
    """(shape, element bytes, dtype) of an op's tensor arguments with at least one dimension."""
    return [
        (list(s), _DTYPE_BYTES[d], d)
        for s, d in zip(shapes, dtypes)
        if isinstance(s, list) and s and all(isinstance(v, int) for v in s) and d in _DTYPE_BYTES
    ]


def _innermost(ev):
    """The innermost event of the same operator under ``ev`` (autocast wraps an op around its cast arguments)."""
    while True:
        same = [c for c in ev.cpu_children if c.name == ev.name]
        if not same:
            return ev
        ev = same[-1]


def _descendant(ev, name: str):
    for c in ev.cpu_children:
        if c.name == name:
            return c
        found = _descendant(c, name)
        if found is not None:
            return found
    return None


def _pair(value, rank: int, default: int) -> list:
    if isinstance(value, (list, tuple)) and value:
        return [int(v) for v in value] * (rank if len(value) == 1 else 1)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [int(value)] * rank
    return [default] * rank


def _conv_cost(op: str, args, concrete, overload: str) -> tuple[int, list]:
    """FLOP and output shape of a convolution from its argument shapes and values."""
    x, w = args[0][0], args[1][0]
    if "binary" in overload and len(args) > 2:  # (x, other, weight, ...)
        w = args[2][0]
    rank = len(x) - 2
    transposed = "transpose" in op or (
        op in ("convolution", "_convolution") and len(concrete) > 6 and concrete[6] is True
    )
    if "transpose" in op:
        i_stride, i_pad, i_dil = 3, 4, 7
    else:
        i_stride, i_pad, i_dil = _CONV_ARGS.get(op, (3, 4, 5))
    if "binary" in overload:
        i_stride, i_pad, i_dil = i_stride + 1, i_pad + 1, i_dil + 1

    def arg(i):
        return concrete[i] if i < len(concrete) else None

    stride, dil = _pair(arg(i_stride), rank, 1), _pair(arg(i_dil), rank, 1)
    kernel = w[2:]
    pad_value = arg(i_pad)
    if isinstance(pad_value, str):  # conv2d(padding="same" | "valid")
        pad = [d * (k - 1) // 2 if pad_value == "same" else 0 for k, d in zip(kernel, dil)]
    else:
        pad = _pair(pad_value, rank, 0)
    if transposed:
        groups = max(1, x[1] // w[0]) if w[0] else 1
        out_channels = w[1] * groups
        spatial = [(i - 1) * s - 2 * p + d * (k - 1) + 1 for i, s, p, d, k in zip(x[2:], stride, pad, dil, kernel)]
        flop = 2 * _numel(x) * w[1] * _numel(kernel)
    else:
        groups = max(1, x[1] // w[1]) if w[1] else 1
        out_channels = w[0]
        spatial = [(i + 2 * p - d * (k - 1) - 1) // s + 1 for i, s, p, d, k in zip(x[2:], stride, pad, dil, kernel)]
        flop = 2 * x[0] * out_channels * _numel(spatial) * (x[1] // groups) * _numel(kernel)
    return flop, [x[0], out_channels, *spatial]


def _broadcast(shapes: list) -> list:
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for s in shapes:
        for i, v in enumerate(s):
            j = rank - len(s) + i
            out[j] = max(out[j], v)
    return out


def op_cost(ev) -> dict:
    """FLOP, bytes moved (tensor arguments and the output, each once: a lower bound on the traffic) and the
    arithmetic's dtype of one profiled top-level operator event."""
    inner = _innermost(ev)
    full = ev.name
    op = full.split("::", 1)[-1]
    args = _tensors(ev.input_shapes, ev.input_dtypes)
    inner_args = _tensors(inner.input_shapes, inner.input_dtypes) or args
    concrete = list(getattr(inner, "concrete_inputs", None) or [])
    dtype = inner_args[0][2] if inner_args else "float"
    flop, out_shape, out_dtype, kind = 0, None, dtype, "elementwise"
    read = sum(_numel(s) * b for s, b, _ in args)
    if full in _NO_TRAFFIC or (op in ("to", "contiguous", "type_as") and not ev.cpu_children):
        return {"flop": 0, "bytes": 0, "dtype": dtype, "kind": "view", "out_shape": args[0][0] if args else []}
    if "conv" in op and len(inner_args) >= 2:
        kind = "conv"
        flop, out_shape = _conv_cost(op, inner_args, concrete, getattr(inner, "overload_name", "") or "")
    elif op.startswith("upsample") and args:
        kind = "move"
        x = args[0][0]
        size = concrete[1] if len(concrete) > 1 and isinstance(concrete[1], list) and concrete[1] else None
        if size is None:
            scales = next((c for c in reversed(concrete) if isinstance(c, list) and c), [1.0] * (len(x) - 2))
            size = [int(i * s) for i, s in zip(x[2:], scales)]
        out_shape = [*x[:2], *size]
    elif ("linear" in op or op in ("addmm", "mm", "matmul", "bmm", "baddbmm")) and len(inner_args) >= 2:
        kind = "matmul"
        if "linear" in op:
            a, w = inner_args[0][0], inner_args[1][0]
            out_shape, k = [*a[:-1], w[0]], a[-1]
        else:
            a, b = (
                (inner_args[1][0], inner_args[2][0])
                if op in ("addmm", "baddbmm")
                else (inner_args[0][0], inner_args[1][0])
            )
            batch = _broadcast([a[:-2], b[:-2]]) if len(a) > 2 and len(b) > 2 else (a[:-2] or b[:-2])
            out_shape, k = [*batch, a[-2] if len(a) > 1 else 1, b[-1]], a[-1]
        flop = 2 * _numel(out_shape) * k
    elif op in _MOVES or op.endswith("_like") or op in ("fill_", "zero_"):
        kind = "move"
        if op.endswith("_like") or op in ("fill_", "zero_"):  # writes only
            read, out_shape = 0, args[0][0] if args else []
        elif op == "copy_" and len(args) >= 2:  # (dst, src): reads src, writes dst
            read, out_shape, out_dtype = _numel(args[1][0]) * args[1][1], args[0][0], args[0][2]
        elif op in ("cat", "stack"):
            out_shape = [sum(_numel(s) for s, _, _ in args)]
        elif op in ("to", "_to_copy", "contiguous", "clone", "pixel_shuffle", "pixel_unshuffle") and args:
            copy = _descendant(ev, "aten::copy_")
            out_dtype = copy.input_dtypes[0] if copy is not None and copy.input_dtypes[0] in _DTYPE_BYTES else dtype
            out_shape = args[0][0]
        elif args:
            out_shape = _broadcast([s for s, _, _ in args])
    elif op.rstrip("_") in _REDUCTIONS and args:
        kind = "reduction"
        flop, out_shape = _numel(args[0][0]), []
    elif op in _NORMS and args:
        out_shape = args[0][0]
        flop = 2 * _numel(out_shape)
    elif op == "embedding" and len(args) >= 2:
        kind = "move"
        w, idx = args[0], args[1]
        read, out_shape, out_dtype = _numel(idx[0]) * idx[1] + _numel(idx[0]) * w[0][1] * w[1], [*idx[0], w[0][1]], w[2]
    elif args:
        out_shape = _broadcast([s for s, _, _ in args])
        flop = _numel(out_shape)
    if out_shape is None:
        out_shape = []
    written = _numel(out_shape) * _DTYPE_BYTES.get(out_dtype, 4) if out_shape else 0
    return {
        "flop": flop,
        "bytes": read + written,
        "dtype": dtype,
        "kind": kind,
        "out_shape": out_shape,
        "out_bytes": written,
    }


def _profile_ops(call, device) -> list:
    """One profiled ``call()``: its top-level operators in order, as (event, innermost module path or None,
    module path last entered before it, seconds)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        call()
        _sync(device)
    events = sorted(prof.events(), key=lambda e: (e.time_range.start, -e.time_range.end))
    cpu = torch.autograd.DeviceType.CPU
    ops, last_module = [], None
    for ev in events:
        if ev.device_type != cpu or "::" not in ev.name or ev.name.startswith(_LAYER):
            continue
        parent, inner, outer, top = ev.cpu_parent, None, None, True
        while parent is not None:
            if "::" in parent.name and not parent.name.startswith(_LAYER):
                top = False  # an operator inside another operator
                break
            if parent.name.startswith(_LAYER):
                inner = inner or parent.name[len(_LAYER) :]
                outer = parent.name[len(_LAYER) :]
            parent = parent.cpu_parent
        if not top:
            continue
        if device.type == "cuda":
            seconds = (getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)) / 1e6
        else:
            seconds = ev.cpu_time_total / 1e6
        ops.append((ev, inner, last_module, seconds))
        if outer is not None:
            last_module = outer
    return ops


def _labelled(net):
    """Profiler scopes named by module path around every submodule's forward; returns the hook handles."""
    from torch.autograd.profiler import record_function

    stack, handles = [], []

    def enter(name):
        def hook(mod, inp):
            scope = record_function(_LAYER + name)
            scope.__enter__()
            stack.append(scope)

        return hook

    def leave(mod, inp, out):
        if stack:
            stack.pop().__exit__(None, None, None)

    for name, mod in net.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(enter(name)))
            handles.append(mod.register_forward_hook(leave))
    return handles, stack


def _forward(engine, z):
    """The engine's inference network called once on ``z``, under the engine's own context."""
    import torch

    with torch.inference_mode(), engine.precision_flags(), engine._autocast():
        if engine.conditional:
            labels = getattr(engine, "_labels", None)
            if labels is None or labels.shape[0] != z.shape[0]:
                labels = torch.arange(z.shape[0], device=z.device) % engine.images_per_event
            return engine.fast_net(z, labels)
        return engine.fast_net(z)


def _call_latents(engine, z, device):
    """The latents of one call: the first ``images_per_call`` of ``z``, or fixed random ones for None."""
    import torch

    if z is None:
        z = torch.randn(engine.images_per_call, engine._latent_dim(), generator=torch.Generator().manual_seed(0))
    return z[: engine.images_per_call].to(device)


def forward_seconds(engine, z, device, rounds: int = 3) -> float:
    """Wall time of one forward call of the engine's inference network, best of ``rounds`` after a warm-up."""
    z = _call_latents(engine, z, device)
    _forward(engine, z)
    _sync(device)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        _forward(engine, z)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _group_key(module):
    import re

    return re.sub(r"([._])\d+$", r"\1*", module) if module else module


def roofline(engine, z, device, peak_tflops, bandwidth_gbs: float, calls: int = 2) -> list[dict]:
    """Per layer of ``engine.fast_net``: one forward call of ``engine.images_per_call`` latents ``z`` (None:
    random) under the engine's context, profiled ``calls`` times after a warm-up; per top-level operator the
    best time, FLOP, bytes moved (a lower bound), arithmetic intensity, its roof min(peak, intensity x
    bandwidth) and which side of the ridge point it sits on. ``peak_tflops``: one figure or a dict by precision
    (fp32, tf32, bf16, fp16), then each operator gets the peak of its arithmetic's dtype. Identical operators
    of one layer (same shapes; module paths that differ only in a last index, e.g. the phases of a sub-pixel
    convolution) share a row; operators that move no data (views, allocations) are summed in one row."""
    net = engine.fast_net
    z = _call_latents(engine, z, device)
    bw = bandwidth_gbs * 1e9

    def peak_of(dtype: str) -> float:
        if not isinstance(peak_tflops, dict):
            return peak_tflops * 1e12
        p = _DTYPE_PRECISION.get(dtype, "fp32")
        if p == "fp32" and getattr(engine, "precision", None) == "tf32" and "tf32" in peak_tflops:
            p = "tf32"
        return peak_tflops.get(p, peak_tflops.get("fp32", max(peak_tflops.values()))) * 1e12

    _forward(engine, z)  # warm-up (kernel choice, caches)
    _sync(device)
    handles, stack = _labelled(net)
    try:
        runs = [_profile_ops(lambda: _forward(engine, z), device) for _ in range(calls)]
    finally:
        for h in handles:
            h.remove()
        while stack:
            stack.pop().__exit__(None, None, None)
    ops = runs[0]
    same = all(len(r) == len(ops) and all(a[0].name == b[0].name for a, b in zip(r, ops)) for r in runs[1:])
    best = [min(r[i][3] for r in runs) if same else op[3] for i, op in enumerate(ops)]

    rows, index, other = [], {}, None
    for (ev, module, after, _), seconds in zip(ops, best):
        cost = op_cost(ev)
        op = ev.name
        if cost["kind"] == "view":
            if other is None:
                other = {"layer": "(views, allocations)", "module": None, "op": "views", "calls": 0, "seconds": 0.0}
                other.update(flop=0, bytes=0, dtype="", kind="view", input_shapes=[], output_shape=[], output_bytes=0)
                other["modules"] = set()
            other["calls"] += 1
            other["seconds"] += seconds
            other["modules"].add(module)
            continue
        short = op.split("::", 1)[-1].lstrip("_")
        if cost["kind"] == "conv":
            short = "conv"
        elif cost["kind"] == "matmul":
            short = "linear" if "linear" in short else short
        elif short.startswith("upsample"):
            short = "upsample"
        after_text = f" (after {after})" if after else ""
        layer = f"{_group_key(module)} {short}" if module is not None else f"{short}{after_text}"
        shapes = [s for s in ev.input_shapes if isinstance(s, list) and s]
        key = (layer, op, str(shapes))
        if key in index:
            row = index[key]
            row["calls"] += 1
            row["seconds"] += seconds
            row["flop"] += cost["flop"]
            row["bytes"] += cost["bytes"]
            row["modules"].add(module)
            continue
        row = {"layer": layer, "module": module, "op": op, "calls": 1, "seconds": seconds, "input_shapes": shapes}
        row.update(flop=cost["flop"], bytes=cost["bytes"], dtype=cost["dtype"], kind=cost["kind"])
        row.update(output_shape=cost["out_shape"], output_bytes=cost["out_bytes"], modules={module})
        index[key] = row
        rows.append(row)
    for row in rows:  # a starred path only where a row gathers several modules
        if len(row["modules"]) == 1 and row["module"] is not None:
            row["layer"] = f"{row['module']} {row['layer'].split(' ', 1)[1]}"
        row["modules"] = sorted(m for m in row["modules"] if m is not None)
    if other is not None:
        other["modules"] = sorted(m for m in other["modules"] if m is not None)
        rows.append(other)
    for row in rows:
        _on_roof(row, peak_of(row["dtype"]), bw)
    return rows


def _on_roof(row: dict, peak: float, bw: float) -> None:
    """A row's place on the roofline from its seconds (or time_ms), FLOP and bytes; peak FLOP/s, bw bytes/s."""
    seconds = row.pop("seconds") if "seconds" in row else row["time_ms"] / 1e3
    flop, nbytes = row["flop"], row["bytes"]
    intensity = flop / nbytes if nbytes else 0.0
    roof_s = max(flop / peak, nbytes / bw)
    row.update(
        time_ms=seconds * 1e3,
        intensity=intensity,
        ridge=peak / bw,
        peak_tflops=peak / 1e12,
        roof_tflops=min(peak, intensity * bw) / 1e12 if flop else 0.0,
        achieved_tflops=flop / seconds / 1e12 if seconds > 0 else 0.0,
        achieved_gbs=nbytes / seconds / 1e9 if seconds > 0 else 0.0,
        roof_ms=roof_s * 1e3,
        share_of_roof=roof_s / seconds if seconds > 0 else float("nan"),
        bound="-" if row["kind"] == "view" else ("memory" if intensity < peak / bw else "compute"),
    )


def compact(rows: list, limit: int = 60) -> list:
    """The rows to print: ``rows`` when at most ``limit``, else each run of consecutive operators other than
    convolutions and matrix products merged into one row (named by its first module and its operators)."""
    if len(rows) <= limit:
        return rows
    out = []
    for row in rows:
        prev = out[-1] if out else None
        small = row["kind"] not in ("conv", "matmul", "view")
        if small and prev is not None and prev.get("_run"):
            names = prev["_ops"]
            short = row["layer"].split(" ")[1] if row["module"] is not None else row["layer"].split(" ")[0]
            if short not in names:
                names.append(short)
            head, ops = prev["_head"], "+".join(names)
            prev["layer"] = f"{head} {ops}" if prev["module"] is not None else f"{ops} {head}".rstrip()
            prev["calls"] += row["calls"]
            prev["time_ms"] += row["time_ms"]
            prev["flop"] += row["flop"]
            prev["bytes"] += row["bytes"]
            prev["output_bytes"] = 0
            prev["modules"] = sorted(set(prev["modules"]) | set(row["modules"]))
            _on_roof(prev, prev["peak_tflops"] * 1e12, prev["peak_tflops"] * 1e12 / prev["ridge"])
            continue
        row = dict(row)
        if small:  # a module's operator: "path op"; one between modules: "op (after path)"
            first, _, rest = row["layer"].partition(" ")
            head, op = (first, rest) if row["module"] is not None else (rest, first)
            row.update(_run=True, _head=head, _ops=[op])
        out.append(row)
    for row in out:
        for key in ("_run", "_head", "_ops"):
            row.pop(key, None)
    return out


def roofline_summary(rows: list, bandwidth_gbs: float, forward_s: float | None = None) -> dict:
    """Time shares and totals of a ``roofline`` table: the memory-bound operators' time, what they would take
    at the measured bandwidth, and the network's time at its roofs against the measured one."""
    total = sum(r["time_ms"] for r in rows)
    memory = [r for r in rows if r["bound"] == "memory"]
    mem_ms = sum(r["time_ms"] for r in memory)
    return {
        "ops_ms": total,
        "forward_ms": forward_s * 1e3 if forward_s is not None else None,
        "memory_bound_ms": mem_ms,
        "memory_bound_share": mem_ms / total if total else 0.0,
        "memory_bound_at_bandwidth_ms": sum(r["bytes"] for r in memory) / (bandwidth_gbs * 1e9) * 1e3,
        "compute_bound_ms": sum(r["time_ms"] for r in rows if r["bound"] == "compute"),
        "overhead_ms": sum(r["time_ms"] for r in rows if r["bound"] == "-"),
        "roof_ms": sum(r["roof_ms"] for r in rows),
        "gflop": sum(r["flop"] for r in rows) / 1e9,
        "gbytes": sum(r["bytes"] for r in rows) / 1e9,
    }


def print_roofline(rows: list, summary: dict, title: str, print=print) -> None:
    """The table (long ones compacted: runs of elementwise operators merged) and the summary line."""
    print(f"\n-- roofline: {title} --")
    rows = compact(rows)
    print(
        f"{'layer / operator':48s} {'calls':>5s} {'ms':>8s} {'GFLOP':>7s} {'MB':>7s} {'FLOP/B':>7s} "
        f"{'TFLOP/s':>7s} {'GB/s':>6s} {'of roof':>7s} bound"
    )
    for r in rows:
        intensity = "-" if r["bound"] == "-" else f"{r['intensity']:7.1f}"
        share = "-" if r["bound"] == "-" else f"{100 * r['share_of_roof']:6.1f}%"
        print(
            f"{r['layer'][:48]:48s} {r['calls']:5d} {r['time_ms']:8.2f} {r['flop'] / 1e9:7.3f} {r['bytes'] / 1e6:7.1f} "
            f"{intensity:>7s} {r['achieved_tflops']:7.3f} {r['achieved_gbs']:6.1f} {share:>7s} {r['bound']}"
        )
    s = summary
    fwd = f", {s['forward_ms']:.1f} ms unprofiled" if s.get("forward_ms") is not None else ""
    print(
        f"memory-bound operators: {100 * s['memory_bound_share']:.0f}% of the time ({s['memory_bound_ms']:.1f} ms; "
        f"{s['memory_bound_at_bandwidth_ms']:.1f} ms at the measured bandwidth); whole network at its roofs "
        f"{s['roof_ms']:.1f} ms vs {s['ops_ms']:.1f} ms measured{fwd} ({100 * s['roof_ms'] / s['ops_ms']:.0f}% of roof)"
    )


def _bench_roofline(result: dict, net, info, device, z, per_call: int, print) -> None:
    """``bench_producer``'s roofline of one model: its default reduced-precision engine and its fp32 engine."""
    from pxdbg.models.engine import GanEngine

    bw = result["memory_bandwidth_gbs"] = max(result["memory_bandwidth_gbs"], memory_bandwidth_gbs(device))
    result["roofline"][info.name], result["roofline_summary"][info.name] = [], {}
    for p in ("fp16" if device.type == "cuda" else "bf16", "fp32"):
        engine = GanEngine(net, device, p, info=info, images_per_call=per_call)
        zz = z[:per_call] if z.shape[0] >= per_call else None
        rows = roofline(engine, zz, device, result["peak_tflops"], bw)
        fwd = forward_seconds(engine, zz, device)
        summary = roofline_summary(rows, bw, fwd)
        summary.update(bandwidth_gbs=bw, peak_tflops=result["peak_tflops"].get(p), images_per_call=per_call)
        peak = result["peak_tflops"].get(p, 0.0)
        print_roofline(
            rows,
            summary,
            f"{info.name} {p} engine, {per_call} images per call, one forward call (best of 2 profiled); "
            f"peak {peak:.2f} TFLOP/s, {bw:.1f} GB/s, ridge {peak * 1e3 / bw:.0f} FLOP/B",
            print=print,
        )
        for row in rows:
            row.update(model=info.name, precision=p, images_per_call=per_call)
        result["roofline"][info.name] += rows
        result["roofline_summary"][info.name][p] = summary
        del engine


def _allocator() -> str:
    """How torch's CPU allocator places large tensors in this process (today's engine rows run under it too):
    ``THP_MEM_ALLOC_ENABLE`` (pxdbg.models sets 1 unless the user set it) and the kernel's huge-page mode."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            kernel = next((w.strip("[]") for w in f.read().split() if w.startswith("[")), "unknown")
    except OSError:
        kernel = "not available"
    on = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"
    return f"large tensors on huge pages: {'on' if on else 'off'} (THP_MEM_ALLOC_ENABLE, kernel mode {kernel})"


def bench_producer(args) -> dict:
    """Per GAN model of the registry: today's engine (baseline) beside the folded engine in each precision and
    output-layer mode, s/event, GFLOP per event, achieved TFLOP/s and share of the matrix-product peak probed in
    this run, the speed-up over the baseline, and the fidelity against the exact fp32 run on the same latents.

    With ``args.roofline``: per model, the per-layer roofline of the default reduced-precision engine and the fp32
    engine (one forward call), against the peak and a memory bandwidth probed in this run."""
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
    roof = getattr(args, "roofline", False)
    gans = [registry.get(n) for n in registry.names() if registry.get(n).is_gan]
    threads = recommended_threads(gans[0], device) if not cuda else torch.get_num_threads()
    torch.set_num_threads(threads)
    precisions = ("fp32", "tf32", "bf16", "fp16") if cuda else ("fp32", "bf16")
    rounds = 1 if quick else 3
    name_dev = torch.cuda.get_device_name(device) if cuda else f"{_cpu_name()}, {threads} threads"
    result = {"device": name_dev, "threads": threads, "rows": [], "peak_tflops": {}, "allocator": _allocator()}
    print(
        f"pxdbg bench --producer on {name_dev}; GAN weights random, output layer set for ~1 % occupancy; "
        f"one event per configuration, best of {rounds} round(s) after a warm-up call; {result['allocator']}"
    )
    for p in precisions:
        result["peak_tflops"][p] = peak_tflops(device, p)
    bandwidth = ""
    if roof:
        result["memory_bandwidth_gbs"] = memory_bandwidth_gbs(device)
        result["roofline"], result["roofline_summary"] = {}, {}
        bandwidth = f"; memory bandwidth (copy, this run) {result['memory_bandwidth_gbs']:.1f} GB/s"
    print(
        "practical peak (matrix product, this run): "
        + ", ".join(f"{p} {v:.2f} TFLOP/s" for p, v in result["peak_tflops"].items())
        + bandwidth
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
        if roof:
            _bench_roofline(result, net, info, device, z, per_call, print)
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
