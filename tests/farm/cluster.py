"""An emulated Slurm cluster on one machine: real Slurm 22.05 daemons, one network namespace per node.

Node ``nodeI`` runs its own ``slurmd`` in namespace ``nI`` with address ``198.18.0.(I+1)`` (the benchmarking
range), joined to the controller (``198.18.0.1``, root namespace) by a bridge, so job steps on different nodes
talk over real TCP between different addresses. Everything is private to one temporary folder: the Slurm
configuration (``slurmctld -f``, ``slurmd -f``, ``SLURM_CONF`` for the client commands), state, spool and
logs, and a private munge key and socket (``munged --key-file --socket``, ``AuthInfo=socket=``). The cluster
refuses to start, with a reason, where it would meet a Slurm or munge of the machine, or names and addresses
already in use; :meth:`Cluster.close` tears down all it made (daemons and the processes in its namespaces by
PID, namespaces, bridge, iptables rules, ``/etc/netns`` entries), also after a failed start.

Faults: :meth:`partition` / :meth:`heal` (the node's link down / up), :meth:`loss` (random packet loss on a
node's link with iptables ``statistic``), :meth:`limit` (bandwidth, ``tc tbf``). Every wait is bounded.

One file, past 500 lines, on purpose: the cluster's set-up and its teardown (after a failure too) must be read
together to see that nothing it starts outlives it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = ipaddress.ip_network("198.18.0.0/24")
CONTROLLER_ADDR = "198.18.0.1"
BRIDGE = "pxdbg-br0"
CTLD_PORT = 16817
SLURMD_PORT = 16818
#: the Slurm and munge programs, and what each one's absence means
PROGRAMS = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "squeue": "slurm-client",
    "scancel": "slurm-client",
    "sinfo": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "iptables": "iptables",
}
DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "munged")


class ClusterUnavailable(RuntimeError):
    """The emulated cluster cannot be built here; the message says why and what to do."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _run(argv: list[str], timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def _foreign_daemons(ours: set[int]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if comm in DAEMONS and state not in ("Z", "X"):  # a zombie left by an earlier run runs nothing
            found.append(f"{comm} (pid {entry.name})")
    return found


def unavailable(reason: str) -> None:
    """Skip the calling test with ``reason``; under ``CI=true`` fail it instead (CI must be able to build the farm)."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"farm tests cannot run: {reason} (CI=true: the emulated cluster must build here)", pytrace=False)
    pytest.skip(f"farm tests: {reason}")


def check_environment(nodes: int, need_dns: bool = False) -> str | None:
    """None if the cluster can be built here, else the reason in one line."""
    if not os.uname().sysname == "Linux":
        return "the farm tests need Linux (network namespaces)"
    if os.geteuid() != 0:
        return "the farm tests need root (network namespaces, Slurm daemons); run them as root after tools/farm-deps.sh"
    missing = sorted(
        {pkg for prog, pkg in PROGRAMS.items() if _which(prog) is None}
        | ({"dnsmasq-base"} if need_dns and _which("dnsmasq") is None else set())
    )
    if missing:
        return f"missing Debian packages {' '.join(missing)}; install them with tools/farm-deps.sh (as root)"
    foreign = _foreign_daemons(set())
    if foreign:
        return (
            f"a Slurm or munge of this machine is running ({', '.join(foreign[:4])}); the farm tests refuse to "
            "run beside it: run them on a machine (or container) without one"
        )
    existing = set(_run(["ip", "netns", "list"]).stdout.split())
    taken = sorted({f"n{i}" for i in range(1, nodes + 1)} & existing)
    if taken:
        return f"network namespace(s) {', '.join(taken)} exist already; remove them (ip netns del NAME) first"
    links = _run(["ip", "-o", "link", "show"]).stdout
    if re.search(rf"\b{re.escape(BRIDGE)}\b", links):
        return f"a link named {BRIDGE} exists already; remove it (ip link del {BRIDGE}) first"
    for line in _run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m and ipaddress.ip_interface(m.group(1)).network.overlaps(SUBNET):
            return f"an interface here already has an address in {SUBNET} ({line.split()[1]}); the farm needs it"
    for port in (CTLD_PORT,):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"TCP port {port} (the private slurmctld's) is in use here"
    return None


@dataclass
class Job:
    id: str
    state: str
    node: str
    array_task: str = ""


@dataclass
class Cluster:
    """``nodes`` emulated nodes; ``partitions`` maps a partition name to node numbers (1-based)."""

    nodes: int
    partitions: dict[str, list[int]]
    cpus_per_node: int = 16
    # what a node claims (config_overrides); memory is not a consumable resource (CR_Core), so jobs asking
    # --mem (the producer recipe does) fit without competing for it
    memory_mb_per_node: int = 65536
    root: Path = field(init=False)
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)
    namespaces: list[str] = field(default_factory=list, init=False)
    links: list[str] = field(default_factory=list, init=False)
    netns_etc: list[Path] = field(default_factory=list, init=False)
    rules: list[tuple[str | None, list[str]]] = field(default_factory=list, init=False)
    extra: list[subprocess.Popen] = field(default_factory=list, init=False)

    # -- addresses and names ---------------------------------------------------------------------------------
    @staticmethod
    def addr(node: int) -> str:
        """The address of ``node<i>`` (1-based)."""
        return str(SUBNET.network_address + 1 + node)

    @staticmethod
    def ns(node: int) -> str:
        return f"n{node}"

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge-run" / "munge.sock"

    def env(self, **extra: str) -> dict:
        """Environment for Slurm client commands (and jobs, which inherit it): this cluster's config."""
        env = dict(os.environ)
        env.update(SLURM_CONF=str(self.conf), **extra)
        return env

    # -- start -----------------------------------------------------------------------------------------------
    def start(self) -> Cluster:
        reason = check_environment(self.nodes)
        if reason:
            raise ClusterUnavailable(reason)
        self.root = Path(tempfile.mkdtemp(prefix="pxdbg-farm-", dir="/tmp"))
        try:
            self.root.chmod(0o755)  # munged wants its socket's directories open to all
            self._start_munge()
            self._start_network()
            self._write_conf()
            self._start_slurm()
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        try:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
        finally:
            log.close()
        self.daemons[name] = proc
        return proc

    def _start_munge(self) -> None:
        for sub, mode in (("log", 0o755), ("munge-key", 0o700), ("munge-run", 0o755)):
            (self.root / sub).mkdir()
            (self.root / sub).chmod(mode)
        key = self.root / "munge-key" / "munge.key"
        _run(["mungekey", "--create", f"--keyfile={key}"])
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.root / 'munge-run' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge-key' / 'munged.seed'}",
            ],
        )
        self._wait(
            lambda: self.munge_socket.exists(),
            10,
            "munged did not create its socket",
            self.root / "log" / "munged.log",
            proc="munged",
        )

    def _ip(self, *args: str, ns: str | None = None) -> None:
        _run(["ip", *(["-n", ns] if ns else []), *args])

    def _start_network(self) -> None:
        self._ip("link", "add", BRIDGE, "type", "bridge")
        self.links.append(BRIDGE)
        self._ip("addr", "add", f"{CONTROLLER_ADDR}/{SUBNET.prefixlen}", "dev", BRIDGE)
        self._ip("link", "set", BRIDGE, "up")
        for i in range(1, self.nodes + 1):
            ns, veth = self.ns(i), f"pxdbg-v{i}"
            self._ip("netns", "add", ns)
            self.namespaces.append(ns)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.links.append(veth)
            self._ip("link", "set", veth, "master", BRIDGE, "up")
            self._ip("addr", "add", f"{self.addr(i)}/{SUBNET.prefixlen}", "dev", "eth0", ns=ns)
            self._ip("link", "set", "eth0", "up", ns=ns)
            self._ip("link", "set", "lo", "up", ns=ns)

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "out"):
            (self.root / sub).mkdir()
        host = socket.gethostname()
        lines = [
            "ClusterName=pxdbgfarm",
            f"SlurmctldHost={host}({CONTROLLER_ADDR})",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",  # nodes claim more CPUs than the machine has
            "SchedulerParameters=sched_interval=1,bf_interval=1",
            "KillWait=5",
            "MessageTimeout=5",
            "SlurmdTimeout=30",
            "ReturnToService=2",
            "MaxArraySize=1000",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}/%n",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd-%n.log'}",
            f"NodeName=node[1-{self.nodes}] NodeHostname={host} NodeAddr={self.addr(1)[:-1]}"
            f"[{1 + 1}-{self.nodes + 1}] CPUs={self.cpus_per_node} RealMemory={self.memory_mb_per_node} State=UNKNOWN",
        ]
        assert all(self.addr(i).startswith(self.addr(1)[:-1]) for i in range(1, self.nodes + 1)) and self.nodes < 9
        for k, (name, members) in enumerate(self.partitions.items()):
            nodes = ",".join(f"node{i}" for i in members)
            lines.append(
                f"PartitionName={name} Nodes={nodes} Default={'YES' if k == 0 else 'NO'} "
                "MaxTime=INFINITE State=UP OverSubscribe=NO"
            )
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_slurm(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        for i in range(1, self.nodes + 1):
            (self.root / "spool" / f"node{i}").mkdir()
            self._spawn(
                f"slurmd-node{i}",
                ["nsenter", f"--net=/run/netns/{self.ns(i)}", "slurmd", "-D", "-N", f"node{i}", "-f", str(self.conf)],
            )

        def all_idle() -> bool:
            out = self.slurm(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split()
            return len(out) >= 2 * self.nodes and all(s == "idle" for s in out[1::2])

        self._wait(all_idle, 60, "the nodes did not become idle", self.root / "log" / "slurmctld.log")

    def _wait(self, pred, timeout: float, what: str, log: Path | None = None, proc: str | None = None) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            if proc and self.daemons[proc].poll() is not None:
                break
            time.sleep(0.1)
        if pred():
            return
        tail = ""
        if log is not None and log.exists():
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ClusterUnavailable(f"{what} within {timeout:.0f} s{tail}")

    # -- Slurm ------------------------------------------------------------------------------------------------
    def slurm(self, argv: list[str], timeout: float = 30, check: bool = True, env: dict | None = None):
        """Run a Slurm client command against this cluster (bounded)."""
        return _run(argv, timeout=timeout, check=check, env=env or self.env())

    def sbatch(self, script: str | os.PathLike, *options: str, env: dict | None = None) -> str:
        """Submit a batch script; return the job id."""
        out = self.slurm(["sbatch", "--parsable", *options, str(script)], env=env).stdout.strip()
        return out.split(";")[0]

    def jobs(self) -> list[Job]:
        out = self.slurm(["squeue", "-h", "-r", "-o", "%i|%T|%N|%K"], check=False).stdout
        return [Job(*line.split("|")) for line in out.splitlines() if line.strip()]

    def job_state(self, job_id: str) -> list[str]:
        """States of a job's (or array's) tasks still known to squeue; [] when all are gone."""
        return [j.state for j in self.jobs() if j.id.split("_")[0] == job_id]

    def wait_running(self, job_id: str, tasks: int = 1, timeout: float = 60) -> None:
        self._wait(
            lambda: self.job_state(job_id).count("RUNNING") >= tasks,
            timeout,
            f"job {job_id} did not reach {tasks} running task(s)",
            self.root / "log" / "slurmctld.log",
        )

    def wait_gone(self, job_id: str, timeout: float) -> None:
        self._wait(
            lambda: not self.job_state(job_id),
            timeout,
            f"job {job_id} did not finish",
            self.root / "log" / "slurmctld.log",
        )

    def describe(self, job_id: str) -> str:
        """squeue's view of a job (state and reason), for failure messages."""
        out = self.slurm(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T %r %N"], check=False)
        return (out.stdout.strip() or "not in the queue") + (f" ({out.stderr.strip()})" if out.stderr.strip() else "")

    def scancel(self, *args: str) -> None:
        self.slurm(["scancel", *args], check=False)

    # -- running things on nodes ------------------------------------------------------------------------------
    def node_argv(self, node: int, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns(node)}", *argv]

    def in_node(self, node: int, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return _run(self.node_argv(node, argv), timeout=timeout, **kw)

    # -- faults -----------------------------------------------------------------------------------------------
    def partition(self, node: int) -> None:
        """Cut a node off: its link to the bridge goes down."""
        self._ip("link", "set", f"pxdbg-v{node}", "down")

    def heal(self, node: int) -> None:
        self._ip("link", "set", f"pxdbg-v{node}", "up")

    def _iptables(self, ns: str | None, rule: list[str], add: bool) -> None:
        argv = ["iptables", "-w", "5", "-A" if add else "-D", *rule]
        _run(["ip", "netns", "exec", ns, *argv] if ns else argv)

    def loss(self, node: int, probability: float) -> None:
        """Drop that share of the packets a node receives and sends, at random (iptables ``statistic``)."""
        for chain in ("INPUT", "OUTPUT"):
            rule = [
                chain,
                "-i" if chain == "INPUT" else "-o",
                "eth0",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                f"{probability}",
                "-j",
                "DROP",
            ]
            self._iptables(self.ns(node), rule, add=True)
            self.rules.append((self.ns(node), rule))

    def clear_faults(self, node: int) -> None:
        ns = self.ns(node)
        for entry in [r for r in self.rules if r[0] == ns]:
            self._iptables(ns, entry[1], add=False)
            self.rules.remove(entry)
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=False)
        self.heal(node)

    def netns_resolv(self, ns: str, text: str) -> None:
        """Give a namespace its own resolv.conf (``ip netns exec`` bind-mounts /etc/netns/NS/)."""
        d = Path("/etc/netns") / ns
        if d.exists():
            raise ClusterUnavailable(f"{d} exists already; remove it first")
        made_parent = not d.parent.exists()
        d.mkdir(parents=True)
        self.netns_etc.append(d)
        if made_parent:  # removed after the entry, as it was not there before
            self.netns_etc.append(d.parent)
        (d / "resolv.conf").write_text(text)

    def add_namespace(self, ns: str, addr: str, veth: str) -> None:
        """One more namespace on the bridge (a DNS client, a server), torn down with the cluster."""
        self._ip("netns", "add", ns)
        self.namespaces.append(ns)
        self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(veth)
        self._ip("link", "set", veth, "master", BRIDGE, "up")
        self._ip("addr", "add", f"{addr}/{SUBNET.prefixlen}", "dev", "eth0", ns=ns)
        self._ip("link", "set", "eth0", "up", ns=ns)
        self._ip("link", "set", "lo", "up", ns=ns)

    def spawn(
        self, name: str, argv: list[str], node: int | None = None, ns: str | None = None, env: dict | None = None
    ) -> subprocess.Popen:
        """A process of the test's own (a DNS server, a client), in a node's namespace; stopped at close."""
        if node is not None:
            argv = self.node_argv(node, argv)
        elif ns is not None:
            argv = ["nsenter", f"--net=/run/netns/{ns}", *argv]
        proc = self._spawn(name, argv, env)
        self.extra.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / "log" / name
        if not path.exists():
            return f"(no {name})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- teardown ---------------------------------------------------------------------------------------------
    def _pids_in(self, ns: str) -> list[int]:
        out = _run(["ip", "netns", "pids", ns], check=False, timeout=10).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    @staticmethod
    def _stop(pids: list[int], grace: float = 5.0) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Tear everything down; each step runs even if an earlier one failed."""
        errors = []

        def step(fn, *args):
            try:
                fn(*args)
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(f"{fn.__name__}{args}: {exc!r}")

        if getattr(self, "root", None) is not None and "slurmctld" in self.daemons:
            step(lambda: self.slurm(["scancel", "--full", "-u", "root"], timeout=10, check=False))
        # daemons, the test's own processes, and whatever runs in the namespaces (job steps and their tasks
        # outlive slurmd): all stopped together, SIGTERM then SIGKILL
        pids = {p.pid for p in [*self.daemons.values(), *self.extra] if p.poll() is None}
        for ns in self.namespaces:
            step(lambda ns=ns: pids.update(self._pids_in(ns)))
        step(self._stop, sorted(pids))
        for p in [*self.daemons.values(), *self.extra]:
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        for ns, rule in list(self.rules):
            step(self._iptables, ns, rule, False)
        self.rules.clear()
        for ns in reversed(self.namespaces):
            step(_run, ["ip", "netns", "del", ns])
        self.namespaces.clear()
        for link in reversed(self.links):
            step(_run, ["ip", "link", "del", link], 10, False)
        self.links.clear()
        for d in self.netns_etc:
            step(shutil.rmtree, d)
        self.netns_etc.clear()
        if getattr(self, "root", None) is not None and not os.environ.get("PXDBG_FARM_KEEP"):
            step(shutil.rmtree, self.root)
        if errors:
            raise RuntimeError("farm teardown incomplete: " + "; ".join(errors))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
