"""Validation: does generated background look like the reference (Geant4 simulation)? (``pxdbg validate``)

:mod:`pxdbg.validate.sample_metrics` accumulates per-sample metrics over events (numpy and scipy, no torch),
:mod:`pxdbg.validate.distances` measures how far two histograms are apart and :mod:`pxdbg.validate.checks`
turns that into verdicts against another sample or the shipped reference figures (:mod:`pxdbg.validate.metrics`
re-exports all three); :mod:`pxdbg.validate.report` draws the plots and writes the report;
:mod:`pxdbg.validate.samples` reads background samples (digits or ROOT files).
"""

from __future__ import annotations

import os
from pathlib import Path


def _source_frames(spec: str, *, events: int | None, checkpoint: str | None, seed: int, device: str):
    """(description, number of events, frame iterator) of a sample file or a model run on the fly."""
    from pxdbg.validate.samples import is_sample_path, open_sample

    if is_sample_path(spec):
        sample = open_sample(spec)
        n = sample.n_events if events is None else min(events, sample.n_events)
        return sample.description, n, sample.frames(n)
    from pxdbg import models
    from pxdbg.shared.errors import ConfigError

    if spec not in models.MODELS:
        raise ConfigError(
            f"{spec!r} is neither a digits file (.npz), a ROOT file (.root) nor a model "
            f"({', '.join(models.MODELS)}); give a file that exists or a model name"
        )
    m = models.load(spec, checkpoint, device=device)
    n = events or 1000

    def frames():
        for start in range(0, n, 8):
            yield from m.frames(seed, range(start, min(start + 8, n)))

    return f"model {m.identity} run on the fly, stream seed {seed}", n, frames()


def _label(spec: str, checkpoint: str | None) -> str:
    """A short name for plots: a file's stem, or the model with its checkpoint file."""
    if spec.endswith((".npz", ".root")):
        return Path(spec).stem
    return f"{spec} ({Path(checkpoint).name})" if checkpoint else spec


def validate(
    sample: str,
    reference: str | None = None,
    out: str | os.PathLike = "validation",
    *,
    events: int | None = None,
    checkpoint: str | None = None,
    reference_checkpoint: str | None = None,
    seed: int = 1,
    device: str = "cpu",
    progress=None,
):
    """Compute the metrics of ``sample`` (and ``reference``), compare, write the report; return the checks."""
    from pxdbg.shared.errors import require

    require("scipy", "validate", "pxdbg validate (clustering)")
    require("matplotlib", "validate", "pxdbg validate (plots)")
    from pxdbg.validate.metrics import ReferenceFigures, SampleMetrics, compare, reference_figures
    from pxdbg.validate.report import write_report

    def measure(spec, ckpt, label, seed_):
        desc, n, frames = _source_frames(spec, events=events, checkpoint=ckpt, seed=seed_, device=device)
        metrics = SampleMetrics(name=label)
        for i, frame in enumerate(frames):
            metrics.add(frame)
            if progress is not None:
                progress(label, i + 1, n)
        return desc, metrics

    label = _label(sample, checkpoint)
    s_desc, s_metrics = measure(sample, checkpoint, label, seed)
    if reference is None:
        ref, r_desc = (
            ReferenceFigures(reference_figures()),
            "reference (Geant4 simulation): the shipped figures of 10,000 events",
        )
    else:
        r_label = _label(reference, reference_checkpoint)
        if r_label == label:
            r_label += " (reference)"
        r_desc, ref = measure(reference, reference_checkpoint, r_label, seed + 1)
    checks = compare(s_metrics, ref)
    report = write_report(s_metrics, ref, checks, Path(out), {"sample": s_desc, "reference": r_desc})
    return checks, report
