"""``pxdbg bench --producer``: per GAN model of the registry, today's engine beside the folded engine in each
precision, speed against the probed peak and fidelity against the exact fp32 output; with ``--roofline`` the
per-layer roofline of each model."""

from __future__ import annotations

import time

from pxdbg.bench.machine import allocator, cpu_name, memory_bandwidth_gbs, peak_tflops, sync
from pxdbg.bench.roofline import forward_seconds, print_roofline, roofline, roofline_summary
from pxdbg.bench.weights import trained_like


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


def fidelity(ref, other) -> dict:
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
    name_dev = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()}, {threads} threads"
    result = {"device": name_dev, "threads": threads, "rows": [], "peak_tflops": {}, "allocator": allocator()}
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
        net = trained_like(info.name, 0.01).to(device)
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
            sync(device)
            engines.append(engine)
        best, first = [float("inf")] * len(engines), [None] * len(engines)
        for _ in range(rounds):  # round robin: a busy spell of the machine hits every configuration alike
            for i, engine in enumerate(engines):
                t0 = time.perf_counter()
                out = engine.images(z)
                sync(device)
                best[i] = min(best[i], time.perf_counter() - t0)
                first[i] = out if first[i] is None else first[i]
        del engines
        ref = first[0]  # today's fp32 engine: the exact fp32 maths, the fidelity reference
        baseline_s = {p: best[i] for i, (_, p, _, _, is_baseline) in enumerate(configs) if is_baseline}
        for i, (label, p, _, ipc, _) in enumerate(configs):
            dt = best[i]
            tflops = gflop / dt / 1e3
            fid = fidelity(ref, first[i])
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
