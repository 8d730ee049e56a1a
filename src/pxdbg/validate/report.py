"""Plots (PNG, matplotlib), a Markdown report that embeds them, and a JSON of every number."""

from __future__ import annotations

import json
from collections.abc import Iterator
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


def ratio_with_sd(value, value_sd, ref, ref_sd) -> tuple[np.ndarray, np.ndarray]:
    """value / ref and its statistical 1-sigma, both uncertainties propagated (independent samples):
    sd = sqrt((value_sd / ref)^2 + (ratio * ref_sd / ref)^2); NaN where ref is not positive."""
    value, value_sd, ref, ref_sd = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (value, value_sd, ref, ref_sd))
    )
    ok = ref > 0
    ratio = np.full(value.shape, np.nan)
    sd = np.full(ratio.shape, np.nan)
    ratio[ok] = value[ok] / ref[ok]
    sd[ok] = np.sqrt((value_sd[ok] / ref[ok]) ** 2 + (ratio[ok] * ref_sd[ok] / ref[ok]) ** 2)
    return ratio, sd


def cluster_variance_factor(cluster_size_counts: np.ndarray) -> float:
    """Variance of a hit count over its mean when hits come in clusters of independent, Poisson-many clusters
    (compound Poisson): <k^2> / <k> over the cluster sizes k. Plain Poisson (1) would make a hit map's pulls
    about twice as wide as chance for the model's few-pixel clusters. Index = size; the last bin (larger
    clusters) counts at its own size, so very large clusters make this a little low."""
    counts = np.asarray(cluster_size_counts, dtype=np.float64)
    k = np.arange(counts.size)
    hits = (counts * k).sum()
    return float((counts * k**2).sum() / hits) if hits else 1.0


def block_pull(hits_a, images_a: int, factor_a: float, hits_b, images_b: int, factor_b: float) -> np.ndarray:
    """(rate_a - rate_b) / sd of the difference for hit counts per block, each rate the hits per image and each
    count's variance ``factor`` x hits (see :func:`cluster_variance_factor`); NaN where neither has a hit.
    Event-wide occupancy swings are left out: a layer's few % per event add about 0.002 / events to a block's
    relative variance, against about 0.3 / events from its own ~15 clustered hits per event."""
    a, b = np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)
    var = factor_a * a / images_a**2 + factor_b * b / images_b**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, (a / images_a - b / images_b) / np.sqrt(var), np.nan)


def _ratio_panel(rax, x, value, value_sd, ref, ref_sd, *, where: str | None = "mid") -> None:
    """sample / reference with its 1-sigma band from both statistical uncertainties, and the reference's own
    relative band around 1."""
    ratio, sd = ratio_with_sd(value, value_sd, ref, ref_sd)
    ref, ref_sd = np.asarray(ref, dtype=np.float64), np.asarray(ref_sd, dtype=np.float64)
    ok = ref > 0
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
    """Two histograms normalised to unit sum, each with its Poisson 1-sigma band, and their ratio; without
    reference counts (None), the sample alone and no ratio."""
    values = []
    drawn = ((ref_counts, "black", ref_name), (sample_counts, "tab:red", sample_name))
    for counts, color, name in drawn[ref_counts is None :]:
        counts = np.asarray(counts, dtype=np.float64)
        total = counts.sum()
        frac = counts / total if total else counts
        sd = np.sqrt(counts) / total if total else counts
        ax.step(x, frac, where="mid", color=color, label=name, lw=0.9)
        ax.fill_between(x, frac - sd, frac + sd, step="mid", color=color, alpha=0.25)
        values.append((frac, sd))
    if ref_counts is None:  # no reference figure: nothing to divide by
        rax.text(0.5, 0.5, "no reference figure", ha="center", va="center", transform=rax.transAxes)
        rax.set_yticks([])
        return
    (r, r_sd), (v, v_sd) = values
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


def _layer_sd(metrics: SampleMetrics | ReferenceFigures, what: str) -> np.ndarray:
    """Statistical 1-sigma of the layer figures of layers 1 and 2: the mean over a layer's sensors of their mean
    occupancy or mean hit charge."""
    per_sensor = _per_sensor_sd(metrics, what)
    sds = []
    for la in (1, 2):
        on = LAYER_OF_INDEX == la
        if what == "occupancy" and isinstance(metrics, SampleMetrics) and len(metrics.event_occupancy) > 1:
            # a layer's sensors rise and fall together from event to event: the spread of the layer mean itself
            layer_mean = np.asarray(metrics.event_occupancy)[:, on].mean(axis=1)
            sds.append(layer_mean.std() / np.sqrt(layer_mean.size))
        elif what == "occupancy":
            # no per-event figures: the mean of the sensors' sd bounds the sd of their mean, whatever their
            # correlation
            sds.append(per_sensor[on].mean())
        else:
            # an image's mean charge scatters with its own hits' charges only: independent between sensors
            sds.append(np.sqrt((per_sensor[on] ** 2).sum()) / on.sum())
    return np.asarray(sds)


PULL_RANGE = 4.0  # the hit-map pull panels' colour scale: -4 .. +4 sd


def plot_all(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures, out: Path) -> list[tuple[str, str]]:
    """Draw every plot into ``out``; return (title, file name) pairs. Each comparison has a ratio panel
    (sample / reference) with 1-sigma statistical bands, or beside a ratio map, a map of pulls."""
    plt = _plt()
    figs: list[tuple[str, str]] = []
    for fig, name, title in draw_figures(sample, ref):
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        figs.append((title, name))
    return figs


def draw_figures(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures) -> Iterator[tuple[object, str, str]]:
    """Each plot as an open matplotlib figure with its file name and title, one at a time (the caller closes
    each one)."""
    plt = _plt()
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
        ax.legend(fontsize=8, loc="upper right")
        _ratio_panel(rax, idx, v, v_sd, r, r_sd, where=None)
        rax.set_xticks(idx[::2], labels[::2], rotation=90, fontsize=7)
        rax.set_xlabel("sensor (layer.ladder.sensor)")
        yield fig, name, title.split(" (")[0]

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
    # the first two bars are the reference and this sample: theirs are the only uncertainties known
    sds = [[_layer_sd(m, what) for m in (ref, sample)] for what in ("occupancy", "charge")]
    for i, name in enumerate(names):
        known = i < 2
        occ_sd, adc_sd = (100 * sds[0][i], sds[1][i]) if known else (None, None)
        axes[0].bar(x + i * width, 100 * np.asarray(occ[i]), width, label=name, yerr=occ_sd, capsize=3)
        axes[1].bar(x + i * width, adc[i], width, label=name, yerr=adc_sd, capsize=3)
    for ax, rax, label, values, (ref_sd, sample_sd) in zip(
        axes, raxes, ("mean occupancy (%)", "mean hit charge (ADC)"), (occ, adc), sds
    ):
        ax.set_ylabel(label)
        base = np.asarray(values[0], dtype=np.float64)
        for i in range(1, len(names)):
            rax.bar(x + i * width, np.clip(np.asarray(values[i]) / base, *RATIO_RANGE), width, color=f"C{i}")
        ratio, sd = ratio_with_sd(values[1], sample_sd, base, ref_sd)
        rax.errorbar(x + width, np.clip(ratio, *RATIO_RANGE), yerr=sd, fmt="none", ecolor="black", capsize=3, lw=1)
        for j, rel in enumerate(ref_sd / base):  # the reference's own band, over each layer's bars
            left = x[j] - width / 2
            rax.fill_between([left, left + 0.8], 1 - rel, 1 + rel, color="0.4", alpha=0.35, lw=0, zorder=3)
        rax.axhline(1.0, color="black", lw=0.8)
        rax.set_ylim(0.5, 1.5)
        rax.set_ylabel("/ reference", fontsize=8)
        # the numbers too: at large samples the error bars are too small to read
        rax.set_xticks(
            x + 0.4 - width / 2,
            [f"layer {j + 1}\n{sample.name} / ref.: {ratio[j]:.4f} ± {sd[j]:.4f}" for j in range(2)],
            fontsize=8,
        )
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        "Layer figures: reference, this sample, and published GANs\n"
        "(error bars and grey band: statistical 1 sd; the GANs' figures come without one)",
        fontsize=10,
    )
    yield fig, "layers.png", "Layer figures among the published GANs"

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
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("Hit-charge spectrum per layer (dotted: the tail cuts)")
    yield fig, "hit_charge.png", "Hit-charge spectrum"

    fig, (ax,), (rax,) = _ratio_figure(plt, 8)
    edges = np.linspace(0, OCC_MAX, OCC_BINS + 1)
    centres = 100 * (edges[:-1] + edges[1:]) / 2
    _spectrum(
        ax, rax, centres, ref.image_occupancy_hist()[:-1], sample.image_occupancy_hist()[:-1], ref.name, sample.name
    )
    rax.set_xlabel("per-image occupancy (%)")
    ax.set_ylabel("fraction of images")
    ax.set_title("Per-image occupancy (one image = one sensor in one event)")
    ax.legend(fontsize=8, loc="upper right")
    yield fig, "image_occupancy.png", "Per-image occupancy distribution"

    fig, axes, raxes = _ratio_figure(plt, 12, 2)
    sizes = np.arange(1, MAX_CLUSTER_SIZE + 1)
    charges = (np.arange(sample.cluster_charge_counts.size) + 0.5) * CLUSTER_CHARGE_BIN
    other = ref if isinstance(ref, SampleMetrics) else None  # the reference figures have no clusters: no ratio
    _spectrum(
        axes[0],
        raxes[0],
        sizes,
        None if other is None else other.cluster_size_counts[1:],
        sample.cluster_size_counts[1:],
        ref.name,
        sample.name,
    )
    _spectrum(
        axes[1],
        raxes[1],
        charges,
        None if other is None else other.cluster_charge_counts,
        sample.cluster_charge_counts,
        ref.name,
        sample.name,
    )
    raxes[0].set_xlabel("cluster size (pixels; last bin: larger)")
    raxes[1].set_xlabel("cluster charge (ADC)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("fraction of clusters")
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("8-neighbour clusters")
    yield fig, "clusters.png", "Cluster size and cluster charge"

    samples = [sample] + ([ref] if isinstance(ref, SampleMetrics) else [])
    two = len(samples) == 2
    columns = 4 if two else 2  # two hit maps, their ratio and its pull; or one map and a note
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 6.4), squeeze=False)
    maps, images = {}, {}
    for col, s in enumerate(samples):
        for la in (1, 2):
            ax = axes[la - 1][col]
            images[col, la] = max(s.n_events * int((LAYER_OF_INDEX == la).sum()), 1)
            maps[col, la] = s.hitmap[la - 1] / images[col, la]
            im = ax.imshow(maps[col, la], aspect="auto", origin="lower", cmap="viridis")
            ax.set_title(f"{s.name}: layer {la} hit map", fontsize=9)
            ax.set_xlabel("v")
            ax.set_ylabel("u")
            fig.colorbar(im, ax=ax, label="hits per image")

    # 8 x 8-pixel blocks, so that each holds enough hits to read
    def blocks(m):
        return m[: N_U // 8 * 8, : N_V // 8 * 8].reshape(N_U // 8, 8, N_V // 8, 8).sum(axis=(1, 3))

    for la in (1, 2):
        ax = axes[la - 1][-1]
        if not two:
            ax.text(0.5, 0.5, "no reference hit map\n(the figures have none)", ha="center", va="center")
            ax.set_axis_off()
            continue
        ax = axes[la - 1][2]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = blocks(maps[0, la]) / blocks(maps[1, la])
        im = ax.imshow(ratio, aspect="auto", origin="lower", cmap="RdBu_r", vmin=RATIO_RANGE[0], vmax=RATIO_RANGE[1])
        ax.set_title(f"layer {la}: sample / reference (8 x 8-pixel blocks)", fontsize=9)
        ax.set_xlabel("v / 8")
        ax.set_ylabel("u / 8")
        fig.colorbar(im, ax=ax, label="ratio")
        # whether a block's ratio means anything: its difference in units of its statistical sd
        hits = [blocks(samples[col].hitmap[la - 1]) for col in (0, 1)]
        factors = [cluster_variance_factor(samples[col].cluster_sizes[:, la - 1].sum(axis=0)) for col in (0, 1)]
        pull = block_pull(hits[0], images[0, la], factors[0], hits[1], images[1, la], factors[1])
        seen = pull[np.isfinite(pull)]
        rms = float(np.sqrt(np.mean(seen**2))) if seen.size else float("nan")
        ax = axes[la - 1][3]
        im = ax.imshow(pull, aspect="auto", origin="lower", cmap="PuOr_r", vmin=-PULL_RANGE, vmax=PULL_RANGE)
        ax.set_title(
            f"layer {la}: pull of the 8 x 8-pixel blocks\nrms {rms:.2f} (chance: 1), "
            f"{int((np.abs(seen) > 3).sum())} of {seen.size} beyond 3 sd",
            fontsize=9,
        )
        ax.set_xlabel("v / 8")
        ax.set_ylabel("u / 8")
        fig.colorbar(im, ax=ax, label="(sample - ref.) / sd, Poisson in clusters")
    yield fig, "hitmaps.png", "Hit maps per layer"

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
            ax.legend(fontsize=8, loc="upper right")
        fig.suptitle("Per-sensor hit-density profiles: the sensor farthest from the reference along each axis")
        yield fig, "profiles.png", "Per-sensor hit-density profiles"

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
    yield fig, "correlation.png", "Correlation matrix of per-event sensor occupancies"


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
