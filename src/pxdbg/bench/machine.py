"""Facts about the machine a bench runs on: the CPU's name, torch's large-page allocation, and the practical
matrix-product peak and memory bandwidth of a device, probed in the run (printed beside every figure)."""

from __future__ import annotations

import os
import platform
import time


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows, for the header of printed figures."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def allocator() -> str:
    """How torch's CPU allocator places large tensors in this process (today's engine rows run under it too):
    ``THP_MEM_ALLOC_ENABLE`` (pxdbg.models sets 1 unless the user set it) and the kernel's huge-page mode."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            kernel = next((w.strip("[]") for w in f.read().split() if w.startswith("[")), "unknown")
    except OSError:
        kernel = "not available"
    on = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"
    return f"large tensors on huge pages: {'on' if on else 'off'} (THP_MEM_ALLOC_ENABLE, kernel mode {kernel})"


def sync(device) -> None:
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
        sync(device)
        reps = 20 if device.type == "cuda" else 4
        best = float("inf")
        for _ in range(2):  # the better of two rounds: the machine may be shared
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n**3 * reps / best / 1e12


def memory_bandwidth_gbs(device, mib: int = 256) -> float:
    """Practical memory bandwidth, GB/s: the best of a few copies of a ``mib`` MiB tensor (bytes read plus bytes
    written per second), with the intra-op threads torch has now."""
    import torch

    n = mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults and allocation outside the timing
    sync(device)
    reps = 10 if device.type == "cuda" else 1
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n * 4 / best / 1e9
