"""Local producer processes for one consumer: started as subprocesses, stopped at close or parent death.

Each worker is ``python -m pxdbg produce ... --bind ipc://<tmp>/w<i>.sock --parent-pid <this pid>``, in its
own process session (so a Ctrl-C reaches the consumer, which then shuts the workers down in order). A worker
whose parent dies notices within half a second (its parent pid changes) and exits. Never forked: torch and
zmq contexts do not survive a fork.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pxdbg.shared.cpus import usable_cpus
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.spec import ProducerSpec

log = logging.getLogger("pxdbg.consumer")


@dataclass
class Worker:
    index: int
    endpoint: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


class LocalWorkers:
    """K producer subprocesses on ipc endpoints in a private temporary directory."""

    def __init__(self, k: int, spec: ProducerSpec, *, python: str | None = None) -> None:
        if k < 1:
            raise ConfigError("the number of local workers must be at least 1")
        if spec.threads is None and spec.info.is_gan and spec.device == "cpu":
            # K GAN producers share the CPUs this process may use (affinity and cgroup quota): each would
            # otherwise take them all (oversubscribed)
            spec = spec.replace(threads=max(1, usable_cpus() // k))
        self.spec = spec
        self.dir = Path(tempfile.mkdtemp(prefix="pxdbg-"))
        self.workers: list[Worker] = []
        try:
            for i in range(k):
                endpoint = f"ipc://{self.dir}/w{i}.sock"
                cmd = [
                    python or sys.executable,
                    "-m",
                    "pxdbg",
                    "produce",
                    *spec.produce_argv(),
                    "--bind",
                    endpoint,
                    "--parent-pid",
                    str(os.getpid()),
                ]
                log_path = self.dir / f"w{i}.log"
                with open(log_path, "wb") as logf:
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                    )
                self.workers.append(Worker(i, endpoint, proc, log_path))
        except BaseException:
            self.close()
            raise
        log.info("started %d local producer(s) in %s", k, self.dir)

    @property
    def endpoints(self) -> list[str]:
        return [w.endpoint for w in self.workers]

    def exited(self) -> list[Worker]:
        return [w for w in self.workers if w.process.poll() is not None]

    def close(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, wait up to ``timeout`` seconds, then SIGKILL; remove the directory."""
        for w in self.workers:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("producer %d did not stop within %.0f s; killing it", w.index, timeout)
                w.process.kill()
                w.process.wait(timeout=timeout)
        self.workers = [] if all(w.process.poll() is not None for w in self.workers) else self.workers
        shutil.rmtree(self.dir, ignore_errors=True)
