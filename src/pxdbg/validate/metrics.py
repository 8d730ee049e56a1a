"""Per-sample metrics, accumulated one frame at a time, and the comparison of two samples.

Metrics: per-sensor mean occupancy (fraction of pixels hit) and mean hit charge (average over images of an
image's mean ADC over its hit pixels, as in the reference), the per-image occupancy distribution (200 bins
over [0, 0.02] plus overflow, as published), the hit-charge spectrum (counts per ADC value), cluster size
and cluster charge of 8-neighbour clusters, hit maps per layer, and the 40 x 40 correlation matrix of
per-event sensor occupancies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR

OCC_BINS = 200
OCC_MAX = 0.02
MAX_CLUSTER_SIZE = 64  # sizes above are counted in the last bin
MAX_CLUSTER_CHARGE = 4096  # ADC; charges above are counted in the last bin
CLUSTER_CHARGE_BIN = 8  # ADC per bin of the cluster-charge histogram
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


@dataclass
class SampleMetrics:
    """Metrics of one sample, filled by :meth:`add` one frame at a time (memory does not grow with events,
    except 40 numbers per event for the correlation matrix)."""

    name: str = "sample"
    n_events: int = 0
    hits_per_sensor: np.ndarray = field(default_factory=lambda: np.zeros(N_SENSORS, np.int64))
    image_mean_adc_sum: np.ndarray = field(default_factory=lambda: np.zeros(N_SENSORS))
    images_with_hits: np.ndarray = field(default_factory=lambda: np.zeros(N_SENSORS, np.int64))
    adc_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    occ_hist: np.ndarray = field(default_factory=lambda: np.zeros((2, OCC_BINS + 1), np.int64))
    occ_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    occ_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(2))
    cluster_size_counts: np.ndarray = field(default_factory=lambda: np.zeros(MAX_CLUSTER_SIZE + 1, np.int64))
    cluster_charge_counts: np.ndarray = field(
        default_factory=lambda: np.zeros(MAX_CLUSTER_CHARGE // CLUSTER_CHARGE_BIN + 1, np.int64))
    hitmap: np.ndarray = field(default_factory=lambda: np.zeros((2, N_U, N_V), np.int64))
    event_occupancy: list = field(default_factory=list)

    def add(self, frame: SparseFrame) -> None:
        counts = np.bincount(frame.sensor, minlength=N_SENSORS)
        occ = counts / PIXELS_PER_SENSOR
        self.n_events += 1
        self.hits_per_sensor += counts
        self.event_occupancy.append(occ)
        charge_sum = np.bincount(frame.sensor, weights=frame.charge, minlength=N_SENSORS)
        hit = counts > 0
        self.image_mean_adc_sum[hit] += charge_sum[hit] / counts[hit]
        self.images_with_hits += hit
        self.adc_counts += np.bincount(frame.charge, minlength=256)
        for li in (0, 1):
            sel = LAYER_OF_INDEX == li + 1
            o = occ[sel]
            bins = np.minimum((o / OCC_MAX * OCC_BINS).astype(np.int64), OCC_BINS)
            self.occ_hist[li] += np.bincount(bins, minlength=OCC_BINS + 1)
            self.occ_sum[li] += o.sum()
            self.occ_sq_sum[li] += (o**2).sum()
            layer_digits = LAYER_OF_INDEX[frame.sensor] == li + 1
            np.add.at(self.hitmap[li], (frame.u[layer_digits], frame.v[layer_digits]), 1)
        _, sizes, charges = clusters(frame)
        self.cluster_size_counts += np.bincount(np.minimum(sizes, MAX_CLUSTER_SIZE),
                                                minlength=MAX_CLUSTER_SIZE + 1)
        cbin = np.minimum(charges // CLUSTER_CHARGE_BIN, MAX_CLUSTER_CHARGE // CLUSTER_CHARGE_BIN)
        self.cluster_charge_counts += np.bincount(cbin, minlength=self.cluster_charge_counts.size)

    # -- derived figures -------------------------------------------------------------------------------------
    def occupancy_per_sensor(self) -> np.ndarray:
        return self.hits_per_sensor / (PIXELS_PER_SENSOR * max(self.n_events, 1))

    def mean_hit_adc_per_sensor(self) -> np.ndarray:
        return self.image_mean_adc_sum / np.maximum(self.images_with_hits, 1)

    def layer_occupancy(self, layer: int) -> float:
        return float(self.occupancy_per_sensor()[LAYER_OF_INDEX == layer].mean())

    def layer_image_occupancy_std(self, layer: int) -> float:
        n = self.n_events * int((LAYER_OF_INDEX == layer).sum())
        mean = self.occ_sum[layer - 1] / n
        return float(np.sqrt(max(self.occ_sq_sum[layer - 1] / n - mean**2, 0.0)))

    def layer_mean_hit_adc(self, layer: int) -> float:
        return float(self.mean_hit_adc_per_sensor()[LAYER_OF_INDEX == layer].mean())

    def image_occupancy_hist(self) -> np.ndarray:
        """Per-image occupancy histogram over both layers: 200 bins over [0, 0.02], then the overflow."""
        return self.occ_hist.sum(axis=0)

    def correlation(self) -> np.ndarray:
        occ = np.asarray(self.event_occupancy)
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
            "per_image_occupancy_hist": self.image_occupancy_hist().tolist(),
            "cluster_size_counts": self.cluster_size_counts.tolist(),
            "cluster_charge_counts": self.cluster_charge_counts.tolist(),
            "mean_cluster_size": _hist_mean(self.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1)),
            "mean_cluster_charge": _hist_mean(self.cluster_charge_counts, _cluster_charge_centres()),
            "correlation": np.nan_to_num(self.correlation()).tolist(),
        }


def _cluster_charge_centres() -> np.ndarray:
    return (np.arange(MAX_CLUSTER_CHARGE // CLUSTER_CHARGE_BIN + 1) + 0.5) * CLUSTER_CHARGE_BIN


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

    @property
    def name(self) -> str:
        return "simulated Belle II background (reference figures, 10,000 events)"

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


@dataclass
class Check:
    metric: str
    value: float | None
    reference: float | None
    distance: float | None
    distance_name: str
    threshold: float | None

    @property
    def verdict(self) -> str:
        if self.distance is None or self.threshold is None:
            return "n/a"
        return "PASS" if abs(self.distance) <= self.threshold and np.isfinite(self.distance) else "FAIL"

    def line(self) -> str:
        if self.verdict == "n/a":
            return f"{self.metric}: no reference figure to compare with"
        return (f"{self.verdict} {self.metric}: {self.distance_name} {self.distance:+.4g} "
                f"(threshold |{self.distance_name}| <= {self.threshold:g})")

    def as_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "reference": self.reference, "distance": self.distance,
                "distance_name": self.distance_name, "threshold": self.threshold, "verdict": self.verdict}


#: Thresholds of the verdicts (relative differences as fractions, distances as defined above).
THRESHOLDS = {
    "occupancy_per_sensor": 0.10,
    "occupancy_layer": 0.05,
    "per_image_occupancy_std": 0.25,
    "per_image_occupancy_ks": 0.10,
    "mean_hit_adc_layer": 0.10,
    "hit_charge_ks": 0.05,
    "cluster_size_mean": 0.20,
    "cluster_charge_ks": 0.10,
    "correlation_mean_abs_diff": 0.10,
    "hitmap_profile_ks": 0.05,
}


def compare(sample: SampleMetrics, ref: SampleMetrics | ReferenceFigures) -> list[Check]:
    """One :class:`Check` per metric of ``sample`` against ``ref`` (another sample or the reference figures)."""
    t = THRESHOLDS
    checks = []
    occ, occ_ref = sample.occupancy_per_sensor(), ref.occupancy_per_sensor()
    rel = occ / occ_ref - 1
    worst = int(np.argmax(np.abs(rel)))
    checks.append(Check(f"per-sensor mean occupancy (worst: sensor index {worst})", float(occ[worst]),
                        float(occ_ref[worst]), float(rel[worst]), "relative difference", t["occupancy_per_sensor"]))
    for la in (1, 2):
        checks.append(Check(f"mean occupancy, layer {la}", sample.layer_occupancy(la), ref.layer_occupancy(la),
                            rel_diff(sample.layer_occupancy(la), ref.layer_occupancy(la)), "relative difference",
                            t["occupancy_layer"]))
    for la in (1, 2):
        v, r = sample.layer_image_occupancy_std(la), ref.layer_image_occupancy_std(la)
        checks.append(Check(f"per-image occupancy std, layer {la}", v, r, rel_diff(v, r), "relative difference",
                            t["per_image_occupancy_std"]))
    checks.append(Check("per-image occupancy distribution", None, None,
                        ks_distance(sample.image_occupancy_hist(), ref.image_occupancy_hist()), "KS distance",
                        t["per_image_occupancy_ks"]))
    for la in (1, 2):
        v, r = sample.layer_mean_hit_adc(la), ref.layer_mean_hit_adc(la)
        checks.append(Check(f"mean hit charge (ADC), layer {la}", v, r, rel_diff(v, r), "relative difference",
                            t["mean_hit_adc_layer"]))
    checks.append(Check("hit-charge spectrum", None, None, ks_distance(sample.adc_counts, ref.adc_counts),
                        "KS distance", t["hit_charge_ks"]))
    if isinstance(ref, SampleMetrics):
        s_mean = _hist_mean(sample.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1))
        r_mean = _hist_mean(ref.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1))
        checks.append(Check("mean cluster size (pixels)", s_mean, r_mean, rel_diff(s_mean, r_mean),
                            "relative difference", t["cluster_size_mean"]))
        checks.append(Check("cluster-charge distribution", None, None,
                            ks_distance(sample.cluster_charge_counts, ref.cluster_charge_counts), "KS distance",
                            t["cluster_charge_ks"]))
        diff = np.nanmean(np.abs(sample.correlation() - ref.correlation())[~np.eye(N_SENSORS, dtype=bool)])
        checks.append(Check("sensor-occupancy correlation matrix", None, None, float(diff), "mean |difference|",
                            t["correlation_mean_abs_diff"]))
        for la in (1, 2):
            for axis, name in ((1, "u"), (0, "v")):
                ks = ks_distance(sample.hitmap[la - 1].sum(axis=axis), ref.hitmap[la - 1].sum(axis=axis))
                checks.append(Check(f"hit map layer {la}, {name} profile", None, None, ks, "KS distance",
                                    t["hitmap_profile_ks"]))
    else:
        for metric in ("cluster size and charge", "sensor-occupancy correlation matrix", "hit maps"):
            checks.append(Check(metric, None, None, None, "", None))
    return checks
