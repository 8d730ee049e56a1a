"""Plots (PNG, matplotlib), a Markdown report that embeds them, and a JSON of every number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR, sensor_name
from pxdbg.validate.metrics import (
    CLUSTER_CHARGE_BIN,
    MAX_CLUSTER_SIZE,
    OCC_BINS,
    OCC_MAX,
    TAIL_CUTS,
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


RATIO_RANGE = (0.0, 2.0)  # the ratio panels' y range; points beyond it sit at its edge


def _ratio_figure(plt, width: float = 9.0, columns: int = 1):
    """A figure with a main panel over a ratio panel in each column: (fig, main axes, ratio axes)."""
    fig, axes = plt.subplots(
        2, columns, figsize=(width, 5.2), sharex="col", squeeze=False, gridspec_kw={"height_ratios": [3, 1]}
    )
    return fig, list(axes[0]), list(axes[1])


def _ratio_panel(rax, x, value, value_sd, ref, ref_sd, *, where: str | None = "mid") -> None:
    """sample / reference with its 1-sigma band from both statistical uncertainties, and the reference's own
    relative band around 1."""
    value, value_sd, ref, ref_sd = (np.asarray(a, dtype=np.float64) for a in (value, value_sd, ref, ref_sd))
    ok = ref > 0
    ratio = np.full(value.shape, np.nan)
    sd = np.full(value.shape, np.nan)
    ratio[ok] = value[ok] / ref[ok]
    sd[ok] = np.sqrt((value_sd[ok] / ref[ok]) ** 2 + (ratio[ok] * ref_sd[ok] / ref[ok]) ** 2)
    ref_rel = np.where(ok, ref_sd / np.where(ok, ref, 1.0), np.nan)
    lo, hi = RATIO_RANGE
    shown = np.clip(ratio, lo, hi)
    if where is None:  # points (per-sensor figures)
        rax.fill_between(x, 1 - ref_rel, 1 + ref_rel, color="0.8", step="mid", label="reference 1 sd")
        rax.errorbar(x, shown, yerr=sd, fmt="o", ms=3, color="tab:red")
    else:
        rax.fill_between(x, 1 - ref_rel, 1 + ref_rel, color="0.8", step=where, label="reference 1 sd")
        rax.fill_between(x, shown - sd, shown + sd, color="tab:red", alpha=0.3, step=where, label="sample 1 sd")
        rax.step(x, shown, where=where, color="tab:red", lw=0.8)
    rax.axhline(1.0, color="black", lw=0.8)
    rax.set_ylim(lo, hi)
    rax.set_ylabel("sample / reference", fontsize=8)


def _spectrum(ax, rax, x, ref_counts, sample_counts, ref_name: str, sample_name: str) -> None:
    """Two histograms normalised to unit sum, each with its Poisson 1-sigma band, and their ratio."""
    values = []
    for counts, color, name in ((ref_counts, "black", ref_name), (sample_counts, "tab:red", sample_name)):
        counts = np.asarray(counts, dtype=np.float64)
        total = counts.sum()
        frac = counts / total if total else counts
        sd = np.sqrt(counts) / total if total else counts
        ax.step(x, frac, where="mid", color=color, label=name, lw=0.9)
        ax.fill_between(x, frac - sd, frac + sd, step="mid", color=color, alpha=0.25)
        values.append((frac, sd))
    (r, r_sd), (v, v_sd) = values
    if ref_counts is sample_counts:  # no reference figure: nothing to divide by
        rax.text(0.5, 0.5, "no reference figure", ha="center", va="center", transform=rax.transAxes)
        rax.set_yticks([])
        return
    _ratio_panel(rax, x, v, v_sd, r, r_sd)


def _per_sensor_sd(metrics: SampleMetrics | ReferenceFigures, what: str) -> np.ndarray:
    """Statistical 1-sigma of each sensor's mean occupancy or mean hit charge."""
    if isinstance(metrics, SampleMetrics):
        n = max(metrics.n_events, 1)
        if what == "occupancy":
            occ = np.asarray(metrics.event_occupancy) if metrics.event_occupancy else np.zeros((1, N_SENSORS))
            return occ.std(axis=0) / np.sqrt(n)
        # the image means spread like the spectrum's width over the square root of an image's hits
        hits = np.maximum(metrics.hits_per_sensor, 1)
        return _spectrum_std(metrics.adc_counts) / np.sqrt(hits)
    n = ReferenceFigures.EVENTS
    raw = metrics.raw["real"]
    within = np.array(
        [
            np.sqrt(
                max(
                    raw["per_image_occupancy_std_layer"][str(la)] ** 2
                    - raw["between_sensor_std_of_mean_occupancy_layer"][str(la)] ** 2,
                    0.0,
                )
            )
            for la in LAYER_OF_INDEX
        ]
    )
    if what == "occupancy":
        return within / np.sqrt(n)
    hits = metrics.occupancy_per_sensor() * PIXELS_PER_SENSOR * n
    return _spectrum_std(metrics.adc_counts) / np.sqrt(np.maximum(hits, 1))


def _spectrum_std(counts: np.ndarray) -> float:
    total = counts.sum()
    if not total:
        return 0.0
    a = np.arange(counts.size)
    mean = (counts * a).sum() / total
    return float(np.sqrt((counts * (a - mean) ** 2).sum() / total))


def plot_all(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures, out: Path) -> list[tuple[str, str]]:
    """Draw every plot into ``out``; return (title, file name) pairs. Each comparison has a ratio panel
    (sample / reference) with 1-sigma statistical bands."""
    plt = _plt()
    figs: list[tuple[str, str]] = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        figs.append((title, name))

    idx = np.arange(N_SENSORS)
    labels = [sensor_name(i) for i in idx]
    for what, getter, scale, ylabel, title, name in (
        (
            "occupancy",
            "occupancy_per_sensor",
            100.0,
            "mean occupancy (%)",
            "Per-sensor mean occupancy",
            "occupancy_per_sensor.png",
        ),
        (
            "charge",
            "mean_hit_adc_per_sensor",
            1.0,
            "mean hit charge (ADC)",
            "Per-sensor mean hit charge (average over images of the image's mean)",
            "mean_hit_adc_per_sensor.png",
        ),
    ):
        fig, (ax,), (rax,) = _ratio_figure(plt, 11)
        r, v = getattr(ref, getter)(), getattr(sample, getter)()
        r_sd, v_sd = _per_sensor_sd(ref, what), _per_sensor_sd(sample, what)
        ax.step(idx, scale * r, where="mid", label=ref.name, color="black")
        ax.fill_between(idx, scale * (r - r_sd), scale * (r + r_sd), step="mid", color="0.7", alpha=0.5)
        ax.errorbar(idx, scale * v, yerr=scale * v_sd, fmt="o", ms=4, label=sample.name, color="tab:red")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        _ratio_panel(rax, idx, v, v_sd, r, r_sd, where=None)
        rax.set_xticks(idx[::2], labels[::2], rotation=90, fontsize=7)
        rax.set_xlabel("sensor (layer.ladder.sensor)")
        save(fig, name, title.split(" (")[0])

    # where the sample stands among the published GANs (layer figures from the same reference file)
    fig, axes, raxes = _ratio_figure(plt, 11, 2)
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
    for ax, rax, label, values in zip(axes, raxes, ("mean occupancy (%)", "mean hit charge (ADC)"), (occ, adc)):
        ax.set_ylabel(label)
        base = np.asarray(values[0], dtype=np.float64)
        for i in range(1, len(names)):
            rax.bar(x + i * width, np.clip(np.asarray(values[i]) / base, *RATIO_RANGE), width, color=f"C{i}")
        rax.axhline(1.0, color="black", lw=0.8)
        rax.set_ylim(0.5, 1.5)
        rax.set_ylabel("/ reference", fontsize=8)
        rax.set_xticks(x + 0.4 - width / 2, ["layer 1", "layer 2"])
    axes[0].legend(fontsize=7)
    fig.suptitle("Layer figures: reference, this sample, and published GANs")
    save(fig, "layers.png", "Layer figures among the published GANs")

    fig, axes, raxes = _ratio_figure(plt, 12, 2)
    adc_x = np.arange(1, 256)
    for la, ax, rax in zip((1, 2), axes, raxes):
        _spectrum(ax, rax, adc_x, ref.layer_adc_counts(la)[1:], sample.layer_adc_counts(la)[1:], ref.name, sample.name)
        ax.set_yscale("log")
        ax.set_ylabel("fraction of hits")
        ax.set_title(f"layer {la}" + (" (reference: both layers)" if isinstance(ref, ReferenceFigures) else ""))
        for cut in TAIL_CUTS:
            ax.axvline(cut, color="0.6", lw=0.5, ls=":")
        rax.set_xlabel("hit charge (ADC)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Hit-charge spectrum per layer (dotted: the tail cuts)")
    save(fig, "hit_charge.png", "Hit-charge spectrum")

    fig, (ax,), (rax,) = _ratio_figure(plt, 8)
    edges = np.linspace(0, OCC_MAX, OCC_BINS + 1)
    centres = 100 * (edges[:-1] + edges[1:]) / 2
    _spectrum(
        ax, rax, centres, ref.image_occupancy_hist()[:-1], sample.image_occupancy_hist()[:-1], ref.name, sample.name
    )
    rax.set_xlabel("per-image occupancy (%)")
    ax.set_ylabel("fraction of images")
    ax.set_title("Per-image occupancy (one image = one sensor in one event)")
    ax.legend(fontsize=8)
    save(fig, "image_occupancy.png", "Per-image occupancy distribution")

    fig, axes, raxes = _ratio_figure(plt, 12, 2)
    sizes = np.arange(1, MAX_CLUSTER_SIZE + 1)
    charges = (np.arange(sample.cluster_charge_counts.size) + 0.5) * CLUSTER_CHARGE_BIN
    other = ref if isinstance(ref, SampleMetrics) else sample  # without a reference sample: no ratio
    _spectrum(
        axes[0], raxes[0], sizes, other.cluster_size_counts[1:], sample.cluster_size_counts[1:], other.name, sample.name
    )
    _spectrum(
        axes[1], raxes[1], charges, other.cluster_charge_counts, sample.cluster_charge_counts, other.name, sample.name
    )
    raxes[0].set_xlabel("cluster size (pixels; last bin: larger)")
    raxes[1].set_xlabel("cluster charge (ADC)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("fraction of clusters")
        ax.legend(fontsize=8)
    fig.suptitle("8-neighbour clusters")
    save(fig, "clusters.png", "Cluster size and cluster charge")

    samples = [sample] + ([ref] if isinstance(ref, SampleMetrics) else [])
    two = len(samples) == 2
    fig, axes = plt.subplots(2, 2 + two, figsize=(6 * (2 + two), 6.4), squeeze=False)
    maps = {}
    for col, s in enumerate(samples):
        for la in (1, 2):
            ax = axes[la - 1][col]
            n_images = max(s.n_events * int((LAYER_OF_INDEX == la).sum()), 1)
            maps[col, la] = s.hitmap[la - 1] / n_images
            im = ax.imshow(maps[col, la], aspect="auto", origin="lower", cmap="viridis")
            ax.set_title(f"{s.name}: layer {la} hit map", fontsize=9)
            ax.set_xlabel("v")
            ax.set_ylabel("u")
            fig.colorbar(im, ax=ax, label="hits per image")
    for la in (1, 2):
        ax = axes[la - 1][-1]
        if not two:
            ax.text(0.5, 0.5, "no reference hit map\n(the figures have none)", ha="center", va="center")
            ax.set_axis_off()
            continue

        # the ratio of 8 x 8-pixel blocks, so that each holds enough hits to read
        def blocks(m):
            return m[: N_U // 8 * 8, : N_V // 8 * 8].reshape(N_U // 8, 8, N_V // 8, 8).sum(axis=(1, 3))

        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = blocks(maps[0, la]) / blocks(maps[1, la])
        im = ax.imshow(ratio, aspect="auto", origin="lower", cmap="RdBu_r", vmin=RATIO_RANGE[0], vmax=RATIO_RANGE[1])
        ax.set_title(f"layer {la}: sample / reference (8 x 8-pixel blocks)", fontsize=9)
        ax.set_xlabel("v / 8")
        ax.set_ylabel("u / 8")
        fig.colorbar(im, ax=ax, label="ratio")
    save(fig, "hitmaps.png", "Hit maps per layer")

    if isinstance(ref, SampleMetrics):
        # each axis: the sensor whose profile differs most from the reference's
        fig, axes, raxes = _ratio_figure(plt, 12, 2)
        for ax, rax, axis, n in zip(axes, raxes, ("u", "v"), (N_U, N_V)):
            s_prof, r_prof = getattr(sample, f"profile_{axis}").sum(axis=0), getattr(ref, f"profile_{axis}").sum(axis=0)
            worst = int(np.argmax(ks_distance_rows(s_prof, r_prof)))
            _spectrum(ax, rax, np.arange(n), r_prof[worst], s_prof[worst], ref.name, sample.name)
            rax.set_xlabel(axis)
            ax.set_ylabel("share of the sensor's hits")
            ax.set_title(f"sensor {sensor_name(worst)}: profile along {axis}", fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle("Per-sensor hit-density profiles: the sensor farthest from the reference along each axis")
        save(fig, "profiles.png", "Per-sensor hit-density profiles")

    fig, axes = plt.subplots(1, 1 + two, figsize=(6 * (1 + two), 5), squeeze=False)
    ticks = np.arange(0, N_SENSORS, 4)
    panels = [(s.correlation(), f"{s.name}: correlation of sensor occupancies", "RdBu_r", (-1, 1)) for s in samples]
    if two:
        panels[1] = (
            samples[0].correlation() - samples[1].correlation(),
            "sample - reference (statistical sd of each entry about 1 / sqrt(events))",
            "PuOr",
            (-0.5, 0.5),
        )
    for ax, (matrix, title, cmap, (lo, hi)) in zip(axes[0], panels):
        im = ax.imshow(matrix, vmin=lo, vmax=hi, cmap=cmap)
        ax.set_title(title, fontsize=9)
        for set_ticks in (ax.set_xticks, ax.set_yticks):
            set_ticks(ticks, [sensor_name(i) for i in ticks], fontsize=6)
        ax.tick_params(axis="x", rotation=90)
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
        thr = "" if c.threshold is None else f"{'>' if c.at_least else '<='} {c.threshold:.3g}"
        if c.chance is not None:
            thr += f" (by chance {c.chance:.3g})"
        verdict = c.verdict if c.verdict != "n/a" or not c.note else f"n/a: {c.note}"
        value = c.value_text(c.value) + (f" ({c.spread})" if c.spread else "")
        cells = (c.metric, value, c.value_text(c.reference), c.distance_text(), thr, verdict)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    for title, name in figs:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
