"""parametric: a fast, physics-motivated background model; the embedded default.

What it is: per event and sensor, a number of particle clusters is drawn (Poisson, with a log-normal
intensity whose logarithm follows a low-rank factor model across the 40 sensors, so sensors fluctuate together
the way they do in real background); each cluster is taken from a per-sensor library of cluster shapes, each
shape carrying its pixels' offsets from the seed pixel and how the charge is shared among them (the rank of
each pixel's charge, as a quantile); the cluster's seed pixel is placed according to a per-sensor hit density
over (u, v); pixel charges come from the sensor's own hit-charge spectrum (1..255 ADC) at a quantile drawn
within the library pixel's stratum, and charges of clusters that overlap add up.

Two ways to set its numbers, both stored in the checkpoint like any other model's parameters:

- :func:`fit` (the shipped payload): analytic, from the published figures of 10,000 events of
  Geant4-simulated Belle II background (``pxdbg/shared/data/reference-figures.json``): per-sensor occupancy,
  per-layer event-to-event spread, per-sensor mean hit charge and the hit-charge spectrum (each sensor's spectrum
  is the measured one less what overlapping clusters add, its body below 100 ADC exponentially tilted to the
  sensor's mean, its tail as measured). The figures say nothing about shapes, hit maps or correlations, so the
  shipped model has a fixed table of small cluster shapes, uniform hit density and one event-wide factor.
- ``pxdbg calibrate`` (:mod:`pxdbg.calibrate`): learned from a background sample: everything above per
  sensor, including the shape library sampled from the sample's own clusters, a smoothed hit density and the
  factor model of log-occupancies.

What it is not: not a trained GAN, and no physics beyond what it learns: clusters are independent given the
event's intensities, and a shape does not depend on where on the sensor it lands (beyond the sensor). It needs
no GPU and generates a frame in about ten milliseconds, which makes it the default for pipelines, tests and
demonstrations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR

if TYPE_CHECKING:
    import torch

ADC_MIN = 1  # the spectrum table covers 1..255 ADC; a zero-suppressed sample has no weight below its threshold
N_ADC = 256 - ADC_MIN
MAX_CLUSTER = 16  # pixels per library shape
LIBRARY = 256  # library shapes per sensor
N_FACTORS = 4  # common factors of the log-intensities
CELL_U, CELL_V = 10, 16  # hit-density grid cell, in pixels
GRID_U, GRID_V = N_U // CELL_U, N_V // CELL_V
N_CELLS = GRID_U * GRID_V
TAIL_FROM = 100  # ADC: spectra are reshaped below it; at and above it they keep their measured share and shape
CLIP_FROM = 245  # ADC: the top of the spectrum, next to the 255 ADC clipping bin that overlap sums fill
CODE_MAX = 32767  # library charge quantile q is stored as code in 1..CODE_MAX, q = (code - 0.5) / CODE_MAX
assert GRID_U * CELL_U == N_U and GRID_V * CELL_V == N_V

# The shipped model's cluster shapes (offsets in u, v from the seed pixel, seed first) and their
# probabilities. Background hits are dominated by low-energy particles leaving 1-3 pixels; a tail of larger
# clusters stands for slow, strongly ionising particles and tracks at shallow incidence (elongated along v).
SHAPES: tuple[tuple[float, tuple[tuple[int, int], ...]], ...] = (
    (0.34, ((0, 0),)),
    (0.10, ((0, 0), (0, 1))),
    (0.10, ((0, 0), (1, 0))),
    (0.05, ((0, 0), (1, 1))),
    (0.05, ((0, 0), (1, -1))),
    (0.06, ((0, 0), (0, 1), (1, 0))),
    (0.05, ((0, 0), (0, 1), (1, 1))),
    (0.04, ((0, 0), (0, -1), (0, 1))),
    (0.03, ((0, 0), (-1, 0), (1, 0))),
    (0.06, ((0, 0), (0, 1), (1, 0), (1, 1))),
    (0.03, ((0, 0), (0, -1), (0, 1), (0, 2))),
    (0.04, ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2))),
    (0.02, ((0, 0), (0, -1), (0, 1), (0, -2), (0, 2), (1, 0))),
    (0.03, ((0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))),
)


class GuidedCdf:
    """Per-sensor inverse-CDF sampling with a guide table (Chen and Asau): row s's cumulative distribution
    ``cdf[s]`` (non-decreasing, ending at 1) and, for each of ``guide`` equal slices of [0, 1), the first index
    whose CDF exceeds the slice's start. A draw starts there and steps forward past the few entries left, so it
    costs one or two table reads instead of a binary search through scattered memory; the result is exactly the
    first index with cdf > r (``searchsorted(cdf[s], r, side="right")``)."""

    def __init__(self, cdf: np.ndarray, guide: int) -> None:
        cdf = np.asarray(cdf, dtype=np.float64)
        self.width = cdf.shape[1]
        self.guide = guide
        self.flat = cdf.ravel()
        starts = np.arange(guide) / guide
        rows = [np.searchsorted(row, starts, side="right") for row in cdf]
        self.table = (
            np.minimum(np.stack(rows), self.width - 1) + self.width * np.arange(cdf.shape[0])[:, None]
        ).ravel()

    def __call__(self, sensor: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Index into row ``sensor`` for each uniform ``r`` in [0, 1)."""
        idx = self.table[sensor * self.guide + (r * self.guide).astype(np.intp)]
        pending = np.flatnonzero(self.flat[idx] <= r)
        while pending.size:  # the last entry of a row is 1 > r: a draw never leaves its row
            idx[pending] += 1
            pending = pending[self.flat[idx[pending]] <= r[pending]]
        return idx - sensor * self.width


#: The model's parameters: name -> (shape, dtype, initial value). They travel in a plain state_dict as buffers
#: of :class:`Model` (a torch module), and are read without torch by :class:`Sampler`, which generates.
BUFFERS: dict[str, tuple[tuple[int, ...], str, float]] = {
    #: expected clusters per sensor and event at unit intensity, per generator index
    "clusters_per_sensor": ((N_SENSORS,), "float64", 0.0),
    #: factor loadings of the log-intensity: log I_s = loadings[s] . z + sigma_image[s] * eps_s (+ const)
    "loadings": ((N_SENSORS, N_FACTORS), "float64", 0.0),
    "sigma_image": ((N_SENSORS,), "float64", 0.0),
    #: per-sensor cumulative distribution of a hit pixel's charge over ADC 1..255
    "adc_cdf": ((N_SENSORS, N_ADC), "float64", 1.0),
    #: per-sensor cumulative distribution of a cluster's seed-pixel cell on the GRID_U x GRID_V grid
    "density_cdf": ((N_SENSORS, N_CELLS), "float32", 1.0),
    #: per-sensor cumulative probability of each library shape
    "library_cdf": ((N_SENSORS, LIBRARY), "float64", 1.0),
    #: library shapes: pixel offsets (du, dv) from the seed pixel, and charge quantile codes (0 = no pixel)
    "library_offsets": ((N_SENSORS, LIBRARY, MAX_CLUSTER, 2), "int8", 0.0),
    "library_charge": ((N_SENSORS, LIBRARY, MAX_CLUSTER), "int16", 0.0),
}


class Sampler:
    """The model's generation, plain numpy: frames from the parameters in :data:`BUFFERS` (numpy arrays).

    A producer of this model runs it without importing torch (it starts in a fraction of a second)."""

    def __init__(self, buffers: dict[str, np.ndarray]) -> None:
        b = buffers
        loadings, sigma = b["loadings"], b["sigma_image"]
        self.tables = {
            "clusters": b["clusters_per_sensor"],
            "loadings": loadings,
            "sigma": sigma,
            "log_norm": -0.5 * ((loadings**2).sum(axis=1) + sigma**2),  # unit mean intensity
            "adc": GuidedCdf(b["adc_cdf"], 2048),
            "density": GuidedCdf(b["density_cdf"], 4 * N_CELLS),
            "library": GuidedCdf(b["library_cdf"], 4 * LIBRARY),
        }
        # the library's pixels laid out flat, shape after shape, so a frame touches only real pixels
        codes = b["library_charge"].reshape(N_SENSORS * LIBRARY, MAX_CLUSTER).astype(np.int64)
        present = codes > 0
        offsets = b["library_offsets"].reshape(N_SENSORS * LIBRARY, MAX_CLUSTER, 2).astype(np.int64)
        sizes = present.sum(axis=1)
        q_lo, q_hi = quantile_strata(codes, present)
        self.tables.update(
            size=sizes,
            start=np.cumsum(sizes) - sizes,
            du=offsets[..., 0][present],
            dv=offsets[..., 1][present],
            q_lo=q_lo,
            q_width=q_hi - q_lo,
        )

    def sample(self, rng: np.random.Generator) -> SparseFrame:
        """One frame's digits from the random stream ``rng``."""
        t = self.tables
        z = rng.standard_normal(N_FACTORS)
        eps = rng.standard_normal(N_SENSORS)
        intensity = np.exp(t["loadings"] @ z + t["sigma"] * eps + t["log_norm"])
        n = rng.poisson(t["clusters"] * intensity)
        total = int(n.sum())
        sensor = np.repeat(np.arange(N_SENSORS, dtype=np.int64), n)
        cell = t["density"](sensor, rng.random(total))
        cu, cv = np.divmod(cell, GRID_V)
        u0 = cu * CELL_U + rng.integers(0, CELL_U, total)
        v0 = cv * CELL_V + rng.integers(0, CELL_V, total)
        row = sensor * LIBRARY + t["library"](sensor, rng.random(total))
        size = t["size"][row]
        cluster = np.repeat(np.arange(total), size)  # the cluster of each pixel
        first = np.cumsum(size) - size
        pix = t["start"][row][cluster] + np.arange(cluster.size) - first[cluster]
        u = u0[cluster] + t["du"][pix]
        v = v0[cluster] + t["dv"][pix]
        keep = (u >= 0) & (u < N_U) & (v >= 0) & (v < N_V)
        s = sensor[cluster][keep]
        p = pix[keep]
        # a fresh quantile within the pixel's stratum each time: a fixed quantile per library pixel would give
        # each sensor only its few hundred charge values, a spiky spectrum with no tail beyond its top stratum
        q = t["q_lo"][p] + t["q_width"][p] * rng.random(p.size)
        charge = t["adc"](s, q) + ADC_MIN
        return SparseFrame.from_pixels(s, u[keep], v[keep], charge)


def quantile_strata(codes: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per library pixel (flat, in ``present`` order): the stratum [lo, hi) of [0, 1) its quantile code stands
    for, bounded by the midpoints to the neighbouring codes of the same sensor (0 and 1 at the ends).

    ``codes`` is (sensors * LIBRARY, MAX_CLUSTER). The strata of one sensor tile [0, 1), each about as wide as
    the share of draws its pixel gets, so a quantile drawn uniformly within the stratum is uniform over [0, 1).
    """
    rows = np.broadcast_to(np.arange(codes.shape[0])[:, None] // LIBRARY, codes.shape)[present]
    q = (codes[present] - 0.5) / CODE_MAX
    lo = np.empty_like(q)
    hi = np.empty_like(q)
    for s in np.unique(rows):
        mine = rows == s
        values = np.unique(q[mine])
        edges = np.concatenate([[0.0], 0.5 * (values[1:] + values[:-1]), [1.0]])
        k = np.searchsorted(values, q[mine])
        lo[mine], hi[mine] = edges[k], edges[k + 1]
    return lo, hi


def _model_class():
    """:class:`Model`, built on first use: importing this module does not import torch."""
    import torch
    from torch import nn

    class Model(nn.Module):
        """The parametric model's parameters, as buffers (so they travel in a plain state_dict)."""

        def __init__(self) -> None:
            super().__init__()
            for name, (shape, dtype, value) in BUFFERS.items():
                self.register_buffer(name, torch.full(shape, value, dtype=getattr(torch, dtype)))
            self._sampler: Sampler | None = None

        def _load_from_state_dict(self, *args, **kwargs):  # keep the numpy tables in step with the buffers
            self._sampler = None
            return super()._load_from_state_dict(*args, **kwargs)

        def sample(self, rng: np.random.Generator) -> SparseFrame:
            """One frame's digits from the random stream ``rng``."""
            if self._sampler is None:  # numpy forms of the buffers, made once after the state_dict is loaded
                self._sampler = Sampler({name: t.detach().cpu().numpy() for name, t in self.named_buffers()})
            return self._sampler.sample(rng)

    Model.__module__ = __name__
    Model.__qualname__ = "Model"
    return Model


def __getattr__(name: str):
    if name == "Model":  # a torch module: made when first asked for (calibration, payload checks, tests)
        global Model
        Model = _model_class()
        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_model() -> Model:
    """A :class:`Model` with its initial buffers (imports torch)."""
    return __getattr__("Model")()


def generate(model: Model | Sampler) -> torch.Tensor:
    """One PXD frame, (40, 250, 768) uint8 on the CPU, drawn from torch's global random state."""
    import torch

    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.from_numpy(model.sample(np.random.default_rng(seed)).to_dense())


def generate_sparse(model: Model | Sampler, rngs: Sequence[np.random.Generator]) -> list[SparseFrame]:
    """Frames from per-frame random streams, directly in sparse form."""
    return [model.sample(rng) for rng in rngs]


def reference_figures() -> dict:
    """The shipped reference figures of simulated Belle II background."""
    text = resources.files("pxdbg.shared").joinpath("data/reference-figures.json").read_text()
    return json.loads(text)["real"]


# -- calibration helpers, shared by fit() and pxdbg calibrate ---------------------------------------------------
def stratified_codes(charges: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Quantile codes for library pixels with these ``charges`` (any order) and selection ``weights``.

    Each pixel gets its weighted mid-rank among all of the sensor's library pixels (ties in random order), so
    the library's charge quantiles cover [0, 1] evenly: drawn through the sensor's spectrum they reproduce that
    spectrum exactly, while the ranks keep how the charge is shared within each shape.
    """
    order = np.lexsort((rng.random(charges.size), charges))
    w = weights[order]
    mid = (np.cumsum(w) - 0.5 * w) / w.sum()
    codes = np.empty(charges.size, np.int64)
    codes[order] = np.clip(np.rint(mid * CODE_MAX + 0.5), 1, CODE_MAX)
    return codes


def expected_pixels_in_sensor(offsets: np.ndarray, present: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Expected pixels inside the sensor of each library shape of one sensor, for seed pixels placed by
    ``density`` (GRID_U x GRID_V probabilities, uniform within a cell): shapes near an edge lose pixels."""
    du = offsets[..., 0][present]
    dv = offsets[..., 1][present]
    pairs, inverse = np.unique(np.stack([du, dv], axis=1), axis=0, return_inverse=True)

    def inside(n: int, cell: int, d: np.ndarray) -> np.ndarray:  # (cells, len(d)): share of a cell's pixels
        pos = np.arange(n)[:, None] + d[None, :]
        ok = ((pos >= 0) & (pos < n)).reshape(n // cell, cell, d.size)
        return ok.mean(axis=1)

    fu = inside(N_U, CELL_U, pairs[:, 0])
    fv = inside(N_V, CELL_V, pairs[:, 1])
    p_pair = np.einsum("ij,in,jn->n", density.reshape(GRID_U, GRID_V), fu, fv)
    per_pixel = np.zeros(present.shape)
    per_pixel[present] = p_pair[inverse.ravel()]
    return per_pixel.sum(axis=1)


def clusters_for_occupancy(occupancy: np.ndarray, mean_size: np.ndarray) -> np.ndarray:
    """Clusters per sensor and event giving ``occupancy`` when clusters of ``mean_size`` in-sensor pixels land
    independently (overlapping clusters merge: occupancy = 1 - exp(-pixel density))."""
    rho = -np.log1p(-np.clip(occupancy, 0.0, 0.5))
    return np.where(mean_size > 0, rho * PIXELS_PER_SENSOR / np.maximum(mean_size, 1e-12), 0.0)


def tilted_cdf(counts: np.ndarray, target_mean: float, tail_from: int = TAIL_FROM) -> np.ndarray:
    """CDF over ADC 1..255 of the spectrum ``counts`` (index = ADC 0..255) with its mean moved to
    ``target_mean`` while its share of hits at or above ``tail_from`` stays the spectrum's own.

    p(a) ~ counts(a) exp(t g(a) + s h(a)): g = 64 tanh(a / 64) tilts the body and levels off in the tail, h is a
    logistic step 16 ADC wide centred on ``tail_from`` whose weight s holds the tail's share; both are smooth, so
    the spectrum has no kink, and above the step the tail keeps its measured shape. (A tilt over the whole range
    that moves the mean by one ADC changes the share of hits above 200 ADC by a factor of two.) Solved by
    Newton's method on (t, s): the derivatives of an exponential family's moments are its covariances.
    """
    a = np.arange(ADC_MIN, 256, dtype=np.float64)
    p0 = np.asarray(counts[ADC_MIN:], dtype=np.float64)
    p0 = p0 / p0.sum()
    tail = (a >= tail_from).astype(np.float64)
    share = float(p0 @ tail)
    if share == 0 or share == 1 or p0 @ a == target_mean:  # nothing to tilt, or nothing to hold
        return _cdf(p0)
    g = 64.0 * np.tanh(a / 64.0)
    h = 0.5 * (1.0 + np.tanh((a - tail_from) / 8.0))
    theta = np.zeros(2)
    target = np.array([target_mean, share])
    for _ in range(50):
        w = p0 * np.exp(theta[0] * (g - g @ p0) + theta[1] * (h - h @ p0))
        p = w / w.sum()
        stats = np.stack([a, tail])
        params = np.stack([g, h])
        mean_stats = stats @ p
        mean_params = params @ p
        jac = (stats * p) @ params.T - np.outer(mean_stats, mean_params)
        step = np.linalg.solve(jac, target - mean_stats)
        theta += np.clip(step, -0.5, 0.5)
        if np.all(np.abs(target - mean_stats) <= [1e-9 * target_mean, 1e-9 * share]):
            break
    return _cdf(p)


def _cdf(p: np.ndarray) -> np.ndarray:
    """Cumulative sums of ``p`` scaled to end at exactly 1 (never above: a draw must not leave its row)."""
    cdf = np.cumsum(p)
    cdf = np.minimum(cdf / cdf[-1], 1.0)
    cdf[-1] = 1.0
    return cdf


def _with_overlaps(single: np.ndarray, overlap_share: float) -> np.ndarray:
    """Hit-charge probabilities (ADC 0..255) when a share ``overlap_share`` of hit pixels holds two deposits
    drawn from ``single`` whose charges add, clipped at 255 ADC."""
    pair = np.convolve(single, single)
    pair[255] += pair[256:].sum()
    return (1.0 - overlap_share) * single + overlap_share * pair[:256]


def single_deposit_counts(counts: np.ndarray, overlap_share: float, iterations: int = 30) -> np.ndarray:
    """The spectrum of one deposit per pixel (index = ADC 0..255, normalised) that gives ``counts`` once a share
    ``overlap_share`` of the hit pixels holds two deposits whose charges add (clipped at 255 ADC).

    Solved by fixed-point iteration. Where the sums alone give more than ``counts`` (the 255 ADC clipping bin
    of a layer-1 sensor, whose overlaps are three times layer 2's, measured against the two layers' pooled
    spectrum), the single deposits above CLIP_FROM give up what is too much, so the share of hits above
    CLIP_FROM stays the measured one. Without this the sums of overlapping clusters would lift the far tail
    (a third more hits above 250 ADC on layer 1).
    """
    target = np.asarray(counts, dtype=np.float64)
    target = target / target.sum()
    single = target.copy()
    for _ in range(iterations):
        single = np.clip(single + (target - _with_overlaps(single, overlap_share)) / (1.0 - overlap_share), 0, None)
        single /= single.sum()
    excess = _with_overlaps(single, overlap_share)[CLIP_FROM:].sum() - target[CLIP_FROM:].sum()
    top = single[CLIP_FROM:]
    if excess > 0 and top.sum() > 0:
        top *= max(1.0 - excess / ((1.0 - overlap_share) * top.sum()), 0.0)
        single /= single.sum()
    return single


def library_sizes(model: Model) -> np.ndarray:
    """(sensors, LIBRARY) pixels per library shape."""
    return (model.library_charge.numpy() > 0).sum(axis=2)


def poisson_rel_var(model: Model, mean_in_sensor: np.ndarray) -> np.ndarray:
    """Relative variance of a sensor's hit count at fixed intensity (compound Poisson over shape sizes)."""
    w = np.diff(model.library_cdf.numpy(), axis=1, prepend=0.0)
    size = library_sizes(model).astype(np.float64)
    mean_sq = (w * size**2).sum(axis=1)
    clusters = model.clusters_per_sensor.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mean_sq / (clusters * mean_in_sensor**2)
    return np.where(clusters > 0, out, 0.0)


def set_tables(model: Model, **arrays: np.ndarray) -> Model:
    """Copy numpy arrays into the model's buffers of the same names."""
    import torch

    with torch.no_grad():
        for name, value in arrays.items():
            buf = getattr(model, name)
            buf.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(buf.dtype))
    model._sampler = None
    return model


def fit(reference: dict | None = None, event_share: float = 0.5) -> Model:
    """Calibrate a :class:`Model` to reference figures (default: the shipped ones), analytically.

    - shapes: the fixed :data:`SHAPES` table, stratified over each sensor's library; charge ranks random with
      the seed pixel largest; uniform hit density;
    - occupancy: a cluster pixel density rho gives unique-pixel occupancy 1 - exp(-rho) (overlaps merge);
      the expected in-sensor size of each shape accounts for pixels lost over the sensor edge;
    - spread: the within-sensor event-to-event variance (layer std^2 minus the between-sensor std^2) minus the
      compound-Poisson variance of the cluster count is given to the log-normal intensity, a share
      ``event_share`` of it to one event-wide factor (shared by all sensors of a layer) and the rest per image;
    - charge: each sensor's spectrum is the reference histogram less what overlapping clusters add (the pixels
      with two deposits, whose charges sum), its body below TAIL_FROM tilted to the sensor's mean hit charge
      less that charge (a hit pixel holds 1 + rho / 2 deposits on average); the tail keeps its measured share.
    """
    ref = reference or reference_figures()
    model = new_model()
    rng = np.random.default_rng(20261128)
    probs = np.array([p for p, _ in SHAPES], dtype=np.float64)
    which = np.searchsorted(np.cumsum(probs / probs.sum()), (np.arange(LIBRARY) + 0.5) / LIBRARY)
    offsets = np.zeros((LIBRARY, MAX_CLUSTER, 2), np.int8)
    present = np.zeros((LIBRARY, MAX_CLUSTER), bool)
    for j, t in enumerate(which):
        shape = SHAPES[t][1]
        offsets[j, : len(shape)] = shape
        present[j, : len(shape)] = True
    weights = np.full(int(present.sum()), 1.0)
    codes = np.zeros((LIBRARY, MAX_CLUSTER), np.int64)
    codes[present] = stratified_codes(rng.random(weights.size), weights, rng)  # random ranks, stratified values
    codes = -np.sort(-codes, axis=1)  # the seed pixel (listed first) carries the largest charge
    density = np.full(N_CELLS, 1.0 / N_CELLS)
    mean_size = expected_pixels_in_sensor(offsets, present, density).mean()

    occ = np.asarray(ref["mean_occupancy_per_sensor"], dtype=np.float64)
    clusters = clusters_for_occupancy(occ, np.full(N_SENSORS, mean_size))
    set_tables(
        model,
        clusters_per_sensor=clusters,
        density_cdf=np.tile(np.cumsum(density), (N_SENSORS, 1)),
        library_cdf=np.tile((np.arange(LIBRARY) + 1.0) / LIBRARY, (N_SENSORS, 1)),
        library_offsets=np.broadcast_to(offsets, (N_SENSORS, *offsets.shape)),
        library_charge=np.broadcast_to(codes, (N_SENSORS, *codes.shape)),
    )
    noise = poisson_rel_var(model, np.full(N_SENSORS, mean_size))

    loadings = np.zeros((N_SENSORS, N_FACTORS))
    sigma = np.zeros(N_SENSORS)
    for layer in (1, 2):
        sel = LAYER_OF_INDEX == layer
        mean = float(ref["occupancy_layer_mean"][str(layer)])
        within = ref["per_image_occupancy_std_layer"][str(layer)] ** 2
        within -= ref["between_sensor_std_of_mean_occupancy_layer"][str(layer)] ** 2
        extra = max(within / mean**2 - float(noise[sel].mean()), 0.0)
        sigma2 = np.log1p(extra)
        loadings[sel, 0] = np.sqrt(event_share * sigma2)
        sigma[sel] = np.sqrt((1.0 - event_share) * sigma2)

    counts = np.zeros(256)
    counts[7:] = ref["adc_histogram_counts_7_to_255"]
    rho = -np.log1p(-occ)
    target = np.asarray(ref["mean_hit_adc_per_sensor"], dtype=np.float64) / (1.0 + 0.5 * rho)
    # a hit pixel holds Poisson(rho) deposits, at least one: the share with two or more
    overlap = 1.0 - rho * np.exp(-rho) / -np.expm1(-rho)
    adc_cdf = np.stack([tilted_cdf(single_deposit_counts(counts, o), m) for m, o in zip(target, overlap)])
    return set_tables(model, loadings=loadings, sigma_image=sigma, adc_cdf=adc_cdf)
