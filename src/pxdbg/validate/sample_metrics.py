"""A sample's metrics, accumulated one frame at a time: memory stays flat however many events go in.

Metrics: per-sensor mean occupancy (fraction of pixels hit) and mean hit charge (average over images of an
image's mean ADC over its hit pixels, as in the reference), the per-image occupancy distribution (200 bins
over [0, 0.02] plus overflow, as published), the hit-charge spectrum (counts per ADC value, per layer, and the
per-event counts above :data:`TAIL_CUTS`), cluster size and cluster charge of 8-neighbour clusters per layer
(:func:`clusters`), each sensor's hit-density profiles along u and v, hit maps per layer, and the 40 x 40
correlation matrix of per-event sensor occupancies. Each sample also keeps its even and odd events apart, so
that :mod:`.checks` can tell what chance allows at its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR

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
            "mean_cluster_size": hist_mean(self.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1)),
            "mean_cluster_charge": hist_mean(self.cluster_charge_counts, _cluster_charge_centres()),
            "profile_u_per_sensor": self.profile_u.sum(axis=0).tolist(),
            "profile_v_per_sensor": self.profile_v.sum(axis=0).tolist(),
            "correlation": np.nan_to_num(self.correlation()).tolist(),
        }


def _cluster_charge_centres() -> np.ndarray:
    return (np.arange(N_CLUSTER_CHARGE_BINS) + 0.5) * CLUSTER_CHARGE_BIN


def hist_mean(counts: np.ndarray, centres: np.ndarray) -> float:
    """The mean of a histogram (``counts`` at bin ``centres``); NaN when it is empty."""
    total = counts.sum()
    return float((counts * centres).sum() / total) if total else float("nan")
