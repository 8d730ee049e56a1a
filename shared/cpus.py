"""How many CPUs this process may keep busy: its affinity mask, capped by the cgroup CPU quota.

A container or a Slurm job step is limited in two ways that ``os.cpu_count()`` does not see: the affinity mask
(``taskset``, Slurm's ``--cpu-bind``) names the CPUs the process may run on, and a cgroup quota (Docker's
``--cpus``, Kubernetes' ``limits.cpu``) caps the CPU time it gets, on however many CPUs. A process that starts
one thread per visible CPU under a quota of 2 CPUs on a 64-core node is throttled, not parallel. The quota is
read from cgroup v2 (``cpu.max``) or, where only v1 is mounted, from ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
of this process's cgroup and of each cgroup above it (the tightest counts). A cgroup file that cannot be read
or does not parse is ignored with a logged reason: the count is then the affinity mask's, never an error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("pxdbg.cpus")

#: cgroup files are a few bytes; anything longer is not one.
_MAX_CGROUP_FILE_BYTES = 4096
#: Where cgroup v1 mounts the CPU controller (the first that exists is used).
_V1_CPU_DIRS = ("sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpu")


@dataclass(frozen=True)
class CpuBudget:
    """What limits this process: ``affinity`` CPUs it may run on, ``quota`` CPUs' worth of time (``None``: no
    quota), and why a cgroup file was ignored (``ignored``: one reason per file, empty when all parsed)."""

    affinity: int
    quota: float | None
    ignored: tuple[str, ...] = ()

    @property
    def usable(self) -> int:
        """Whole CPUs to keep busy: the affinity count, within the quota (rounded down, at least 1)."""
        n = self.affinity if self.quota is None else min(self.affinity, math.floor(self.quota))
        return max(1, n)


def usable_cpus(root: str | os.PathLike = "/") -> int:
    """Threads or processes worth running in parallel here (at least 1); see :class:`CpuBudget`.

    ``root`` is the filesystem root under which ``/proc`` and ``/sys/fs/cgroup`` are read (tests pass a directory
    of fake cgroup files)."""
    budget = cpu_budget(root)
    for reason in budget.ignored:
        log.warning("CPU quota: %s; counting the affinity mask only", reason)
    return budget.usable


def cpu_budget(root: str | os.PathLike = "/") -> CpuBudget:
    """The affinity mask's size and the cgroup CPU quota of this process, read under ``root``."""
    ignored: list[str] = []
    quota = _cgroup_quota(Path(root), ignored)
    return CpuBudget(_affinity(), quota, tuple(ignored))


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _read(path: Path, ignored: list[str]) -> str | None:
    """A small cgroup file's text; ``None`` if it does not exist; a reason in ``ignored`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CGROUP_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        ignored.append(f"cannot read {path} ({exc.strerror or exc})")
        return None
    if len(data) > _MAX_CGROUP_FILE_BYTES:
        ignored.append(f"{path} is longer than a cgroup file")
        return None
    return data.decode("ascii", errors="replace")


def _cgroup_quota(root: Path, ignored: list[str]) -> float | None:
    v2 = root / "sys/fs/cgroup"
    if (v2 / "cgroup.controllers").exists():
        own = _own_cgroup(root, ignored, lambda controllers: controllers == "")
        return _tightest(v2, own, _v2_quota, ignored)
    for rel in _V1_CPU_DIRS:
        if (root / rel).is_dir():
            own = _own_cgroup(root, ignored, lambda controllers: "cpu" in controllers.split(","))
            return _tightest(root / rel, own, _v1_quota, ignored)
    return None


def _own_cgroup(root: Path, ignored: list[str], is_cpu_line: Callable[[str], bool]) -> Path:
    """This process's cgroup path for the CPU controller, from ``/proc/self/cgroup`` (``/`` if unknown). A
    container with its own cgroup namespace sees ``/``; one without may name a path that is not mounted inside
    it, whose missing files are then skipped up to the mount's root (the container's own cgroup)."""
    text = _read(root / "proc/self/cgroup", ignored)
    for line in (text or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3 and is_cpu_line(fields[1]):
            own = Path("/" + fields[2].strip().lstrip("/"))
            if ".." in own.parts:
                ignored.append(f"{root / 'proc/self/cgroup'} names a path outside the cgroup mount")
                return Path("/")
            return own
    return Path("/")


def _tightest(mount: Path, own: Path, quota_of, ignored: list[str]) -> float | None:
    """The smallest quota from this process's cgroup up to the mount's root: each level caps the ones below."""
    quotas = [quota_of(mount / str(d).lstrip("/"), ignored) for d in (own, *own.parents)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _v2_quota(directory: Path, ignored: list[str]) -> float | None:
    text = _read(directory / "cpu.max", ignored)
    if text is None:
        return None
    quota = _parse_cpu_max(text)
    if isinstance(quota, str):
        ignored.append(f"{directory / 'cpu.max'}: {quota}")
        return None
    return quota


def _parse_cpu_max(text: str) -> float | str | None:
    """``"max 100000"`` -> None (no quota), ``"150000 100000"`` -> 1.5 CPUs; a reason (str) if it does not parse."""
    fields = text.split()
    if len(fields) != 2:
        return "expected '<quota> <period>'"
    if fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return "quota and period are not integers"
    if quota <= 0 or period <= 0:
        return "quota and period must be positive"
    return quota / period


def _v1_quota(directory: Path, ignored: list[str]) -> float | None:
    if not directory.is_dir():
        return None
    texts = [_read(directory / name, ignored) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
    if texts[0] is None or texts[1] is None:
        return None
    try:
        quota, period = int(texts[0].strip()), int(texts[1].strip())
    except ValueError:
        ignored.append(f"{directory}: cpu.cfs_quota_us or cpu.cfs_period_us is not an integer")
        return None
    if quota == -1:  # v1's "no quota"
        return None
    if quota <= 0 or period <= 0:
        ignored.append(f"{directory}: quota and period must be positive (or the quota -1)")
        return None
    return quota / period
