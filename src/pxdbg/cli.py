"""The ``pxdbg`` command: generate, produce, run, farm, keys, validate, calibrate, bench, models, payload.

torch is imported only by the subcommands that generate in this process (generate, produce, bench), so
``pxdbg run --connect ...`` on a simulation node does not pay for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time

from pxdbg import outputs
from pxdbg.shared import discovery, payloads, registry, security, transport
from pxdbg.shared.errors import ConfigError, PxdbgError
from pxdbg.shared.seeding import event_index, event_stream_seed
from pxdbg.shared.spec import ProducerSpec
from pxdbg.shared.version import __version__

log = logging.getLogger("pxdbg")


class Progress:
    """A one-line progress report on stderr: redrawn on a terminal, every 10 % otherwise."""

    def __init__(self, total: int, what: str = "events", enabled: bool = True) -> None:
        self.total, self.what, self.enabled = total, what, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.next_pct = 10

    def update(self, done: int, extra=None) -> None:
        """Report ``done``; ``extra`` is a callable giving more text, called only when a line is printed."""
        if not self.enabled:
            return
        now = time.perf_counter()
        pct = 100 * done // max(self.total, 1)
        if self.tty and (now - self.last > 0.25 or done == self.total):
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            text = extra() if extra else ""
            sys.stderr.write(f"\r{done}/{self.total} {self.what} ({pct:3d} %) {rate:8.1f}/s {text}   ")
            if done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif not self.tty and (pct >= self.next_pct or done == self.total):
            self.next_pct = pct + 10
            rate = done / max(now - self.t0, 1e-9)
            text = extra() if extra else ""
            print(f"{done}/{self.total} {self.what} ({pct} %), {rate:.1f}/s {text}", file=sys.stderr, flush=True)


# -- models / payload ----------------------------------------------------------------------------------
def cmd_models(args) -> int:
    for info in registry.REGISTRY.values():
        try:
            p = payloads.find(info.name, args.globaltag, verify=False)
            where = f"payload {p.name} [{p.globaltag}] -> {p.path}"
        except payloads.PayloadError:
            where = (
                f"no default payload in the stores (global tag {args.globaltag or payloads.DEFAULT_GLOBALTAG}); "
                f"give --checkpoint or run 'pxdbg payload add PATH --model {info.name}'"
                + (f"; to try it: pxdbg models init {info.name} -o {info.name}-random.pt" if info.is_gan else "")
            )
        print(f"{info.name:11s} {where}\n{'':11s} ({info.kind}: {info.summary})")
    print("payload stores searched, in order: " + ", ".join(str(s) for s in payloads.search_path()))
    return 0


def cmd_models_init(args) -> int:
    from pxdbg.models import random_weights

    if not args.out.endswith(".pt"):
        raise ConfigError(f"-o/--out names the checkpoint to write, a .pt file; got {args.out!r}")
    outputs.refuse_overwrite(args.out, args.force)
    path = random_weights.write(args.model, args.out, seed=args.seed, occupancy=args.occupancy)
    sha = payloads.sha256_file(path)
    print(
        f"wrote {path}: seeded random weights of {args.model} (seed {args.seed}, {100 * args.occupancy:g} % of the "
        f"pixels hit; sha256 {sha}). Its frames have real shapes and costs but are no background; use it with "
        f"--model {args.model} --checkpoint {path}"
    )
    return 0


def cmd_payload_add(args) -> int:
    from pxdbg.models import check_checkpoint, random_weights

    check_checkpoint(args.model, args.path)  # refuse a file that would not load: unsafe, or another model's
    if random_weights.is_random(args.path) and not args.force:
        raise ConfigError(
            f"{args.path} holds seeded random weights (pxdbg models init), not a trained model: as a default "
            f"payload every user of the global tag would get frames that are no background. Pass --force to "
            f"register it anyway"
        )
    p = payloads.add(args.path, args.model, args.globaltag, args.store)
    print(f"registered {p.name} in global tag {p.globaltag}: {p.path} (sha256 {p.sha256})")
    return 0


def cmd_payload_list(args) -> int:
    for store in payloads.search_path():
        index = payloads.read_index(store)
        for tag, entries in sorted(index["globaltags"].items()):
            for name, entry in sorted(entries.items()):
                print(f"{store}  {tag}  {name}  {entry['file']}  sha256 {entry['sha256']}")
    return 0


# -- generate ------------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from pxdbg.models import load_spec

    spec = ProducerSpec.from_args(args)
    if spec.info.is_gan or args.device != "cpu":  # the parametric model on the CPU is numpy: no torch to start
        import torch

        torch.set_num_threads(args.threads)
    seed, random_seed, first_frame = _stream(args)
    stream_seed, event_keyed = seed, None
    if args.event is not None:  # the frames a basf2 job's module gives events (exp, run, event...) (keying="event")
        if args.first_frame is not None:
            raise ConfigError("--event chooses the frames by event number; leave out --first-frame")
        exp, run = args.exp or 0, args.run or 0
        try:
            first_frame = event_index(exp, run, args.event)
            event_index(exp, run, args.event + args.events - 1)
        except ValueError as exc:
            raise ConfigError(f"--exp/--run/--event: {exc}") from None
        stream_seed = event_stream_seed(seed)
        event_keyed = {"seed": seed, "experiment": exp, "run": run, "event": args.event}
    elif args.exp is not None or args.run is not None:
        raise ConfigError("--exp and --run go with --event (the first event number)")
    model = load_spec(spec)
    meta = {**model.identity.as_dict(), "seed": stream_seed, "first_frame": first_frame}
    if event_keyed is not None:
        meta["event_keyed"] = event_keyed
    if _random_weights(model):
        meta["random_weights"] = True
    with outputs.interruptible(), _output(args, meta) as out:
        log.info(
            "generating %d events with %s on %s, stream seed %d%s",
            args.events - out.done,
            model.identity,
            model.device,
            seed,
            " (random: pass --seed to reproduce)" if random_seed else "",
        )
        progress = Progress(args.events, enabled=not args.quiet)
        t0 = time.perf_counter()
        start = out.done
        while out.done < args.events:
            n = min(args.batch, args.events - out.done)
            first = first_frame + out.done
            for frame in model.frames(stream_seed, range(first, first + n)):
                out.append(frame)
            progress.update(out.done)
    if out.stopped:
        return out.stopped
    dt = time.perf_counter() - t0
    made = args.events - start
    print(
        f"wrote {args.events} events to {args.out} in {dt:.1f} s ({made / dt:.2f} events/s"
        f"{f', {start} of them resumed' if start else ''}); model {model.identity}, stream seed {seed}"
    )
    return 0


def _stream(args) -> tuple[int, bool, int]:
    """The stream seed (and whether it was drawn at random) and first frame of ``generate`` or ``run``."""
    return outputs.stream_start(
        args.seed,
        args.first_frame,
        out=getattr(args, "out", None),
        resume=getattr(args, "resume", False),
        by_event=getattr(args, "event", None) is not None,
    )


def _output(args, meta: dict) -> outputs.RunOutput:
    """The ``--out`` of ``generate`` or ``run`` (none: the events are only counted); its reports go to stderr."""
    return outputs.RunOutput(
        getattr(args, "out", None),
        args.events,
        meta,
        resume=getattr(args, "resume", False),
        force=getattr(args, "force", False),
        notify=lambda text: print(text, file=sys.stderr),
    )


# -- produce -------------------------------------------------------------------------------------------
def cmd_produce(args) -> int:
    from pxdbg.models import load_spec
    from pxdbg.producer.server import ProducerServer

    spec = ProducerSpec.from_args(args)
    transport.check_binds(args.bind)  # before the model loads: a malformed or busy endpoint fails at once
    for ep in args.bind:
        _check_tcp_port_free(ep)
    # checked before the model loads: a bad --register fails at once
    registrar = discovery.Registrar(args.register, args.bind) if args.register else None
    threads = spec.threads or _default_producer_threads(spec)
    uses_torch = spec.info.is_gan or spec.device != "cpu"  # the parametric model on the CPU is numpy code
    if uses_torch:
        import torch

        torch.set_num_threads(threads)
    model = load_spec(spec)
    how = f"{threads} torch thread(s)" if uses_torch else "numpy (torch not loaded)"
    log.info("%s on %s with %s", model.identity, model.device, how)
    if _random_weights(model):
        log.warning(
            "%s holds seeded random weights (pxdbg models init): its frames are no background", model.checkpoint_path
        )
    # A GAN on a CPU computes in fixed calls of a few images whatever the batch, so a batch of one event costs
    # nothing in throughput and delivers each frame as soon as it is made (an ieagan event takes ~10 s on a CPU).
    max_batch = spec.max_batch or (1 if model.is_gan and model.device.type == "cpu" else 8)
    server = ProducerServer(
        model,
        args.bind,
        max_batch=max_batch,
        parent_pid=args.parent_pid,
        max_consumers=args.max_consumers,
        max_pending=args.max_pending,
        grace=args.grace,
        hello_timeout=args.hello_timeout,
        max_per_address=args.max_per_address,
        transport_options=security.options_from_args(args),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.shutdown())  # drain; a second signal stops at once
    signal.signal(signal.SIGHUP, lambda *_: security.reload_allow_lists())
    metrics = None
    if args.metrics_port is not None:
        from pxdbg.producer.metrics import MetricsServer, default_host

        metrics = MetricsServer(server, args.metrics_port, host=args.metrics_host or default_host(args.bind))
    ready = threading.Event()
    if registrar is not None:  # entries appear once the sockets are bound, and go when the producer stops
        registrar.start_when(ready, str(model.identity), {"device": str(model.device)})
    try:
        server.serve(ready)
    finally:
        if registrar is not None:
            registrar.close()
        if metrics is not None:
            metrics.close()
    return 0


def _random_weights(model) -> bool:
    """Whether a loaded model's checkpoint is marked as seeded random weights (``pxdbg models init``)."""
    if not model.is_gan or model.checkpoint_path is None:
        return False
    from pxdbg.models import random_weights

    return random_weights.is_random(model.checkpoint_path)


def _check_tcp_port_free(endpoint: str) -> None:
    """Refuse a tcp endpoint whose port another process listens on, before the model loads (and before the
    producer logs anything about a start it cannot finish)."""
    import errno
    import socket

    if not endpoint.startswith("tcp://"):
        return
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    host = "" if host == "*" else host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds: TIME_WAIT is no conflict
        probe.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot bind {endpoint}: the address is in use (another producer?); stop that one or choose "
                f"another port"
            ) from None
        # anything else (a name to resolve, an address not on this host) is for libzmq to report
    finally:
        probe.close()


def cmd_keys_new(args) -> int:
    public, secret = security.new_key_pair(args.dir, args.name)
    print(f"wrote {public} (public: hand it to the other side) and {secret} (secret: keep it here, mode 0600)")
    return 0


def _default_producer_threads(spec: ProducerSpec) -> int:
    """Torch threads of a producer when ``--threads`` is not given: the engine's choice for a GAN on this
    device, one for the sparse models (they run numpy in one thread; scale those with processes)."""
    if not spec.info.is_gan:
        return 1
    try:
        from pxdbg.models.engine import recommended_threads
    except ImportError:
        return 1
    return recommended_threads(spec.info, spec.device)


# -- run -----------------------------------------------------------------------------------------------
def _spend_cpu(ms: float) -> None:
    end = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < end:
        x += 1


def cmd_run(args) -> int:
    from pxdbg.consumer import BackgroundClient, PipelineError

    seed, random_seed, first_frame = _stream(args)
    spec = ProducerSpec.from_args(args)
    meta = {**spec.identity().as_dict(), "seed": seed, "first_frame": first_frame}
    source = dict(workers=args.workers) if args.workers else dict(endpoints=args.connect)
    t_start = time.perf_counter()
    try:
        with outputs.interruptible(), _output(args, meta) as out:
            start = out.done
            with BackgroundClient(
                **source,
                **dataclasses.asdict(spec),
                seed=seed,
                first_frame=first_frame + start,
                prefetch=args.prefetch,
                connect_timeout=args.connect_timeout,
                frame_timeout=args.frame_timeout,
                stall_timeout=args.stall_timeout,
                hedge_budget=args.hedge_budget,
                audit=args.audit,
                max_producers=args.max_producers,
                events=args.events - start,
                transport=security.options_from_args(args),
            ) as client:
                log.info(
                    "stream seed %d%s, model %s, %s%s",
                    seed,
                    " (random: pass --seed to reproduce)" if random_seed else "",
                    client.identity,
                    f"{args.workers} local producer(s)" if args.workers else f"producers {args.connect}",
                    f"; resuming at event {start}" if start else "",
                )
                progress = Progress(args.events, enabled=not args.quiet)
                digits = 0
                first_frame_s = None
                while out.done < args.events:
                    frame = client.next()
                    if first_frame_s is None:
                        first_frame_s = time.perf_counter() - t_start
                    digits += frame.n_digits
                    out.append(frame)
                    if args.work_ms:
                        _spend_cpu(args.work_ms)
                    progress.update(out.done, lambda: f"wait p50 {1e3 * client.stats.wait_percentile(50):.3f} ms")
                summary = _run_summary(
                    args, client, seed, args.events - start, digits, first_frame_s, time.perf_counter() - t_start
                )
    except PipelineError as exc:
        print(f"pxdbg run: {exc}", file=sys.stderr)
        return 1
    if out.stopped:
        return out.stopped
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        from pxdbg.shared.frame import BYTES_PER_DIGIT
        from pxdbg.shared.geometry import FRAME_PIXELS

        s = summary
        print(
            f"events          {s['events']} in {s['wall_s']:.2f} s: {s['frames_per_s']:.1f} frames/s "
            f"(first frame after {s['first_frame_s']:.2f} s)"
        )
        print(f"model           {s['model']}, stream seed {seed}")
        print(
            f"consumer wait   p50 {s['wait_ms_p50']:.3f} ms, p99 {s['wait_ms_p99']:.3f} ms per event once warm; "
            f"{s['wait_ms_total'] / 1e3:.2f} s in all"
        )
        print(
            f"wire            {s['wire_bytes_per_frame'] / 1e3:.1f} kB per frame "
            f"({s['wire_bytes_per_digit']:.2f} bytes per digit, {s['digits_per_frame']:.0f} digits per frame; "
            f"dense would be {FRAME_PIXELS / 1e6:.2f} MB, {BYTES_PER_DIGIT} bytes per digit in memory)"
        )
        print(
            f"pipeline        at most {s['max_in_flight']} frames in flight (prefetch {args.prefetch}); "
            f"{', '.join(f'{k} {v}' for k, v in sorted(s['counters'].items())) or 'no events'}"
        )
        if args.out:
            print(f"wrote           {args.out}")
    return 0


def _run_summary(args, client, seed: int, events: int, digits: int, first_frame_s, wall: float) -> dict:
    from pxdbg.shared.geometry import FRAME_PIXELS

    stats = client.stats
    return {
        "events": events,
        "model": str(client.identity),
        "seed": seed,
        "wall_s": wall,
        "first_frame_s": first_frame_s,
        "frames_per_s": events / wall,
        "wait_ms_p50": 1e3 * stats.wait_percentile(50),
        "wait_ms_p99": 1e3 * stats.wait_percentile(99),
        "wait_ms_total": 1e3 * stats.wait_total_s,
        "digits_per_frame": digits / max(events, 1),
        "wire_bytes_per_frame": client.wire_bytes / max(client.counters["frames_received"], 1),
        "wire_bytes_per_digit": client.wire_bytes / max(client.wire_digits, 1),
        "dense_bytes_per_frame": FRAME_PIXELS,
        "max_in_flight": client.max_in_flight,
        "counters": dict(client.counters),
    }


# -- validate ------------------------------------------------------------------------------------------
def cmd_validate(args) -> int:
    from pxdbg.validate import validate

    bars: dict[str, Progress] = {}

    def progress(label: str, done: int, total: int) -> None:
        if args.quiet:
            return
        bar = bars.setdefault(label, Progress(total, what=f"events of {label}"))
        bar.update(done)

    seed, _ = outputs.parse_seed(args.seed if args.seed is not None else "1")
    checks, report = validate(
        args.sample,
        args.reference,
        args.out,
        events=args.events,
        checkpoint=args.checkpoint,
        reference_checkpoint=args.reference_checkpoint,
        seed=seed,
        device=args.device,
        progress=progress,
    )
    for c in checks:
        print(c.line())
    failed = sum(c.verdict == "FAIL" for c in checks)
    print(
        f"{'FAIL' if failed else 'PASS'}: {failed} of {sum(c.verdict != 'n/a' for c in checks)} checks failed; "
        f"report {report}, plots and metrics.json beside it"
    )
    return 1 if failed and args.strict else 0


# -- calibrate -----------------------------------------------------------------------------------------
def cmd_join(args) -> int:
    from pxdbg.shared.digitsfile import join

    outputs.refuse_overwrite(args.out, args.force)
    joined = join(args.out, args.parts, remove_parts=args.remove_parts)
    print(
        f"wrote {joined.n_events} events of stream {joined.meta.get('seed')} (frames "
        f"{joined.meta.get('first_frame', 0)}..) to {args.out} from {len(args.parts)} part(s)"
        f"{'' if joined.meta.get('complete', True) else '; a part was partial, so is the output'}"
    )
    return 0


def cmd_calibrate(args) -> int:
    from pxdbg.calibrate import calibrate, speed, summary_lines

    bar: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, what="events read", enabled=not args.quiet))
        bar[0].update(done)

    if not args.out.endswith(".pt"):
        raise ConfigError(f"-o/--out names the payload to write, a .pt file; got {args.out!r}")
    result = calibrate(args.sample, events=args.events, seed=args.seed, progress=progress)
    result.summary["ms_per_frame"] = 1e3 * speed(result.model)
    sha = result.save(args.out)
    for line in summary_lines(result.summary):
        print(line)
    print(f"wrote           {args.out} (sha256 {sha}: the model identity)")
    print(
        f"use it          --model parametric --checkpoint {args.out}, or register it as the default payload: "
        f"pxdbg payload add {args.out} --model parametric"
    )
    return 0


# -- files: info, convert, export ----------------------------------------------------------------------
def cmd_info(args) -> int:
    from pxdbg.fileformats import describe

    for path in args.files:
        rows = describe(path)
        print(path)
        for name, value in rows:
            print(f"  {name:<15} {value}")
    return 0


def cmd_convert(args) -> int:
    from pxdbg.fileformats import convert

    n = convert(args.input, args.output, force=args.force, basf2=args.basf2, experiment=args.experiment, run=args.run)
    what = f" (basf2, experiment {args.experiment}, run {args.run})" if args.basf2 else ""
    print(f"wrote {n} events of {args.input} to {args.output}{what}")
    return 0


def cmd_export(args) -> int:
    """Events generated here (or read from a file) as a basf2 file that BGOverlayInput accepts."""
    from pathlib import Path

    from pxdbg.basf2files import Basf2DigitsWriter

    if Path(args.basf2).exists() and not args.force:
        raise ConfigError(f"{args.basf2} exists; pass --force to overwrite it")
    if args.source:
        from pxdbg.fileformats import convert

        n = convert(args.source, args.basf2, force=args.force, basf2=True, experiment=args.experiment, run=args.run)
        print(
            f"wrote {n} events of {args.source} to {args.basf2} (basf2, experiment {args.experiment}, run {args.run})"
        )
        return 0
    if args.events is None:
        raise ConfigError("give --events N to generate, or --from FILE to export a file's events")
    import torch

    from pxdbg.models import load_spec

    torch.set_num_threads(args.threads)
    args.first_frame = args.first_frame if args.first_frame is not None else 0
    seed, random_seed = outputs.parse_seed(args.seed)
    model = load_spec(ProducerSpec.from_args(args))
    meta = {**model.identity.as_dict(), "seed": seed, "first_frame": args.first_frame}
    progress = Progress(args.events, enabled=not args.quiet)
    t0 = time.perf_counter()
    with Basf2DigitsWriter(args.basf2, meta, experiment=args.experiment, run=args.run) as out:
        for start in range(0, args.events, args.batch):
            first = args.first_frame + start
            for frame in model.frames(seed, range(first, first + min(args.batch, args.events - start))):
                out.append(frame)
            progress.update(out.n_events)
    print(
        f"wrote {args.events} events to {args.basf2} (basf2, experiment {args.experiment}, run {args.run}) in "
        f"{time.perf_counter() - t0:.1f} s; model {model.identity}, stream seed {seed}"
        f"{' (random: pass --seed to reproduce)' if random_seed else ''}"
    )
    return 0


# -- farm status ---------------------------------------------------------------------------------------
def _status_rows(endpoints: list[str], latest, earlier, timeout: float) -> list[dict]:
    """One row per endpoint: its state in the ``latest`` look (answered, refused, bad reply, silent), its checked
    snapshot, and frames/s over the time since the ``earlier`` look if it answered both, else the average since
    the producer started."""
    from pxdbg.consumer.status import printable

    rows = []
    for ep in endpoints:
        row = {"endpoint": printable(ep, 256), "state": "answered", "why": None, "frames_per_s": None}
        snap = latest.get(ep)
        if snap is None:
            if ep in latest.refused:
                row.update(state="refused", why=printable(latest.refused[ep], 1000))
            elif ep in latest.bad:
                row.update(state="bad reply", why=latest.bad[ep])
            else:
                row.update(state="silent", why=f"no answer in {timeout:g} s")
            rows.append({**row, "snapshot": None})
            continue
        sent, before = snap["counters"].get("frames_sent", 0), (earlier or {}).get(ep)
        span = snap["uptime_s"] - before["uptime_s"] if before is not None else 0.0
        if span > 0:
            rate = (sent - before["counters"].get("frames_sent", 0)) / span
        else:
            rate = sent / max(snap["uptime_s"], 1e-9)
        rows.append({**row, "frames_per_s": round(rate, 3), "snapshot": snap})
    return rows


def _print_status_table(rows: list[dict], source, timeout: float) -> None:
    """The table, a summary line, then why each refused or rejected producer is so (silence needs no why)."""
    table = [("address", "identity", "device", "consumers", "frames/s", "pending", "uptime")]
    for row in rows:
        snap = row["snapshot"]
        if snap is None:
            table.append((row["endpoint"], "no answer" if row["state"] == "silent" else row["state"], *[""] * 5))
            continue
        up = int(min(snap["uptime_s"], 1e9))
        table.append(
            (
                row["endpoint"],
                snap["identity"],
                snap["device"],
                str(snap["consumers"]),
                f"{row['frames_per_s']:.1f}",
                str(snap["pending"]),
                f"{up // 3600}:{up // 60 % 60:02d}:{up % 60:02d}",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    count = {state: sum(r["state"] == state for r in rows) for state in ("answered", "refused", "bad reply", "silent")}
    others = [f"{n} {state}" for state, n in count.items() if n and state != "answered"]
    if count["silent"]:
        others[-1] += f" for {timeout:g} s"
    print(
        f"{count['answered']} of {len(rows)} producer(s) answered through {source}"
        f"{'; ' + ', '.join(others) if others else ''}"
    )
    for row in rows:
        if row["state"] in ("refused", "bad reply"):
            print(f"{row['endpoint']}: {row['state']}: {row['why']}")
    sys.stdout.flush()


def cmd_farm_status(args) -> int:
    from pxdbg.consumer.status import ask_status

    source = discovery.parse(args.endpoints)
    options = security.options_from_args(args)
    earlier = None
    while True:
        endpoints = source.resolve()
        latest = ask_status(endpoints, args.timeout, options) if endpoints else None
        if latest is not None and not args.watch and args.interval > 0 and latest:
            time.sleep(args.interval)  # a second look at those that answered, for frames/s over the interval
            earlier = latest
            latest = earlier.updated(ask_status(list(earlier), args.timeout, options))
        if latest is None:
            print(f"no producers found through {source}", file=sys.stderr, flush=True)
        else:
            rows = _status_rows(endpoints, latest, earlier, args.timeout)
            if args.json:
                print(json.dumps({"source": str(source), "time": time.time(), "producers": rows}), flush=True)
            else:
                if args.watch:
                    print(time.strftime("%Y-%m-%d %H:%M:%S"))
                _print_status_table(rows, source, args.timeout)
        if not args.watch:
            return 0 if latest else 1
        earlier = latest
        time.sleep(max(args.interval, 0.1))


def cmd_farm_jobs(args) -> int:
    from pxdbg.consumer import summaries

    paths = [p for d in args.dirs for p in summaries.summary_files(d, args.pattern)]
    totals = summaries.collect(paths)
    if args.prom:
        summaries.write_atomically(args.prom, summaries.prometheus_text(totals))
    if args.json:
        print(json.dumps({**dataclasses.asdict(totals), "wait_buckets_s": summaries.WAIT_BUCKETS_S}))
    else:
        median, p90 = totals.wait_p99_quantile(0.5), totals.wait_p99_quantile(0.9)
        print(
            f"jobs            {totals.jobs} summaries read in {totals.read_s:.2f} s"
            f"{f' ({sum(totals.skipped.values())} files skipped)' if totals.skipped else ''}: "
            f"{totals.events} events, {totals.wait_s:.1f} s waiting for frames in {totals.wall_s:.1f} s of event loops"
        )
        if totals.jobs:
            print(f"wait p99        half of the jobs under {1e3 * median:g} ms, 90 % under {1e3 * p90:g} ms")
        busy = {k: v for k, v in sorted(totals.counters.items()) if v}
        print(f"counters        {', '.join(f'{k} {v}' for k, v in busy.items()) or 'all zero'}")
        for why, n in totals.skipped.most_common():
            print(f"skipped         {n} file(s): {why}")
        if args.prom:
            print(f"wrote           {args.prom}")
    return 0 if totals.jobs else 1


# -- bench ---------------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from pxdbg import bench

    if not args.verbose:  # the local producers' start-up lines would interleave with the tables
        logging.getLogger("pxdbg").setLevel(logging.WARNING)
    if args.files:
        import builtins
        import functools

        result = {"digits_file": bench.bench_digits_file(args.quick), "producer_start": bench.bench_producer_start()}
        bench.print_files_and_start(
            result, functools.partial(builtins.print, file=sys.stderr if args.json else sys.stdout)
        )
    elif args.producer or args.roofline:
        result = bench.bench_producer(args)
    else:
        result = bench.run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


# -- parser --------------------------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


QUIET_HELP = "no progress lines and no INFO log lines: warnings, errors and the result only"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pxdbg",
        description="Belle II PXD background generated on the fly: generate, produce, run, join, farm, keys, "
        "validate, calibrate, bench, models, payload.",
    )
    parser.add_argument("--version", action="version", version=f"pxdbg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the models and where each one's default checkpoint comes from")
    p.add_argument("--globaltag", help=f"global tag whose payloads are listed (default {payloads.DEFAULT_GLOBALTAG})")
    p.set_defaults(func=cmd_models)
    msub = p.add_subparsers(dest="models_command", metavar="{init}")
    mi = msub.add_parser(
        "init", help="write seeded random weights of a GAN (real shapes and costs, no background; marked as such)"
    )
    mi.add_argument("model", choices=[n for n in registry.names() if registry.get(n).is_gan], help="the GAN")
    mi.add_argument("-o", "--out", required=True, help="the checkpoint (.pt) to write")
    mi.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    mi.add_argument(
        "--occupancy",
        type=float,
        default=0.01,
        help="share of the pixels hit in a frame, set through the output layer's bias (default 0.01)",
    )
    mi.add_argument("--force", action="store_true", help="replace an existing --out")
    mi.set_defaults(func=cmd_models_init)

    p = sub.add_parser("payload", help="manage payload stores")
    psub = p.add_subparsers(dest="payload_command", required=True)
    pa = psub.add_parser("add", help="register a checkpoint as a model's default payload")
    pa.add_argument("path", help="the checkpoint: a plain state_dict (.pt) of the model")
    pa.add_argument("--model", required=True, choices=registry.names(), help="the model the checkpoint is for")
    pa.add_argument(
        "--force", action="store_true", help="register a checkpoint marked as seeded random weights (pxdbg models init)"
    )
    pa.add_argument("--globaltag", help=f"global tag to register it under (default {payloads.DEFAULT_GLOBALTAG})")
    pa.add_argument("--store", help=f"store directory (default: first of ${payloads.ENV_VAR}, else the user store)")
    pa.set_defaults(func=cmd_payload_add)
    pl = psub.add_parser("list", help="list the payloads of every store searched")
    pl.set_defaults(func=cmd_payload_list)

    p = sub.add_parser("generate", help="generate events in this process into a digits file")
    ProducerSpec.add_arguments(p, compute=False)
    p.add_argument("--seed", help="stream seed (default: random, printed)")
    p.add_argument("--first-frame", type=int, help="index of the first frame (default 0)")
    p.add_argument("--events", type=_positive, required=True, help="events in the output (a resumed one included)")
    p.add_argument(
        "--event",
        type=int,
        help="the first event number N: the backgrounds the basf2 module gives events (EXP, RUN, N), (EXP, RUN, N+1),"
        " ... with this --seed (its default keying='event')",
    )
    p.add_argument("--exp", type=int, help="experiment number of --event (default 0)")
    p.add_argument("--run", type=int, help="run number of --event (default 0)")
    p.add_argument("--out", required=True, help="output digits file: .npz, or .root (needs uproot)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out (same stream)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="cpu", help="torch device of the model: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument(
        "--batch",
        type=_positive,
        default=4,
        help="frames per model call in this process (a producer's counterpart is produce --max-batch; default 4)",
    )
    p.add_argument("--threads", type=_positive, default=max(1, os.cpu_count() or 1), help="torch intra-op threads")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("produce", help="serve frames of one model to consumers")
    ProducerSpec.add_arguments(p)
    p.add_argument("--bind", required=True, action="append", help="endpoint, e.g. tcp://*:5555 (repeatable)")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # local workers: exit with the consumer
    p.add_argument(
        "--max-consumers",
        type=_positive,
        default=256,
        help="most consumers served at once; others get an error saying so (default %(default)s)",
    )
    p.add_argument(
        "--max-pending",
        type=_positive,
        default=4096,
        help="most frames one consumer may ask for and not yet have (default %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds a SIGTERM may take to finish the batches in progress (default %(default)s)",
    )
    p.add_argument(
        "--hello-timeout",
        type=_seconds,
        default=10.0,
        help="seconds a consumer may hold a slot after its hello without asking for frames (default %(default)s)",
    )
    p.add_argument(
        "--max-per-address",
        type=_positive,
        help="most consumers from one network address at once (default: half of --max-consumers)",
    )
    p.add_argument(
        "--register",
        metavar="DIR",
        help="register each tcp endpoint in this rendezvous directory (consumers: --connect dir:DIR)",
    )
    security.add_server_arguments(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics, /healthz and /readyz on this port (needs pxdbg[metrics])",
    )
    p.add_argument(
        "--metrics-host",
        help="address of the metrics port (default: the host of the first tcp --bind, * meaning 0.0.0.0; "
        "127.0.0.1 for a producer bound to ipc only)",
    )
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("run", help="the main job: an event loop pulling one frame per event")
    ProducerSpec.add_arguments(p, farm=True, prefix_help="local producers' ")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workers", type=_positive, help="start this many local producers")
    src.add_argument("--connect", help="comma-separated producer endpoints (a farm)")
    p.add_argument("--events", type=_positive, required=True, help="events in the run (a resumed --out's included)")
    p.add_argument("--seed", help="stream seed (default: random, printed)")
    p.add_argument("--first-frame", type=int, help="index of the first frame (default 0)")
    p.add_argument("--prefetch", type=_positive, default=16, help="frames requested ahead (default %(default)s)")
    p.add_argument("--out", help="write the digits to this file: .npz, or .root (needs uproot)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out (same stream)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--work-ms", type=float, default=0.0, help="CPU milliseconds spent per event, as a simulation")
    p.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=60.0,
        help="seconds without any producer before failing (default %(default)s)",
    )
    p.add_argument(
        "--frame-timeout",
        type=_seconds,
        default=600.0,
        help="seconds to wait for one frame before failing (default %(default)s)",
    )
    p.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=60.0,
        help="seconds a producer may owe frames while delivering none (it answers heartbeats: a hung "
        "model) before it is quarantined and its frames asked elsewhere (default %(default)s)",
    )
    p.add_argument(
        "--hedge-budget",
        type=_fraction,
        help="fraction of frames that may also be asked of a second producer when overdue (default 0.05 for "
        "--connect, 0 for --workers: local workers share this machine's CPUs)",
    )
    p.add_argument(
        "--audit",
        type=_fraction,
        help="fraction of frames also asked of a second producer and compared (default 0.01 for --connect, 0 "
        "for --workers); a producer whose copy differs is quarantined for the run",
    )
    p.add_argument(
        "--max-producers",
        type=_positive,
        default=128,
        help="most producers used at once; the rest of what --connect resolves to is skipped (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    security.add_client_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("keys", help="CURVE key pairs for producers and consumers")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    kn = ksub.add_parser("new", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)")
    kn.add_argument("name", help="a plain file name, e.g. producer or the consumer's user name")
    kn.add_argument("--dir", default=".", help="directory to write the pair to (default: the current one)")
    kn.set_defaults(func=cmd_keys_new)

    p = sub.add_parser(
        "validate",
        help="compare a sample (.npz, .root, basf2 file, model) with the reference (Geant4 simulation) or another",
    )
    p.add_argument("sample", help="a digits file (.npz), a ROOT file (ours or basf2's) or a model name to run")
    p.add_argument(
        "--reference", help="a digits file, ROOT file or model name (default: the shipped reference figures)"
    )
    p.add_argument("--out", default="validation", help="report directory (default %(default)s)")
    p.add_argument("--events", type=_positive, help="events to use (default: all of a file, 1000 of a model)")
    p.add_argument("--checkpoint", help="checkpoint of a SAMPLE model")
    p.add_argument("--reference-checkpoint", help="checkpoint of a REFERENCE model")
    p.add_argument("--seed", help="stream seed of models run on the fly (default 1; the reference uses seed + 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a check fails")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("join", help="join digits files of one stream (consecutive frames) into one file")
    p.add_argument("out", help="the joined .npz")
    p.add_argument("parts", nargs="+", help="the parts (.npz), in any order")
    p.add_argument(
        "--remove-parts",
        action="store_true",
        help="delete each part once its events are in the output's spool (needs far less disk)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_join)

    p = sub.add_parser("calibrate", help="learn a parametric model (payload) from a background sample")
    p.add_argument("sample", help="a background sample: digits file (.npz) or ROOT file (.root) of PXD digits")
    p.add_argument("-o", "--out", required=True, help="the payload (.pt) to write")
    p.add_argument("--events", type=_positive, help="use only the first EVENTS events (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration's own random choices (default 0)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("info", help="what a file of PXD digits holds: .npz, our ROOT layout or a basf2 file")
    p.add_argument("files", nargs="+", help="digits files (.npz) or ROOT files (ours or basf2's)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="the events of one file in another format (npz <-> our root; basf2 -> both)")
    p.add_argument("input", help="a digits file (.npz) or a ROOT file (ours or basf2's)")
    p.add_argument("output", help="the file to write: .npz or .root (our layout; --basf2 for basf2's)")
    p.add_argument("--basf2", action="store_true", help="write the output as a basf2 file (needs PyROOT)")
    p.add_argument("--experiment", type=int, default=0, help="basf2 output: experiment number (default 0)")
    p.add_argument("--run", type=int, default=0, help="basf2 output: run number (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "export", help="generated events as a basf2 background file that BGOverlayInput accepts (needs PyROOT)"
    )
    p.add_argument("--basf2", required=True, metavar="OUT.root", help="the basf2 file to write")
    p.add_argument("--from", dest="source", metavar="FILE", help="export this file's events instead of generating")
    ProducerSpec.add_arguments(p, compute=False)
    p.add_argument("--events", type=_positive, help="events to generate")
    p.add_argument("--seed", help="stream seed (default: random, printed)")
    p.add_argument("--first-frame", type=int, help="index of the first frame (default 0)")
    p.add_argument(
        "--experiment", type=int, default=0, help="experiment of the simulation that overlays it (default 0)"
    )
    p.add_argument("--run", type=int, default=0, help="run number (default 0)")
    p.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--batch", type=_positive, default=4, help="frames per model call")
    p.add_argument("--threads", type=_positive, default=max(1, os.cpu_count() or 1), help="torch intra-op threads")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("farm", help="look at a producer farm")
    fsub = p.add_subparsers(dest="farm_command", required=True)
    fs = fsub.add_parser("status", help="a table of the producers an endpoint string reaches, asked over the protocol")
    fs.add_argument("endpoints", help="tcp://host:port, dir:/rendezvous, dns://name:port, ... (comma-separated)")
    fs.add_argument(
        "--timeout", type=_seconds, default=3.0, help="seconds to wait for the answers (default %(default)s)"
    )
    fs.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between two looks, for frames/s (default %(default)s; 0: average since start)",
    )
    fs.add_argument("--watch", action="store_true", help="look again every --interval seconds until interrupted")
    fs.add_argument("--json", action="store_true", help="one JSON object per look (JSON lines with --watch)")
    security.add_client_arguments(fs)
    fs.set_defaults(func=cmd_farm_status)
    fj = fsub.add_parser(
        "jobs", help="sum the JSON summaries of `pxdbg run --json` jobs (consumer waits, re-issues, hedges)"
    )
    fj.add_argument("dirs", nargs="+", help="directories searched for summaries (e.g. the Slurm recipe's $PXDBG_OUT)")
    fj.add_argument("--pattern", default="*.json", help="file name pattern of the summaries (default %(default)s)")
    fj.add_argument("--prom", metavar="FILE", help="also write the totals in the Prometheus text format to FILE")
    fj.add_argument("--json", action="store_true", help="print the totals as JSON")
    fj.set_defaults(func=cmd_farm_jobs)

    p = sub.add_parser("bench", help="print speed figures (generation, consumer cost, wire size, throughput)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and configurations")
    p.add_argument(
        "--producer",
        action="store_true",
        help="producer speed per model, precision and batch size, with the fidelity cost against fp32",
    )
    p.add_argument("--device", default="cpu", help="device for --producer (cpu or cuda)")
    p.add_argument(
        "--roofline",
        action="store_true",
        help="with --producer (implied): per-layer roofline of each model's default reduced-precision and fp32 "
        "engines, against the matrix-product peak and a memory bandwidth probed in the run (works with --quick)",
    )
    p.add_argument(
        "--files",
        action="store_true",
        help="only the digits-file figures (size, write and read time per event) and a parametric producer's start",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (the tables go to stderr)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False) and not args.verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except PxdbgError as exc:  # a user error: one line; anything else is a bug and keeps its traceback
        print(f"pxdbg {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment said no (disk full, permissions, a busy port): one line, with the path
        if exc.errno is None:
            raise
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"pxdbg {args.command}: {exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pxdbg {args.command}: interrupted", file=sys.stderr)
        return 130
