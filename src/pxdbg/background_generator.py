"""The basf2 module: PXD background generated on the fly, as a drop-in for ``pxd.background_generator``.

Steering files change only their import line::

    from pxdbg.background_generator import PXDBackgroundGenerator, inject_simulation

    module = PXDBackgroundGenerator(model="resnet")                # in-process, as the seed module
    module = PXDBackgroundGenerator(model="resnet", workers=2)     # local producer processes
    module = PXDBackgroundGenerator(model="resnet", endpoints=["tcp://gpu01:5555"])   # a producer farm
    add_simulation = inject_simulation(module)

This file imports without basf2 and ROOT: both are imported when the module class is first used. Nothing
else in pxdbg needs basf2.

By default an event's background is keyed by its EventMetaData (experiment, run, event), not by its position
in the job. Local workers and farms are reached through a prefetch process per job
(:mod:`pxdbg.consumer.prefetch`), so frames keep arriving while basf2's C++ modules hold the GIL, and nothing
in ``initialize()`` has to survive basf2's fork (``-p N``): the process that handles the events connects to it
on its first event.

Digits are written into the overlay collection ``PXDDigits<extension>`` in one call of a small C++
function declared once through ROOT's interpreter, which constructs the ``Belle2::PXDDigit`` objects in
place from the frame's numpy buffers. Where that function cannot be declared, a Python loop fills the array
instead (tens of microseconds per digit), and the log says so.

The overlay collection is the *event-durability* array that BGOverlayInput registered and BGOverlayExecutor
merges into ``PXDDigits``; the module re-registers it with ``c_DontWriteOut``, as BGOverlayInput does, so it is
never written out. (``PyStoreArray``'s second argument is a durability: passing a store flag there would make
the module write into a separate, persistent array the executor never reads.)

Python 3.8 compatible (the basf2 externals of older releases ship 3.8): nothing here needs a newer Python.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import time

from pxdbg.basf2bridge import EVENT_DEBUG_LEVEL, Basf2LogHandler, DigitFiller
from pxdbg.shared import registry
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.seeding import check_seed, event_index, event_key, event_stream_seed, seed_from_framework_seed
from pxdbg.shared.validators import positive_seconds

DEFAULT_GLOBALTAG = "PXDBackgroundGenerator"
#: How frames are chosen: by the event's numbers (EventMetaData), or by its position in this job
KEYINGS = ("event", "position")


def _check_args(model, checkpoint, seed, nintra, ninter, globaltag):
    if not isinstance(model, str):
        raise TypeError("expecting type str `model`")
    if model not in registry.names():
        raise ConfigError(f"invalid `model`: {model!r} (options: {', '.join(map(repr, registry.names()))})")
    if not isinstance(checkpoint, (type(None), str, pathlib.Path)):
        raise TypeError("expecting None or type str `checkpoint`")
    if checkpoint is not None:
        checkpoint = os.path.expandvars(str(checkpoint))
        if not os.path.isfile(checkpoint):
            raise ValueError(f"invalid `checkpoint`: {checkpoint!r} is not a file")
    if seed is not None:
        seed = check_seed(seed)
    for name, value in (("nintra", nintra), ("ninter", ninter)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expecting type int `{name}`")
        if value < 1:
            raise ValueError(f"expecting `{name}` > 0 (got: {value})")
    if not isinstance(globaltag, str):
        raise TypeError("expecting type str `globaltag`")
    return checkpoint, seed


@functools.lru_cache(maxsize=None)  # noqa: UP033 - functools.cache needs Python 3.9; basf2 externals had 3.8
def _module_class():
    try:
        import basf2
    except ImportError as exc:
        raise ImportError(
            "PXDBackgroundGenerator is a basf2 module: set up a basf2 release (b2setup) first; "
            "outside basf2 use pxdbg.consumer.BackgroundClient in your event loop"
        ) from exc

    class PXDBackgroundGenerator(basf2.Module):
        """Generates PXD background for background overlay on the fly.

        The seed module's parameters (``model``, ``checkpoint``, ``seed``, ``nintra``, ``ninter``,
        ``globaltag``) keep their meaning; ``model`` is any name of the model registry. With neither ``workers``
        nor ``endpoints`` frames are generated in this process with ``nintra``/``ninter`` torch threads;
        ``workers=K`` starts K local producer processes, ``endpoints=[...]`` connects to a producer farm (give
        ``checkpoint_sha256`` if the checkpoint is not in this job's conditions; in-process, a given
        ``checkpoint_sha256`` must match the loaded checkpoint); both run behind one prefetch process per job,
        which keeps frames arriving while basf2's C++ modules hold the GIL. ``prefetch`` frames are requested
        ahead. ``precision`` (fp32, bf16, fp16, tf32) is part of the model identity.

        ``keying="event"`` (the default): the background of an event depends only on (seed, experiment, run,
        event number, model identity), taken from the event's EventMetaData, as basf2's own event-dependent
        random numbers: the same in one job, in a job that skips to it, with ``-p N``, or regenerated alone
        (``pxdbg generate --seed S --exp E --run R --event N``). ``keying="position"``: event i of this module
        gets frame ``first_frame + i`` of the stream.

        ``frame_timeout``, ``connect_timeout`` and ``heartbeat_timeout`` (seconds) are the client's: the next frame
        does not come, no producer answers, a producer is silent. ``curve_client_secret`` and
        ``curve_server_public`` (key file paths, see ``pxdbg keys new``) authenticate this job to a farm that admits
        only allow-listed consumers; the ``PXDBG_CURVE_*`` variables work as well.

        ``compat_rng=True`` (in-process, fp32) replaces the per-frame streams by the upstream module's sequence:
        ``torch.manual_seed(seed)`` once, then each event draws from torch's global random state, so that with
        the same weights and seed the events equal the upstream module's.

        basf2 parallel processing (``-p N``): the module is not flagged ``c_ParallelProcessingCertified``; it runs
        in the input process right after BGOverlayInput (which is not certified either), once per event, and the
        digits travel with the event to the workers. Nothing that cannot cross a fork is created in
        ``initialize()``: the prefetch process is a subprocess reached over ipc, connected to by the process
        that handles events; an in-process model computes with one torch thread until that process sets
        ``nintra``.
        """

        def __init__(
            self,
            model: str = "convnet",
            checkpoint=None,
            seed: int | None = None,
            nintra: int = 1,
            ninter: int = 1,
            globaltag: str = DEFAULT_GLOBALTAG,
            *,
            workers: int | None = None,
            endpoints=None,
            prefetch: int = 16,
            device: str = "cpu",
            checkpoint_sha256: str | None = None,
            keying: str = "event",
            first_frame: int = 0,
            max_batch: int | None = None,
            precision: str = "fp32",
            compat_rng: bool = False,
            curve_client_secret: str | None = None,
            curve_server_public: str | None = None,
            frame_timeout: float = 600.0,
            connect_timeout: float = 60.0,
            heartbeat_timeout: float = 5.0,
        ) -> None:
            super().__init__()
            self.checkpoint, self.seed = _check_args(model, checkpoint, seed, nintra, ninter, globaltag)
            if workers is not None and endpoints is not None:
                raise ConfigError("give `workers` (local producers) or `endpoints` (a farm), not both")
            if isinstance(endpoints, str):
                endpoints = [e for e in endpoints.split(",") if e]
            if keying not in KEYINGS:
                raise ConfigError(f"invalid `keying`: {keying!r} (options: {', '.join(map(repr, KEYINGS))})")
            if first_frame and keying != "position":
                raise ConfigError(
                    "`first_frame` numbers frames by position in this job; with keying='event' (the default) "
                    "the event numbers choose the frames: give keying='position' as well"
                )
            if compat_rng:
                if workers is not None or endpoints is not None:
                    raise ConfigError(
                        "compat_rng=True follows torch's global random state in this process: it "
                        "runs in-process only; leave out `workers` and `endpoints`"
                    )
                if device != "cpu":
                    raise ConfigError(
                        "compat_rng=True reproduces the upstream module, which generates on the CPU; leave `device` "
                        "at 'cpu'"
                    )
                if precision != "fp32":
                    raise ConfigError(
                        "compat_rng=True reproduces the upstream module, which computes in fp32; "
                        "leave `precision` at 'fp32'"
                    )
                if first_frame:
                    raise ConfigError(
                        "compat_rng=True draws events in sequence from one torch seed, so it starts "
                        "at the first event; `first_frame` needs the per-frame streams"
                    )
            self.model, self.nintra, self.ninter, self.globaltag = model, nintra, ninter, globaltag
            self.workers, self.endpoints, self.prefetch, self.device = workers, endpoints, prefetch, device
            self.checkpoint_sha256, self.first_frame, self.max_batch = checkpoint_sha256, first_frame, max_batch
            self.precision, self.compat_rng = precision, bool(compat_rng)
            self.keying = "sequence" if self.compat_rng else keying
            self.timeouts = {
                name: positive_seconds(f"`{name}`", value)  # named as the seed module names parameters
                for name, value in (
                    ("frame_timeout", frame_timeout),
                    ("connect_timeout", connect_timeout),
                    ("heartbeat_timeout", heartbeat_timeout),
                )
            }
            if self.timeouts["heartbeat_timeout"] <= 1.0:  # the client pings every 0.5 s
                raise ValueError(f"expecting `heartbeat_timeout` above 1 s (got: {heartbeat_timeout!r})")
            self.curve = dict(curve_client_secret=curve_client_secret, curve_server_public=curve_server_public)
            if any(self.curve.values()) and endpoints is None:
                raise ConfigError(
                    "CURVE keys are for a producer farm (`endpoints`); local workers talk over a private ipc directory"
                )
            basf2.conditions.append_globaltag(globaltag)
            self._prefetch = None  # the job's prefetch process (a handle in the process that started it)
            self._connection = None  # this process's connection to it
            self._model = None
            self._uses_torch = False
            self._pid = None  # the process that set up event handling (after basf2's fork, a child)
            self._log_handler = None

        # -- basf2 interface ----------------------------------------------------------------------------------
        def initialize(self):
            from ROOT import Belle2

            from pxdbg.shared.spec import ProducerSpec

            self._install_log_bridge()
            in_process = self.workers is None and self.endpoints is None
            mode = (
                "in-process" + (", upstream-compatible torch random sequence" if self.compat_rng else "")
                if in_process
                else f"{self.workers} local producer(s)"
                if self.workers
                else f"farm {self.endpoints}"
            )
            if self.seed is None:
                framework_seed = basf2.get_random_seed()
                self.seed = seed_from_framework_seed(framework_seed)
                basf2.B2INFO(
                    f"PXD background generator seed initialized to {self.seed} "
                    f"(from the basf2 random seed {framework_seed!r})"
                )
            else:
                basf2.B2INFO(f"PXD background generator seed initialized to {self.seed}")
            # the seed of the frames on the wire: event keys live in a stream of their own
            self._stream_seed = event_stream_seed(self.seed) if self.keying == "event" else self.seed

            bkginfo = Belle2.PyStoreObj("BackgroundInfo", Belle2.DataStore.c_Persistent)
            if not bkginfo.isValid():
                basf2.B2ERROR(
                    "PXDBackgroundGenerator: no BackgroundInfo in the data store; the path must contain "
                    "BGOverlayInput before this module (use inject_simulation, or add_simulation with "
                    "bkgfiles)"
                )
                raise RuntimeError("PXDBackgroundGenerator needs BGOverlayInput earlier in the path")
            self.extension = str(bkginfo.obj().getExtensionName())
            # The event-durability array BGOverlayInput fills and BGOverlayExecutor reads; registered again with
            # the flags BGOverlayInput gave it (not written out).
            self._digits = Belle2.PyStoreArray("PXDDigits", Belle2.DataStore.c_Event)
            if not self._digits.registerInDataStore(f"PXDDigits{self.extension}", Belle2.DataStore.c_DontWriteOut):
                raise RuntimeError(f"PXDBackgroundGenerator could not register PXDDigits{self.extension}")
            self._evtmeta = Belle2.PyStoreObj("EventMetaData")
            if self.keying == "event" and not self._evtmeta.isRequired():  # an ERROR: no event is processed
                basf2.B2ERROR(
                    "PXDBackgroundGenerator: keying='event' takes each event's numbers from EventMetaData, which "
                    "no module provides; add EventInfoSetter (or an input module) before it"
                )

            checkpoint = self.checkpoint
            if checkpoint is None and (in_process or self.checkpoint_sha256 is None):
                payload = registry.get(self.model).payload
                checkpoint = str(Belle2.DBAccessorBase(Belle2.DBStoreEntry.c_RawFile, payload, True).getFilename())
                if not checkpoint or not os.path.isfile(checkpoint):
                    raise RuntimeError(
                        f"payload {payload} not found in the conditions database (global tag "
                        f"{self.globaltag!r}); give checkpoint=PATH"
                    )
            spec = ProducerSpec(
                model=self.model,
                checkpoint=checkpoint,
                checkpoint_sha256=self.checkpoint_sha256,
                precision=self.precision,
                device=self.device,
                max_batch=self.max_batch,
                threads=self.nintra,
            )
            if in_process:
                from pxdbg import models

                self._uses_torch = spec.info.is_gan or self.device != "cpu"  # the parametric model is numpy
                if self._uses_torch:
                    import torch

                    # One torch thread until the process that handles events sets nintra (_setup_process): a
                    # thread pool started here does not survive basf2's fork (-p N); its first parallel call hangs.
                    torch.set_num_threads(1)
                    if torch.get_num_interop_threads() != self.ninter:
                        try:
                            torch.set_num_interop_threads(self.ninter)
                        except RuntimeError:  # torch allows it once, before any parallel work
                            basf2.B2WARNING(
                                f"could not set {self.ninter} inter-op threads: torch already runs "
                                f"{torch.get_num_interop_threads()}"
                            )
                self._model = models.load_spec(spec)  # refuses a checkpoint whose sha256 is not the one asked for
                identity = self._model.identity
                if self.compat_rng:
                    import torch

                    if self._model.is_gan:  # the upstream model runs in torch's default memory layout
                        self._model.net.to(memory_format=torch.contiguous_format)
                    torch.manual_seed(self.seed)
            else:
                from pxdbg.consumer.prefetch import PrefetchConfig, PrefetchProcess
                from pxdbg.shared.spec import TransportOptions

                transport = TransportOptions(**{k: v for k, v in self.curve.items() if v is not None})
                config = PrefetchConfig(
                    spec=spec,
                    seed=self._stream_seed,
                    workers=self.workers,
                    endpoints=None if self.workers else list(self.endpoints),
                    transport=transport,
                    prefetch=self.prefetch,
                    **self.timeouts,
                )
                identity = spec.identity()  # torch-free; refuses an unknown payload before anything starts
                # A subprocess, not a thread or a socket of this process: basf2 may fork after initialize()
                self._prefetch = PrefetchProcess(config)
            self._filler = DigitFiller()
            if not self._filler.fast:
                basf2.B2WARNING(
                    f"PXDBackgroundGenerator: filling digits with a Python loop "
                    f"({self._filler.why_slow}); expect tens of microseconds per digit"
                )
            self._next = self.first_frame
            self._fill_s = 0.0
            from pxdbg.consumer.stats import WaitHistogram

            # fixed-bucket histograms: memory stays flat however long the job (percentiles within ~12 %)
            self._wait_hist, self._event_hist = WaitHistogram(), WaitHistogram()
            self._first = (0.0, 0.0)
            self._events = 0
            if self.compat_rng:
                first = "events follow torch.manual_seed of the seed, as the upstream module"
            elif self.keying == "event":
                first = (
                    f"the background of event (exp, run, evt) depends only on seed {self.seed} and those numbers "
                    f"(pxdbg generate --seed {self.seed} --exp E --run R --event N regenerates it)"
                )
            else:
                first = f"event i uses frame {self.first_frame} + i of stream {self.seed}"
            basf2.B2INFO(
                f"PXDBackgroundGenerator: model {identity}, {mode}, writing PXDDigits{self.extension}; {first}"
            )

        def _install_log_bridge(self) -> None:
            logger = logging.getLogger("pxdbg")
            if self._log_handler is None:
                self._log_handler = Basf2LogHandler(basf2)
                logger.addHandler(self._log_handler)
                self._propagate, logger.propagate = logger.propagate, False
                if logger.level == logging.NOTSET or logger.level > logging.INFO:
                    logger.setLevel(logging.INFO)

        def _setup_process(self) -> None:
            """What the process that handles events needs, made there (after basf2's fork, in the child)."""
            self._pid = os.getpid()
            if self._prefetch is not None:
                self._connection = self._prefetch.connect()
            elif self._model is not None and self._uses_torch:
                import torch

                torch.set_num_threads(self.nintra)

        def _index(self) -> int:
            if self.keying != "event":
                return self._next
            meta = self._evtmeta.obj()
            exp, run, evt = int(meta.getExperiment()), int(meta.getRun()), int(meta.getEvent())
            try:
                return event_index(exp, run, evt)
            except ValueError as exc:
                basf2.B2FATAL(
                    f"PXDBackgroundGenerator: event (exp {exp}, run {run}, event {evt}) has no event key ({exc}); "
                    "use keying='position' for such numbers"
                )
                raise

        def event(self):
            if self._pid != os.getpid():
                self._setup_process()
            index = self._index()
            t0 = time.perf_counter()
            if self._connection is not None:
                from pxdbg.consumer.errors import PipelineError

                try:
                    frame = self._connection.get(index)
                except PipelineError as exc:
                    basf2.B2FATAL(f"PXDBackgroundGenerator: {exc}")
                    raise
            elif self.compat_rng:
                from pxdbg.shared.frame import SparseFrame

                frame = SparseFrame.from_dense(self._model.generate().numpy())
            else:
                frame = self._model.frames(self._stream_seed, [index])[0]
            t1 = time.perf_counter()
            self._filler.fill(self._digits.getPtr(), frame)
            t2 = time.perf_counter()
            self._fill_s += t2 - t1
            if self._events:  # the first waits for the producers' start and a full window: kept apart
                self._wait_hist.record(t1 - t0)
                self._event_hist.record(t2 - t0)
            else:
                self._first = (t1 - t0, t2 - t0)
            self._events += 1
            self._next += 1
            if self.keying == "event":
                exp, run, evt = event_key(index)
                what = f"event (exp {exp}, run {run}, event {evt}): frame {index} of event-keyed stream {self.seed}"
            elif self.compat_rng:
                what = f"stream seed {self.seed}, event {index}"
            else:
                what = f"stream seed {self.seed}, frame {index}"
            basf2.B2DEBUG(EVENT_DEBUG_LEVEL, f"PXD background: {what}, {frame.n_digits} digits")

        def _timing_summary(self, mispredicted) -> str:
            """Percentiles of the wait for the frame (or its generation) and of event() as a whole, over the
            events after the first (the first waits for producers to start and the window to fill)."""
            what = "generation" if self._model is not None else "wait for the frame"
            if self._wait_hist.count:
                w50, w99 = self._wait_hist.percentile(50), self._wait_hist.percentile(99)
                e50, e99 = self._event_hist.percentile(50), self._event_hist.percentile(99)
                after = "after the first event"
            else:
                (w50, e50), (w99, e99), after = self._first, self._first, "one event"
            guesses = "" if mispredicted is None else f", {mispredicted} mispredicted event(s)"
            return (
                f"{what} p50 {1e3 * w50:.2f} ms, p99 {1e3 * w99:.2f} ms, event() p50 {1e3 * e50:.2f} ms, "
                f"p99 {1e3 * e99:.2f} ms ({after}){guesses}"
            )

        def terminate(self):
            mispredicted = None
            if self._connection is not None and self._connection.pid == os.getpid():
                mispredicted = self._connection.mispredicted
                self._connection.close()  # says bye: the prefetch process stops once every user is done
                self._connection = None
            if self._prefetch is not None:
                self._prefetch.close()  # only in the process that started it (the others' copy does nothing)
            if self._events:
                basf2.B2INFO(
                    f"PXDBackgroundGenerator: {self._events} events in process {os.getpid()}; "
                    f"{self._timing_summary(mispredicted)}; digit fill {1e3 * self._fill_s / self._events:.2f} ms "
                    f"per event ({'C++' if self._filler.fast else 'Python loop'})"
                )
            if self._log_handler is not None:
                logger = logging.getLogger("pxdbg")
                logger.removeHandler(self._log_handler)
                logger.propagate = self._propagate
                self._log_handler = None

    return PXDBackgroundGenerator


def __getattr__(name: str):
    if name == "PXDBackgroundGenerator":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def inject_simulation(module=None):
    """A drop-in replacement of ``simulation.add_simulation`` that adds ``module`` right after BGOverlayInput."""
    import basf2
    from simulation import add_simulation

    if module is None:
        return add_simulation
    if not isinstance(module, basf2.Module):
        raise TypeError("expecting None or type basf2.Module `module`")

    @functools.wraps(add_simulation)
    def injected_simulation(path, *args, **kwargs):
        simulation_path = basf2.Path()
        add_simulation(simulation_path, *args, **kwargs)
        for simulation_module in simulation_path.modules():
            path.add_module(simulation_module)
            if simulation_module.name() == "BGOverlayInput":
                path.add_module(module)

    return injected_simulation
