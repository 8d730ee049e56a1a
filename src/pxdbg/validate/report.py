"""Plots (PNG, matplotlib), a Markdown report that embeds them, and a JSON of every number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, sensor_name
from pxdbg.validate.metrics import (
    CLUSTER_CHARGE_BIN,
    MAX_CLUSTER_SIZE,
    OCC_BINS,
    OCC_MAX,
    Check,
    ReferenceFigures,
    SampleMetrics,
    ks_distance_rows,
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _norm(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def plot_all(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures, out: Path) -> list[tuple[str, str]]:
    """Draw every plot into ``out``; return (title, file name) pairs."""
    plt = _plt()
    figs: list[tuple[str, str]] = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        figs.append((title, name))

    idx = np.arange(N_SENSORS)
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.step(idx, 100 * ref.occupancy_per_sensor(), where="mid", label=ref.name, color="black")
    ax.plot(idx, 100 * sample.occupancy_per_sensor(), "o", ms=4, label=sample.name, color="tab:red")
    ax.set_xticks(idx[::2], [sensor_name(i) for i in idx[::2]], rotation=90, fontsize=7)
    ax.set_ylabel("mean occupancy (%)")
    ax.set_title("Per-sensor mean occupancy")
    ax.legend(fontsize=8)
    save(fig, "occupancy_per_sensor.png", "Per-sensor mean occupancy")

    fig, ax = plt.subplots(figsize=(11, 4))
    ax.step(idx, ref.mean_hit_adc_per_sensor(), where="mid", label=ref.name, color="black")
    ax.plot(idx, sample.mean_hit_adc_per_sensor(), "o", ms=4, label=sample.name, color="tab:red")
    ax.set_xticks(idx[::2], [sensor_name(i) for i in idx[::2]], rotation=90, fontsize=7)
    ax.set_ylabel("mean hit charge (ADC)")
    ax.set_title("Per-sensor mean hit charge (average over images of the image's mean)")
    ax.legend(fontsize=8)
    save(fig, "mean_hit_adc_per_sensor.png", "Per-sensor mean hit charge")

    # where the sample stands among the published GANs (layer figures from the same reference file)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [ref.name.split(" (")[0], sample.name]
    occ = [[ref.layer_occupancy(la) for la in (1, 2)], [sample.layer_occupancy(la) for la in (1, 2)]]
    adc = [[ref.layer_mean_hit_adc(la) for la in (1, 2)], [sample.layer_mean_hit_adc(la) for la in (1, 2)]]
    if isinstance(ref, ReferenceFigures):
        for gan, figures in ref.generated_for_comparison().items():
            names.append(gan)
            occ.append([figures["occupancy_layer_mean"][str(la)] for la in (1, 2)])
            adc.append([figures["mean_hit_adc_per_sensor_avg_layer"][str(la)] for la in (1, 2)])
    x = np.arange(2)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        axes[0].bar(x + i * width, 100 * np.asarray(occ[i]), width, label=name)
        axes[1].bar(x + i * width, adc[i], width, label=name)
    for ax, label in zip(axes, ("mean occupancy (%)", "mean hit charge (ADC)")):
        ax.set_xticks(x + 0.4 - width / 2, ["layer 1", "layer 2"])
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("Layer figures: reference, this sample, and published GANs")
    save(fig, "layers.png", "Layer figures among the published GANs")

    fig, ax = plt.subplots(figsize=(8, 4))
    adc_x = np.arange(256)
    ax.step(adc_x[1:], _norm(ref.adc_counts)[1:], where="mid", color="black", label=ref.name)
    ax.step(adc_x[1:], _norm(sample.adc_counts)[1:], where="mid", color="tab:red", label=sample.name)
    ax.set_yscale("log")
    ax.set_xlabel("hit charge (ADC)")
    ax.set_ylabel("fraction of hits")
    ax.set_title("Hit-charge spectrum")
    ax.legend(fontsize=8)
    save(fig, "hit_charge.png", "Hit-charge spectrum")

    fig, ax = plt.subplots(figsize=(8, 4))
    edges = np.linspace(0, OCC_MAX, OCC_BINS + 1)
    centres = 100 * (edges[:-1] + edges[1:]) / 2
    ax.step(centres, _norm(ref.image_occupancy_hist())[:-1], where="mid", color="black", label=ref.name)
    ax.step(centres, _norm(sample.image_occupancy_hist())[:-1], where="mid", color="tab:red", label=sample.name)
    ax.set_xlabel("per-image occupancy (%)")
    ax.set_ylabel("fraction of images")
    ax.set_title("Per-image occupancy (one image = one sensor in one event)")
    ax.legend(fontsize=8)
    save(fig, "image_occupancy.png", "Per-image occupancy distribution")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sizes = np.arange(MAX_CLUSTER_SIZE + 1)
    charges = (np.arange(sample.cluster_charge_counts.size) + 0.5) * CLUSTER_CHARGE_BIN
    for s, color in ((sample, "tab:red"), (ref if isinstance(ref, SampleMetrics) else None, "black")):
        if s is None:
            continue
        axes[0].step(sizes[1:], _norm(s.cluster_size_counts)[1:], where="mid", color=color, label=s.name)
        axes[1].step(charges, _norm(s.cluster_charge_counts), where="mid", color=color, label=s.name)
    axes[0].set_xlabel("cluster size (pixels; last bin: larger)")
    axes[1].set_xlabel("cluster charge (ADC)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("fraction of clusters")
        ax.legend(fontsize=8)
    fig.suptitle("8-neighbour clusters")
    save(fig, "clusters.png", "Cluster size and cluster charge")

    samples = [sample] + ([ref] if isinstance(ref, SampleMetrics) else [])
    fig, axes = plt.subplots(len(samples), 2, figsize=(12, 3.2 * len(samples)), squeeze=False)
    for row, s in enumerate(samples):
        for la in (1, 2):
            ax = axes[row][la - 1]
            n_images = max(s.n_events * int((LAYER_OF_INDEX == la).sum()), 1)
            im = ax.imshow(s.hitmap[la - 1] / n_images, aspect="auto", origin="lower", cmap="viridis")
            ax.set_title(f"{s.name}: layer {la} hit map", fontsize=9)
            ax.set_xlabel("v")
            ax.set_ylabel("u")
            fig.colorbar(im, ax=ax, label="hits per image")
    save(fig, "hitmaps.png", "Hit maps per layer")

    if isinstance(ref, SampleMetrics):
        # each axis: the sensor whose profile differs most from the reference's
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
        for ax, axis, n in ((axes[0], "u", N_U), (axes[1], "v", N_V)):
            s_prof, r_prof = getattr(sample, f"profile_{axis}").sum(axis=0), getattr(ref, f"profile_{axis}").sum(axis=0)
            worst = int(np.argmax(ks_distance_rows(s_prof, r_prof)))
            x = np.arange(n)
            ax.step(x, n * _norm(r_prof[worst]), where="mid", color="black", label=ref.name)
            ax.step(x, n * _norm(s_prof[worst]), where="mid", color="tab:red", label=sample.name)
            ax.set_xlabel(axis)
            ax.set_ylabel("hit density (1 = uniform)")
            ax.set_title(f"sensor {sensor_name(worst)} (index {worst}): profile along {axis}", fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle("Per-sensor hit-density profiles: the sensor farthest from the reference along each axis")
        save(fig, "profiles.png", "Per-sensor hit-density profiles")

    fig, axes = plt.subplots(1, len(samples), figsize=(6 * len(samples), 5), squeeze=False)
    for ax, s in zip(axes[0], samples):
        im = ax.imshow(s.correlation(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{s.name}: correlation of sensor occupancies", fontsize=9)
        ax.set_xlabel("sensor index")
        ax.set_ylabel("sensor index")
        fig.colorbar(im, ax=ax)
    save(fig, "correlation.png", "Correlation matrix of per-event sensor occupancies")
    return figs


def write_report(
    sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures, checks: list[Check], out: Path, sources: dict
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figs = plot_all(sample, ref, out)
    numbers = {
        "sources": sources,
        "sample": sample.summary(),
        "reference": ref.summary() if isinstance(ref, SampleMetrics) else {"name": ref.name},
        "checks": [c.as_dict() for c in checks],
    }
    (out / "metrics.json").write_text(json.dumps(numbers, indent=1, default=float) + "\n")
    failed = [c for c in checks if c.verdict == "FAIL"]
    lines = [
        f"# Validation: {sample.name}",
        "",
        f"- sample: {sources.get('sample')} ({sample.n_events} events)",
        f"- compared with: {sources.get('reference')}",
        f"- verdict: **{'FAIL' if failed else 'PASS'}** "
        f"({sum(c.verdict == 'PASS' for c in checks)} passed, {len(failed)} failed, "
        f"{sum(c.verdict == 'n/a' for c in checks)} without a verdict)",
        "",
        *(
            [
                "- checks marked *by chance* are held to what chance allows at these sample sizes: each sample's "
                "even and odd events are two independent samples of it, and their distances give the distance "
                "expected between sample and reference; the threshold is a multiple of it, with a floor",
                "",
            ]
            if any(c.chance is not None for c in checks)
            else []
        ),
        "| metric | sample | reference | distance | threshold | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:

        def fmt(x):
            return "" if x is None else f"{x:.5g}"

        dist = "" if c.distance is None else f"{c.distance_name} {c.distance:+.4g}"
        thr = "" if c.threshold is None else f"<= {c.threshold:.4g}"
        if c.chance is not None:
            thr += f" (by chance {c.chance:.3g})"
        verdict = c.verdict if c.verdict != "n/a" or not c.note else f"n/a: {c.note}"
        cells = (c.metric, fmt(c.value), fmt(c.reference), dist, thr, verdict)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    for title, name in figs:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
