"""Per-sample metrics, accumulated one frame at a time, and the comparison of two samples.

Metrics: per-sensor mean occupancy (fraction of pixels hit) and mean hit charge (average over images of an
image's mean ADC over its hit pixels, as in the reference), the per-image occupancy distribution (200 bins
over [0, 0.02] plus overflow, as published), the hit-charge spectrum (counts per ADC value, per layer, and the
per-event counts above :data:`TAIL_CUTS`), cluster size
and cluster charge of 8-neighbour clusters per layer, each sensor's hit-density profiles along u and v, hit
maps per layer, and the 40 x 40 correlation matrix of per-event sensor occupancies.

Verdicts against the reference figures use fixed thresholds (:data:`THRESHOLDS`). The spectrum's tail has
checks of its own, because a KS distance cannot see it: the share of hits above each cut per layer (20 %, or
three standard deviations where the counts cannot tell 20 %), a chi-square of the binned spectrum and a
k-sample Anderson-Darling test (:func:`tail_checks`). Against another sample,
the structure checks (clusters, profiles, correlations) are held to what chance allows at the two samples'
sizes: each sample is split into its even and odd events, two independent samples of the same source, and
their distance sets the threshold (:data:`CHANCE_THRESHOLDS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR, sensor_name

OCC_BINS = 200
OCC_MAX = 0.02
MAX_CLUSTER_SIZE = 64  # sizes above are counted in the last bin
MAX_CLUSTER_CHARGE = 4096  # ADC; charges above are counted in the last bin
CLUSTER_CHARGE_BIN = 8  # ADC per bin of the cluster-charge histogram
N_CLUSTER_CHARGE_BINS = MAX_CLUSTER_CHARGE // CLUSTER_CHARGE_BIN + 1
TAIL_CUTS = (100, 150, 200, 250)  # ADC: fractions of hits at or above each are compared
_FORWARD_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))  # half of the 8-neighbourhood: each pair once


def clusters(frame: SparseFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-neighbour clusters of a frame's digits (within a sensor): (label per digit, sizes, charges)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = frame.n_digits
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    u = frame.u.astype(np.int64)
    v = frame.v.astype(np.int64)
    key = (frame.sensor.astype(np.int64) * N_U + u) * N_V + v  # sorted: frames are canonical
    rows, cols = [], []
    for du, dv in _FORWARD_NEIGHBOURS:
        ok = (u + du < N_U) & (v + dv >= 0) & (v + dv < N_V)
        target = key + du * N_V + dv
        pos = np.searchsorted(key, target)
        pos_c = np.minimum(pos, n - 1)
        hit = ok & (pos < n) & (key[pos_c] == target)
        rows.append(np.flatnonzero(hit))
        cols.append(pos_c[hit])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    charges = np.bincount(labels, weights=frame.charge.astype(np.int64)).astype(np.int64)
    return labels, sizes, charges


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.int64)


@dataclass
class SampleMetrics:
    """Metrics of one sample, filled by :meth:`add` one frame at a time (memory does not grow with events,
    except 40 numbers per event for the correlation matrix).

    Distributions are kept separately for even and odd events (the first axis, "half"): two independent
    samples of the same source, whose distance tells how far apart two samples of this size fall by chance.
    """

    name: str = "sample"
    n_events: int = 0
    hits_per_sensor: np.ndarray = field(default_factory=lambda: _zeros(N_SENSORS))
    image_mean_adc_sum: np.ndarray = field(default_factory=lambda: np.zeros((2, N_SENSORS)))
    images_with_hits: np.ndarray = field(default_factory=lambda: _zeros(2, N_SENSORS))
    adc_counts: np.ndarray = field(default_factory=lambda: _zeros(256))
    #: (layer, ADC) hit-charge counts per layer
    adc_counts_layer: np.ndarray = field(default_factory=lambda: _zeros(2, 256))
    #: (layer, cut) sums over events of the event's hits at or above each of TAIL_CUTS, and of their squares:
    #: hits come in clusters and events, so the spread of these counts is wider than binomial
    tail_event_sum: np.ndarray = field(default_factory=lambda: np.zeros((2, len(TAIL_CUTS))))
    tail_event_sq: np.ndarray = field(default_factory=lambda: np.zeros((2, len(TAIL_CUTS))))
    occ_hist: np.ndarray = field(default_factory=lambda: _zeros(2, OCC_BINS + 1))
    occ_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    occ_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    #: (half, layer, size) and (half, layer, charge bin) cluster counts
    cluster_sizes: np.ndarray = field(default_factory=lambda: _zeros(2, 2, MAX_CLUSTER_SIZE + 1))
    cluster_charges: np.ndarray = field(default_factory=lambda: _zeros(2, 2, N_CLUSTER_CHARGE_BINS))
    #: (half, sensor, u) and (half, sensor, v) hit counts: each sensor's hit-density profiles
    profile_u: np.ndarray = field(default_factory=lambda: _zeros(2, N_SENSORS, N_U))
    profile_v: np.ndarray = field(default_factory=lambda: _zeros(2, N_SENSORS, N_V))
    hitmap: np.ndarray = field(default_factory=lambda: _zeros(2, N_U, N_V))
    event_occupancy: list = field(default_factory=list)

    def add(self, frame: SparseFrame) -> None:
        half = self.n_events % 2
        sensor = frame.sensor.astype(np.intp)
        counts = np.bincount(sensor, minlength=N_SENSORS)
        occ = counts / PIXELS_PER_SENSOR
        self.n_events += 1
        self.hits_per_sensor += counts
        self.event_occupancy.append(occ)
        charge_sum = np.bincount(sensor, weights=frame.charge, minlength=N_SENSORS)
        hit = counts > 0
        self.image_mean_adc_sum[half, hit] += charge_sum[hit] / counts[hit]
        self.images_with_hits[half] += hit
        self.adc_counts += np.bincount(frame.charge, minlength=256)
        layer_of_digit = LAYER_OF_INDEX[sensor].astype(np.intp) - 1
        per_layer = np.bincount(layer_of_digit * 256 + frame.charge, minlength=512).reshape(2, 256)
        self.adc_counts_layer += per_layer
        above = np.cumsum(per_layer[:, ::-1], axis=1)[:, ::-1][:, list(TAIL_CUTS)]
        self.tail_event_sum += above
        self.tail_event_sq += above.astype(np.float64) ** 2
        for li in (0, 1):
            o = occ[LAYER_OF_INDEX == li + 1]
            bins = np.minimum((o / OCC_MAX * OCC_BINS).astype(np.int64), OCC_BINS)
            self.occ_hist[li] += np.bincount(bins, minlength=OCC_BINS + 1)
            self.occ_sum[li] += o.sum()
            self.occ_sq_sum[li] += (o**2).sum()
        u = frame.u.astype(np.intp)
        v = frame.v.astype(np.intp)
        self.hitmap += np.bincount((layer_of_digit * N_U + u) * N_V + v, minlength=2 * N_U * N_V).reshape(2, N_U, N_V)
        self.profile_u[half] += np.bincount(sensor * N_U + u, minlength=N_SENSORS * N_U).reshape(N_SENSORS, N_U)
        self.profile_v[half] += np.bincount(sensor * N_V + v, minlength=N_SENSORS * N_V).reshape(N_SENSORS, N_V)
        labels, sizes, charges = clusters(frame)
        if sizes.size:
            first = np.zeros(sizes.size, np.intp)
            first[labels] = np.arange(labels.size)  # a digit of each cluster (any one), for its layer
            layer = layer_of_digit[first]
            size_bin = np.minimum(sizes, MAX_CLUSTER_SIZE)
            charge_bin = np.minimum(charges // CLUSTER_CHARGE_BIN, N_CLUSTER_CHARGE_BINS - 1)
            self.cluster_sizes[half] += np.bincount(
                layer * (MAX_CLUSTER_SIZE + 1) + size_bin, minlength=2 * (MAX_CLUSTER_SIZE + 1)
            ).reshape(2, -1)
            self.cluster_charges[half] += np.bincount(
                layer * N_CLUSTER_CHARGE_BINS + charge_bin, minlength=2 * N_CLUSTER_CHARGE_BINS
            ).reshape(2, -1)

    # -- derived figures -------------------------------------------------------------------------------------
    @property
    def cluster_size_counts(self) -> np.ndarray:
        """Clusters per size (pixels; the last bin holds the larger ones), both layers."""
        return self.cluster_sizes.sum(axis=(0, 1))

    @property
    def cluster_charge_counts(self) -> np.ndarray:
        """Clusters per charge bin of CLUSTER_CHARGE_BIN ADC (the last bin holds the larger ones), both layers."""
        return self.cluster_charges.sum(axis=(0, 1))

    def occupancy_per_sensor(self) -> np.ndarray:
        return self.hits_per_sensor / (PIXELS_PER_SENSOR * max(self.n_events, 1))

    def mean_hit_adc_per_sensor(self, half: int | None = None) -> np.ndarray:
        """Per sensor: the average over images with hits of the image's mean hit charge (ADC); of the even
        (``half=0``) or odd (``half=1``) events only when ``half`` is given."""
        sums, n = (self.image_mean_adc_sum, self.images_with_hits)
        if half is None:
            return sums.sum(axis=0) / np.maximum(n.sum(axis=0), 1)
        return sums[half] / np.maximum(n[half], 1)

    def layer_occupancy(self, layer: int) -> float:
        return float(self.occupancy_per_sensor()[LAYER_OF_INDEX == layer].mean())

    def layer_image_occupancy_std(self, layer: int) -> float:
        n = self.n_events * int((LAYER_OF_INDEX == layer).sum())
        mean = self.occ_sum[layer - 1] / n
        return float(np.sqrt(max(self.occ_sq_sum[layer - 1] / n - mean**2, 0.0)))

    def layer_mean_hit_adc(self, layer: int) -> float:
        return float(self.mean_hit_adc_per_sensor()[LAYER_OF_INDEX == layer].mean())

    def layer_adc_counts(self, layer: int) -> np.ndarray:
        return self.adc_counts_layer[layer - 1]

    def tail_count_sd(self, layer: int, cut: int) -> float:
        """Standard deviation of the number of hits at or above ``cut`` ADC on ``layer``, from its spread over
        events (sqrt(events x variance per event))."""
        n = self.n_events
        if n < 2:
            return float("nan")
        k = TAIL_CUTS.index(cut)
        mean = self.tail_event_sum[layer - 1, k] / n
        var = max(self.tail_event_sq[layer - 1, k] / n - mean**2, 0.0) * n / (n - 1)
        return float(np.sqrt(n * var))

    def image_occupancy_hist(self) -> np.ndarray:
        """Per-image occupancy histogram over both layers: 200 bins over [0, 0.02], then the overflow."""
        return self.occ_hist.sum(axis=0)

    def correlation(self, half: int | None = None) -> np.ndarray:
        """40 x 40 correlation of per-event sensor occupancies (of the even or odd events when ``half``)."""
        occ = np.asarray(self.event_occupancy)
        if half is not None:
            occ = occ[half::2]
        if occ.shape[0] < 2:
            return np.full((N_SENSORS, N_SENSORS), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.corrcoef(occ, rowvar=False)

    def summary(self) -> dict:
        """Every number, JSON-ready."""
        return {
            "name": self.name,
            "events": self.n_events,
            "occupancy_per_sensor": self.occupancy_per_sensor().tolist(),
            "mean_hit_adc_per_sensor": self.mean_hit_adc_per_sensor().tolist(),
            "occupancy_layer": {str(la): self.layer_occupancy(la) for la in (1, 2)},
            "per_image_occupancy_std_layer": {str(la): self.layer_image_occupancy_std(la) for la in (1, 2)},
            "mean_hit_adc_layer": {str(la): self.layer_mean_hit_adc(la) for la in (1, 2)},
            "adc_counts": self.adc_counts.tolist(),
            "adc_counts_layer": {str(la): self.adc_counts_layer[la - 1].tolist() for la in (1, 2)},
            "per_image_occupancy_hist": self.image_occupancy_hist().tolist(),
            "cluster_size_counts_layer": {str(la): self.cluster_sizes[:, la - 1].sum(axis=0).tolist() for la in (1, 2)},
            "cluster_charge_counts_layer": {
                str(la): self.cluster_charges[:, la - 1].sum(axis=0).tolist() for la in (1, 2)
            },
            "mean_cluster_size": _hist_mean(self.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1)),
            "mean_cluster_charge": _hist_mean(self.cluster_charge_counts, _cluster_charge_centres()),
            "profile_u_per_sensor": self.profile_u.sum(axis=0).tolist(),
            "profile_v_per_sensor": self.profile_v.sum(axis=0).tolist(),
            "correlation": np.nan_to_num(self.correlation()).tolist(),
        }


def _cluster_charge_centres() -> np.ndarray:
    return (np.arange(N_CLUSTER_CHARGE_BINS) + 0.5) * CLUSTER_CHARGE_BIN


def _hist_mean(counts: np.ndarray, centres: np.ndarray) -> float:
    total = counts.sum()
    return float((counts * centres).sum() / total) if total else float("nan")


# -- the reference figures ------------------------------------------------------------------------------------
def reference_figures() -> dict:
    return json.loads(resources.files("pxdbg.shared").joinpath("data/reference-figures.json").read_text())


@dataclass
class ReferenceFigures:
    """The shipped figures of 10,000 events of Geant4-simulated Belle II background, in metric form."""

    raw: dict
    EVENTS = 10_000  # events behind the figures

    @property
    def name(self) -> str:
        return "reference (Geant4 simulation, 10,000 events)"

    def occupancy_per_sensor(self) -> np.ndarray:
        return np.asarray(self.raw["real"]["mean_occupancy_per_sensor"])

    def mean_hit_adc_per_sensor(self) -> np.ndarray:
        return np.asarray(self.raw["real"]["mean_hit_adc_per_sensor"])

    def layer_occupancy(self, layer: int) -> float:
        return float(self.raw["real"]["occupancy_layer_mean"][str(layer)])

    def layer_image_occupancy_std(self, layer: int) -> float:
        return float(self.raw["real"]["per_image_occupancy_std_layer"][str(layer)])

    def layer_mean_hit_adc(self, layer: int) -> float:
        return float(self.mean_hit_adc_per_sensor()[LAYER_OF_INDEX == layer].mean())

    @property
    def adc_counts(self) -> np.ndarray:
        counts = np.zeros(256, np.int64)
        counts[7:] = self.raw["real"]["adc_histogram_counts_7_to_255"]
        return counts

    def layer_adc_counts(self, layer: int) -> np.ndarray:
        """The figures hold one spectrum of both layers together: each layer is compared with it."""
        return self.adc_counts

    def image_occupancy_hist(self) -> np.ndarray:
        h = self.raw["real"]["per_image_occupancy_histogram"]
        return np.append(np.asarray(h["counts"], np.int64), h["overflow_above_0.02"])

    def generated_for_comparison(self) -> dict:
        return self.raw.get("generated_for_comparison", {})


# -- distances and verdicts -----------------------------------------------------------------------------------
def ks_distance(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of two histograms on the same bins (largest gap of the normalised CDFs)."""
    a, b = np.cumsum(counts_a, dtype=float), np.cumsum(counts_b, dtype=float)
    if a[-1] == 0 or b[-1] == 0:
        return 1.0 if a[-1] != b[-1] else 0.0
    return float(np.max(np.abs(a / a[-1] - b / b[-1])))


def wasserstein_distance(counts_a: np.ndarray, counts_b: np.ndarray, bin_width: float = 1.0) -> float:
    """Earth mover's (Wasserstein-1) distance of two histograms on the same equal-width bins, in bin units."""
    a, b = np.cumsum(counts_a, dtype=float), np.cumsum(counts_b, dtype=float)
    if a[-1] == 0 or b[-1] == 0:
        return float("nan")
    return float(np.sum(np.abs(a / a[-1] - b / b[-1])) * bin_width)


def rel_diff(value: float, reference: float) -> float:
    return float(value / reference - 1.0) if reference else float("inf")


def ks_distance_rows(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """:func:`ks_distance` of each row pair of two (rows, bins) histogram arrays."""
    a, b = np.cumsum(counts_a, axis=-1, dtype=float), np.cumsum(counts_b, axis=-1, dtype=float)
    ta, tb = a[..., -1:], b[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.max(np.abs(a / ta - b / tb), axis=-1)
    one_empty = (ta[..., 0] == 0) != (tb[..., 0] == 0)
    return np.where(one_empty, 1.0, np.where((ta[..., 0] == 0) & (tb[..., 0] == 0), 0.0, d))


def correlation_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the off-diagonal entries of two correlation matrices."""
    off = ~np.eye(a.shape[0], dtype=bool)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)[off]
    d = d[np.isfinite(d)]  # a sensor without hits in a sample has no correlations
    return float(d.mean()) if d.size else float("nan")


def pattern_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two per-sensor patterns (nan when one is flat)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def chance_distance(sample_halves: float, reference_halves: float) -> float:
    """How far a sample and a reference fall apart by chance, from each one's distance between its halves.

    For distances that shrink like the statistical noise, sqrt(1/n + 1/m) (KS distances, mean absolute
    differences of estimates), two halves of a sample of n events lie sqrt(4/n) apart, so the full-size
    comparison expects sqrt((d_sample^2 + d_reference^2) / 4).
    """
    return float(np.sqrt((sample_halves**2 + reference_halves**2) / 4.0))


@dataclass
class Check:
    metric: str
    value: float | None
    reference: float | None
    distance: float | None
    distance_name: str
    threshold: float | None
    #: two-sample checks: the distance expected by chance (from the halves of both samples)
    chance: float | None = None
    #: why a check has no verdict, when it has none
    note: str = ""
    #: the statistical uncertainty of the value, in words (e.g. "binomial sd 1.2e-05")
    spread: str = ""
    #: value and reference are fractions shown in percent (occupancies)
    percent: bool = False
    #: the distance must stay above the threshold (a significance level), not below it
    at_least: bool = False

    def value_text(self, x: float | None) -> str:
        if x is None:
            return ""
        return f"{100 * x:.4g} %" if self.percent else f"{x:.5g}"

    @property
    def verdict(self) -> str:
        if self.distance is None or self.threshold is None:
            return "n/a"
        if not np.isfinite(self.distance):
            return "FAIL"
        if self.at_least:
            return "PASS" if self.distance > self.threshold else "FAIL"
        return "PASS" if abs(self.distance) <= self.threshold else "FAIL"

    def distance_text(self) -> str:
        """The distance, unsigned (the value and the reference beside it show the direction)."""
        if self.distance is None:
            return ""
        name = f"|{self.distance_name}|" if self.distance_name == "relative difference" else self.distance_name
        return f"{name} {abs(self.distance):.3g}"

    def line(self) -> str:
        if self.verdict == "n/a":
            return f"{self.metric}: {self.note or 'no reference figure to compare with'}"
        bound = ">" if self.at_least else "<="
        text = f"{self.verdict} {self.metric}: "
        if self.value is not None and self.reference is not None:
            text += f"{self.value_text(self.value)} against {self.value_text(self.reference)}, "
        text += f"{self.distance_text()} (threshold {bound} {self.threshold:.3g}"
        if self.chance is not None:
            text += f"; by chance {self.chance:.3g}"
        if self.spread:
            text += f"; {self.spread}"
        return text + ")"

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "reference": self.reference,
            "distance": self.distance,
            "distance_name": self.distance_name,
            "threshold": self.threshold,
            "chance": self.chance,
            "note": self.note,
            "spread": self.spread,
            "verdict": self.verdict,
        }


# -- tail-sensitive comparisons of hit-charge spectra ------------------------------------------------------------
CHI2_SYSTEMATIC = 0.05  # relative per-bin allowance of the chi-square: a model is not asked to be exact
CHI2_MIN_EXPECTED = 5.0  # tail bins are merged until the reference expects this many sample hits
AD_HITS = 20_000  # hits drawn from each spectrum for the Anderson-Darling test
AD_SIGNIFICANCE = 0.001  # below it the Anderson-Darling test fails


def tail_fraction(counts: np.ndarray, cut: int) -> tuple[float, float]:
    """Share of hits at or above ``cut`` ADC and its binomial standard deviation."""
    n = float(counts.sum())
    if n == 0:
        return float("nan"), float("nan")
    f = float(counts[cut:].sum()) / n
    return f, float(np.sqrt(f * (1.0 - f) / n))


def tail_check(
    metric: str, sample_counts: np.ndarray, ref_counts: np.ndarray, cut: int, count_sd: float | None = None
) -> Check:
    """The share of hits above ``cut`` against the reference's: |ratio - 1| within THRESHOLDS["tail_fraction"],
    or within three standard deviations where the counts cannot tell that much (few hits above the cut).

    The sample's standard deviation is the larger of the binomial one and ``count_sd`` (the spread of the count
    over events, when known): hits above a cut come in clusters, so their count spreads more than binomially.
    """
    f, sf = tail_fraction(sample_counts, cut)
    r, sr = tail_fraction(ref_counts, cut)
    if not (r > 0 and np.isfinite(f)):
        return Check(metric, f, r, None, "", None, note="the reference has no hits above this cut")
    n = float(sample_counts.sum())
    expected = r * n  # sample hits above the cut if it followed the reference
    rel_sd_sample = 1.0 / np.sqrt(expected)
    spread = f"binomial sd {sf:.2g}"
    if count_sd is not None and np.isfinite(count_sd):
        rel_sd_sample = max(rel_sd_sample, count_sd / expected)
        spread += f", from the events {count_sd / n:.2g}"
    rel_sd = float(np.sqrt(rel_sd_sample**2 + (sr / r) ** 2))
    threshold = max(THRESHOLDS["tail_fraction"], 3.0 * rel_sd)
    return Check(metric, f, r, abs(f / r - 1.0), "|ratio - 1|", threshold, spread=spread)


def _merge_tail(expected: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """Merge bins from the top down until each expects CHI2_MIN_EXPECTED hits (sparse tails, Gaussian errors)."""
    groups = np.zeros(expected.size, np.intp)
    g, acc = 0, 0.0
    for i in range(expected.size - 1, -1, -1):
        groups[i] = g
        acc += expected[i]
        if acc >= CHI2_MIN_EXPECTED:
            g, acc = g + 1, 0.0
    return [np.bincount(groups, weights=a) for a in (expected, *arrays)]


def chi2_spectrum(sample_counts: np.ndarray, ref_counts: np.ndarray) -> tuple[float, int]:
    """Chi-square of a sample's hit-charge spectrum against the reference's counts (scaled to the sample's hits),
    per-bin variance: both samples' Poisson counts plus CHI2_SYSTEMATIC of the expectation. (chi2, ndf)."""
    n_s, n_r = float(sample_counts.sum()), float(ref_counts.sum())
    if n_s == 0 or n_r == 0:
        return float("nan"), 0
    scale = n_s / n_r
    expected, obs, ref = _merge_tail(ref_counts * scale, sample_counts.astype(float), ref_counts.astype(float))
    var = obs + scale**2 * ref + (CHI2_SYSTEMATIC * expected) ** 2
    used = var > 0
    chi2 = float((((obs - expected) ** 2)[used] / var[used]).sum())
    return chi2, int(used.sum()) - 1


def anderson_darling(sample_counts: np.ndarray, ref_counts: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """scipy's k-sample Anderson-Darling test of AD_HITS hits drawn from each spectrum: (statistic, significance
    level, which scipy bounds to [0.001, 0.25]). A fixed number of hits makes it a test of differences visible at
    that size, where one of all the hits would call any difference significant."""
    import warnings

    from scipy.stats import anderson_ksamp

    rng = np.random.default_rng(seed)
    values = np.arange(sample_counts.size)
    draws = []
    for counts in (sample_counts, ref_counts):
        total = counts.sum()
        if total == 0:
            return float("nan"), float("nan")
        draws.append(np.repeat(values, rng.multinomial(AD_HITS, counts / total)))
    with warnings.catch_warnings():  # scipy warns when it bounds the significance level; the bound is reported
        warnings.simplefilter("ignore", UserWarning)
        res = anderson_ksamp(draws)
    return float(res.statistic), float(res.significance_level)


def _second_differences(counts: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Second differences of log counts over [lo, hi] ADC and the variance Poisson noise gives each."""
    c = np.asarray(counts[lo - 1 : hi + 2], dtype=np.float64)
    with np.errstate(divide="ignore"):
        log = np.log(c)
        noise = 1.0 / c[1:-1] + 0.25 * (1.0 / c[:-2] + 1.0 / c[2:])
    return log[1:-1] - 0.5 * (log[:-2] + log[2:]), noise


def spectrum_roughness(counts: np.ndarray, lo: int = 100, hi: int = 200) -> float:
    """Bin-to-bin roughness of a spectrum over [lo, hi] ADC: the rms second difference of log counts, less what
    the Poisson noise of the counts gives (0 when the noise explains it all); infinite with an empty bin. Spikes
    raise it."""
    d2, noise = _second_differences(counts, lo, hi)
    if not np.all(np.isfinite(noise)):
        return float("inf")
    return float(np.sqrt(max(np.mean(d2**2) - np.mean(noise), 0.0)))


def roughness_resolution(counts: np.ndarray, lo: int = 100, hi: int = 200) -> float:
    """How large :func:`spectrum_roughness` comes out by chance for a smooth spectrum with these counts (three
    standard deviations of the noise subtraction, neighbouring differences counted as correlated)."""
    _, noise = _second_differences(counts, lo, hi)
    return float(np.sqrt(3.0 * np.sqrt(6.0 / noise.size) * np.mean(noise)))


#: Thresholds of the verdicts (relative differences as fractions, distances as defined above).
THRESHOLDS = {
    "tail_fraction": 0.20,
    "hit_charge_chi2": 3.0,  # chi-square per degree of freedom
    "occupancy_per_sensor": 0.10,
    "occupancy_layer": 0.05,
    "per_image_occupancy_std": 0.25,
    "per_image_occupancy_ks": 0.10,
    "mean_hit_adc_layer": 0.10,
    "mean_hit_adc_per_sensor": 0.03,
    "mean_hit_adc_pattern": 0.10,  # 1 - Pearson r of the 40-sensor pattern
    "hit_charge_ks": 0.05,
    "cluster_size_mean": 0.20,
}

#: Two-sample checks whose threshold is set by chance: |distance| <= max(floor, factor x the distance
#: expected by chance between two samples of these sizes, measured from each sample's two halves). The floor
#: is the smallest difference that matters, so that huge samples are not held to differences nobody could see.
CHANCE_THRESHOLDS = {
    "cluster_size_ks": (3.0, 0.02),
    "cluster_charge_ks": (3.0, 0.02),
    "profile_ks": (3.0, 0.02),
    "correlation": (1.75, 0.03),
}


def _chance_check(metric: str, key: str, distance: float, sample_halves: float, ref_halves: float) -> Check:
    factor, floor = CHANCE_THRESHOLDS[key]
    chance = chance_distance(sample_halves, ref_halves)
    threshold = max(floor, factor * chance) if np.isfinite(chance) else floor
    name = "mean |difference|" if key == "correlation" else "KS distance"
    return Check(metric, None, None, float(distance), name, float(threshold), chance=chance)


def compare(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures) -> list[Check]:
    """One :class:`Check` per metric of ``sample`` against ``ref`` (another sample or the reference figures)."""
    t = THRESHOLDS
    checks = []
    occ, occ_ref = sample.occupancy_per_sensor(), ref.occupancy_per_sensor()
    rel = occ / occ_ref - 1
    worst = int(np.argmax(np.abs(rel)))
    checks.append(
        Check(
            f"per-sensor mean occupancy (worst: sensor {sensor_name(worst)})",
            float(occ[worst]),
            float(occ_ref[worst]),
            float(rel[worst]),
            "relative difference",
            t["occupancy_per_sensor"],
            percent=True,
        )
    )
    for la in (1, 2):
        checks.append(
            Check(
                f"mean occupancy, layer {la}",
                sample.layer_occupancy(la),
                ref.layer_occupancy(la),
                rel_diff(sample.layer_occupancy(la), ref.layer_occupancy(la)),
                "relative difference",
                t["occupancy_layer"],
                percent=True,
            )
        )
    for la in (1, 2):
        v, r = sample.layer_image_occupancy_std(la), ref.layer_image_occupancy_std(la)
        checks.append(
            Check(
                f"per-image occupancy std, layer {la}",
                v,
                r,
                rel_diff(v, r),
                "relative difference",
                t["per_image_occupancy_std"],
                percent=True,
            )
        )
    checks.append(
        Check(
            "per-image occupancy distribution",
            None,
            None,
            ks_distance(sample.image_occupancy_hist(), ref.image_occupancy_hist()),
            "KS distance",
            t["per_image_occupancy_ks"],
        )
    )
    for la in (1, 2):
        v, r = sample.layer_mean_hit_adc(la), ref.layer_mean_hit_adc(la)
        checks.append(
            Check(
                f"mean hit charge (ADC), layer {la}",
                v,
                r,
                rel_diff(v, r),
                "relative difference",
                t["mean_hit_adc_layer"],
            )
        )
    checks += _charge_per_sensor_checks(sample, ref)
    checks.append(
        Check(
            "hit-charge spectrum",
            None,
            None,
            ks_distance(sample.adc_counts, ref.adc_counts),
            "KS distance",
            t["hit_charge_ks"],
        )
    )
    checks += tail_checks(sample, ref)
    if isinstance(ref, SampleMetrics):
        checks += _structure_checks(sample, ref)
    else:
        for metric in ("cluster size and charge", "sensor-occupancy correlation matrix", "hit-density profiles"):
            checks.append(Check(metric, None, None, None, "", None, note="no reference figure to compare with"))
    return checks


def tail_checks(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures) -> list[Check]:
    """The hit-charge spectrum's tail and shape: per layer, the share of hits above each of TAIL_CUTS; over all
    hits, a chi-square of the binned spectrum and the Anderson-Darling test."""
    checks = []
    for la in (1, 2):
        s, r = sample.layer_adc_counts(la), ref.layer_adc_counts(la)
        for cut in TAIL_CUTS:
            sd = sample.tail_count_sd(la, cut)
            checks.append(tail_check(f"share of hits >= {cut} ADC, layer {la}", s, r, cut, sd))
    chi2, ndf = chi2_spectrum(sample.adc_counts, ref.adc_counts)
    checks.append(
        Check(
            f"hit-charge spectrum, chi-square ({ndf} degrees of freedom, {CHI2_SYSTEMATIC:.0%} per-bin allowance)",
            chi2,
            None,
            chi2 / ndf if ndf > 0 else None,
            "chi2 / ndf",
            THRESHOLDS["hit_charge_chi2"],
            note="" if ndf > 0 else "too few hits for a chi-square",
        )
    )
    stat, significance = anderson_darling(sample.adc_counts, ref.adc_counts)
    checks.append(
        Check(
            f"hit-charge spectrum, Anderson-Darling ({AD_HITS:,} hits from each)",
            stat,
            None,
            significance if np.isfinite(significance) else None,
            "significance level",
            AD_SIGNIFICANCE if np.isfinite(significance) else None,
            note="" if np.isfinite(significance) else "no hits",
            at_least=True,
        )
    )
    return checks


def _charge_per_sensor_checks(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures) -> list[Check]:
    t = THRESHOLDS
    adc, adc_ref = sample.mean_hit_adc_per_sensor(), ref.mean_hit_adc_per_sensor()
    seen = (adc > 0) & (adc_ref > 0)  # a sensor without hits in both has no mean charge
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(seen, adc / np.where(seen, adc_ref, 1.0) - 1, 0.0)
    rel[(adc > 0) != (adc_ref > 0)] = -1.0
    worst = int(np.argmax(np.abs(rel)))
    checks = [
        Check(
            f"per-sensor mean hit charge (worst: sensor {sensor_name(worst)})",
            float(adc[worst]),
            float(adc_ref[worst]),
            float(rel[worst]),
            "relative difference",
            t["mean_hit_adc_per_sensor"],
        )
    ]
    metric = "per-sensor mean hit charge pattern (40 sensors)"
    r = pattern_correlation(adc[seen], adc_ref[seen])
    if isinstance(ref, SampleMetrics):
        # the pattern is only worth comparing where the reference has one beyond its own noise
        r_halves = pattern_correlation(ref.mean_hit_adc_per_sensor(0)[seen], ref.mean_hit_adc_per_sensor(1)[seen])
        if not r_halves >= 1 - t["mean_hit_adc_pattern"]:
            note = (
                f"the reference's sensors differ only by chance (its halves correlate with r = {r_halves:.2f});"
                " the per-sensor check above covers it"
            )
            return [*checks, Check(metric, r, None, None, "", None, note=note)]
    checks.append(Check(metric, r, None, 1.0 - r, "1 - Pearson r", t["mean_hit_adc_pattern"]))
    return checks


def _structure_checks(sample: SampleMetrics, ref: SampleMetrics) -> list[Check]:
    """Two-sample checks of cluster shapes and charges, hit-density profiles and correlations."""
    checks = []
    s_mean = _hist_mean(sample.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1))
    r_mean = _hist_mean(ref.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1))
    checks.append(
        Check(
            "mean cluster size (pixels)",
            s_mean,
            r_mean,
            rel_diff(s_mean, r_mean),
            "relative difference",
            THRESHOLDS["cluster_size_mean"],
        )
    )
    for la in (1, 2):
        for what, key, arr in (
            ("size", "cluster_size_ks", "cluster_sizes"),
            ("charge", "cluster_charge_ks", "cluster_charges"),
        ):
            s, r = getattr(sample, arr)[:, la - 1], getattr(ref, arr)[:, la - 1]
            checks.append(
                _chance_check(
                    f"cluster-{what} distribution, layer {la}",
                    key,
                    ks_distance(s.sum(axis=0), r.sum(axis=0)),
                    ks_distance(s[0], s[1]),
                    ks_distance(r[0], r[1]),
                )
            )
    for axis in ("u", "v"):
        s, r = getattr(sample, f"profile_{axis}"), getattr(ref, f"profile_{axis}")
        per_sensor = ks_distance_rows(s.sum(axis=0), r.sum(axis=0))
        worst = int(np.argmax(per_sensor))
        checks.append(
            _chance_check(
                f"per-sensor hit-density profile along {axis} (worst: sensor {sensor_name(worst)})",
                "profile_ks",
                float(per_sensor[worst]),
                float(ks_distance_rows(s[0], s[1]).max()),
                float(ks_distance_rows(r[0], r[1]).max()),
            )
        )
    checks.append(
        _chance_check(
            "sensor-occupancy correlation matrix",
            "correlation",
            correlation_distance(sample.correlation(), ref.correlation()),
            correlation_distance(sample.correlation(0), sample.correlation(1)),
            correlation_distance(ref.correlation(0), ref.correlation(1)),
        )
    )
    return checks
