"""parametric: a fast, physics-motivated background model; the embedded default.

What it is: per event and sensor, a number of particle clusters is drawn (Poisson, with a log-normal
event-to-event intensity shared by the whole event and one per image, to give the spread measured in real
background); each cluster is a small shape of neighbouring pixels (1 to 9 pixels, seed pixel carrying the
largest charge); pixel charges follow the measured zero-suppressed hit spectrum (7..255 ADC), and charges of
clusters that overlap add up. Everything is calibrated to the per-sensor occupancies, the per-layer
event-to-event spreads and the hit-charge spectrum of 10,000 events of Geant4-simulated Belle II background
(``pxdbg/shared/data/reference-figures.json``); the calibration is analytic (:func:`fit`) and its numbers
live in the checkpoint like any other model's parameters.

What it is not: not a trained GAN, and no physics beyond these marginals: no correlation between detectors,
no realistic cluster shapes per particle type or incidence angle, no per-layer charge spectra, no hit-map
structure within a sensor (hits are uniform over each sensor). It needs no GPU and generates a frame in a few
milliseconds, which makes it the default for pipelines, tests and demonstrations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from torch import nn

from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR

ADC_MIN = 7  # the reference sample is zero-suppressed at 7 ADC
N_ADC = 256 - ADC_MIN
MAX_CLUSTER = 9

# Cluster shapes (offsets in u, v from the seed pixel, seed first) and their probabilities. Background hits
# are dominated by low-energy particles leaving 1-3 pixels; a tail of larger clusters stands for slow,
# strongly ionising particles and tracks at shallow incidence (elongated along v, the beam direction).
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


def _shape_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.array([p for p, _ in SHAPES], dtype=np.float64)
    offsets = np.zeros((len(SHAPES), MAX_CLUSTER, 2), dtype=np.int64)
    mask = np.zeros((len(SHAPES), MAX_CLUSTER), dtype=bool)
    for t, (_, shape) in enumerate(SHAPES):
        offsets[t, : len(shape)] = shape
        mask[t, : len(shape)] = True
    return probs / probs.sum(), offsets, mask


class Model(nn.Module):
    """The parametric model's parameters, as buffers (so they travel in a plain state_dict)."""

    def __init__(self) -> None:
        super().__init__()
        probs, offsets, mask = _shape_tables()
        #: expected clusters per sensor and event (before the intensity factors), per generator index
        self.register_buffer("clusters_per_sensor", torch.zeros(N_SENSORS, dtype=torch.float64))
        #: log-normal sigma of the event-wide intensity factor and of the per-image factor, per layer (1, 2)
        self.register_buffer("sigma_event", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("sigma_image", torch.zeros(2, dtype=torch.float64))
        #: cumulative distribution of a hit pixel's charge over ADC 7..255
        self.register_buffer("adc_cdf", torch.linspace(0, 1, N_ADC + 1, dtype=torch.float64)[1:])
        self.register_buffer("shape_cdf", torch.from_numpy(np.cumsum(probs)))
        self.register_buffer("shape_offsets", torch.from_numpy(offsets))
        self.register_buffer("shape_mask", torch.from_numpy(mask))
        self._tables: tuple[np.ndarray, ...] | None = None

    def _numpy_tables(self) -> tuple[np.ndarray, ...]:
        # numpy views of the buffers, made once after the state_dict is loaded (generation is numpy code)
        if self._tables is None:
            self._tables = tuple(
                b.detach().cpu().numpy()
                for b in (self.clusters_per_sensor, self.sigma_event, self.sigma_image, self.adc_cdf,
                          self.shape_cdf, self.shape_offsets, self.shape_mask)
            )
        return self._tables

    def _load_from_state_dict(self, *args, **kwargs):  # keep the numpy views in step with the buffers
        self._tables = None
        return super()._load_from_state_dict(*args, **kwargs)

    def sample(self, rng: np.random.Generator) -> SparseFrame:
        """One frame's digits from the random stream ``rng``."""
        clusters, sig_ev, sig_im, adc_cdf, shape_cdf, offsets, mask = self._numpy_tables()
        layer = LAYER_OF_INDEX.astype(np.intp) - 1
        z_event = rng.standard_normal()
        z_image = rng.standard_normal(N_SENSORS)
        s_ev, s_im = sig_ev[layer], sig_im[layer]
        intensity = np.exp(s_ev * z_event - 0.5 * s_ev**2 + s_im * z_image - 0.5 * s_im**2)
        n = rng.poisson(clusters * intensity)
        total = int(n.sum())
        sensor = np.repeat(np.arange(N_SENSORS, dtype=np.int64), n)
        u0 = rng.integers(0, N_U, total)
        v0 = rng.integers(0, N_V, total)
        shape = np.searchsorted(shape_cdf, rng.random(total), side="right").clip(max=len(shape_cdf) - 1)
        in_shape = mask[shape]
        off = offsets[shape]
        u = u0[:, None] + off[..., 0]
        v = v0[:, None] + off[..., 1]
        keep = in_shape & (u >= 0) & (u < N_U) & (v >= 0) & (v < N_V)
        charge = np.zeros(keep.shape, dtype=np.int64)
        charge[in_shape] = np.searchsorted(adc_cdf, rng.random(int(in_shape.sum())), side="right") + ADC_MIN
        # shapes list their seed pixel first: sorting each cluster's charges in descending order gives the
        # seed the largest one (slots outside the shape hold 0 and sort last)
        charge = -np.sort(-charge, axis=1)
        s = np.broadcast_to(sensor[:, None], keep.shape)
        return SparseFrame.from_pixels(s[keep], u[keep], v[keep], charge[keep].clip(max=255))


def generate(model: Model) -> torch.Tensor:
    """One PXD frame, (40, 250, 768) uint8 on the CPU, drawn from torch's global random state."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.from_numpy(model.sample(np.random.default_rng(seed)).to_dense())


def generate_sparse(model: Model, rngs: Sequence[np.random.Generator]) -> list[SparseFrame]:
    """Frames from per-frame random streams, directly in sparse form."""
    return [model.sample(rng) for rng in rngs]


def reference_figures() -> dict:
    """The shipped reference figures of simulated Belle II background."""
    text = resources.files("pxdbg.shared").joinpath("data/reference-figures.json").read_text()
    return json.loads(text)["real"]


def fit(reference: dict | None = None, event_share: float = 0.5) -> Model:
    """Calibrate a :class:`Model` to reference figures (default: the shipped ones), analytically.

    - occupancy: a cluster pixel density rho gives unique-pixel occupancy 1 - exp(-rho) (overlaps merge);
      the expected in-sensor size of each shape accounts for pixels lost over the sensor edge;
    - spread: the within-sensor event-to-event variance (layer std^2 minus the between-sensor std^2) minus the
      compound-Poisson variance of the cluster count is given to the log-normal intensity factors, a share
      ``event_share`` of it to the event-wide factor (shared by all sensors) and the rest per image;
    - charge: the hit spectrum is the reference histogram of ADC 7..255.
    """
    ref = reference or reference_figures()
    model = Model()
    probs, offsets, mask = _shape_tables()
    inside = ((N_U - np.abs(offsets[..., 0])) / N_U) * ((N_V - np.abs(offsets[..., 1])) / N_V)
    size_in = (inside * mask).sum(axis=1)  # expected pixels inside the sensor, per shape
    mean_size = float(probs @ size_in)
    mean_size_sq = float(probs @ size_in**2)

    occ = np.asarray(ref["mean_occupancy_per_sensor"], dtype=np.float64)
    rho = -np.log1p(-occ)
    clusters = rho * PIXELS_PER_SENSOR / mean_size

    sig_ev = np.zeros(2)
    sig_im = np.zeros(2)
    for li, layer in enumerate((1, 2)):
        sel = LAYER_OF_INDEX == layer
        mean = float(ref["occupancy_layer_mean"][str(layer)])
        within = ref["per_image_occupancy_std_layer"][str(layer)] ** 2
        within -= ref["between_sensor_std_of_mean_occupancy_layer"][str(layer)] ** 2
        rel_var = within / mean**2
        poisson_rel_var = mean_size_sq / (float(clusters[sel].mean()) * mean_size**2)
        extra = max(rel_var - poisson_rel_var, 0.0)
        sigma2 = np.log1p(extra)
        sig_ev[li] = np.sqrt(event_share * sigma2)
        sig_im[li] = np.sqrt((1.0 - event_share) * sigma2)

    counts = np.asarray(ref["adc_histogram_counts_7_to_255"], dtype=np.float64)
    cdf = np.cumsum(counts) / counts.sum()
    cdf[-1] = 1.0
    with torch.no_grad():
        model.clusters_per_sensor.copy_(torch.from_numpy(clusters))
        model.sigma_event.copy_(torch.from_numpy(sig_ev))
        model.sigma_image.copy_(torch.from_numpy(sig_im))
        model.adc_cdf.copy_(torch.from_numpy(cdf))
    model._tables = None
    return model
