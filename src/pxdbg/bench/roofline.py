"""The per-layer roofline of ``pxdbg bench --producer --roofline``: one forward call of an engine's inference
network profiled with module scopes, each top-level operator's best time beside its FLOP and bytes
(:mod:`pxdbg.bench.op_cost`), its roof min(peak, intensity x bandwidth) and which side of the ridge it sits on."""

from __future__ import annotations

import time

from pxdbg.bench.machine import sync
from pxdbg.bench.op_cost import DTYPE_PRECISION, op_cost

_LAYER = "pxdbg.layer:"  # the prefix of the profiler scopes that name a module


def _profile_ops(call, device) -> list:
    """One profiled ``call()``: its top-level operators in order, as (event, innermost module path or None,
    module path last entered before it, seconds)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        call()
        sync(device)
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


def forward_once(engine, z):
    """The engine's inference network called once on ``z``, under the engine's own context."""
    import torch

    with torch.inference_mode(), engine.precision_flags(), engine._autocast():
        if engine.conditional:
            labels = getattr(engine, "_labels", None)
            if labels is None or labels.shape[0] != z.shape[0]:
                labels = torch.arange(z.shape[0], device=z.device) % engine.images_per_event
            return engine.fast_net(z, labels)
        return engine.fast_net(z)


def call_latents(engine, z, device):
    """The latents of one call: the first ``images_per_call`` of ``z``, or fixed random ones for None."""
    import torch

    if z is None:
        z = torch.randn(engine.images_per_call, engine._latent_dim(), generator=torch.Generator().manual_seed(0))
    return z[: engine.images_per_call].to(device)


def forward_seconds(engine, z, device, rounds: int = 3) -> float:
    """Wall time of one forward call of the engine's inference network, best of ``rounds`` after a warm-up."""
    z = call_latents(engine, z, device)
    forward_once(engine, z)
    sync(device)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        forward_once(engine, z)
        sync(device)
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
    z = call_latents(engine, z, device)
    bw = bandwidth_gbs * 1e9

    def peak_of(dtype: str) -> float:
        if not isinstance(peak_tflops, dict):
            return peak_tflops * 1e12
        p = DTYPE_PRECISION.get(dtype, "fp32")
        if p == "fp32" and getattr(engine, "precision", None) == "tf32" and "tf32" in peak_tflops:
            p = "tf32"
        return peak_tflops.get(p, peak_tflops.get("fp32", max(peak_tflops.values()))) * 1e12

    forward_once(engine, z)  # warm-up (kernel choice, caches)
    sync(device)
    handles, stack = _labelled(net)
    try:
        runs = [_profile_ops(lambda: forward_once(engine, z), device) for _ in range(calls)]
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
