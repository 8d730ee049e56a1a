"""The parametric model against the reference figures of simulated Belle II background (250 events)."""

from __future__ import annotations

import numpy as np
import pytest

from pxdbg import models
from pxdbg.models import parametric
from pxdbg.shared.geometry import LAYER_OF_INDEX, PIXELS_PER_SENSOR
from pxdbg.validate.metrics import roughness_resolution, spectrum_roughness

N_EVENTS = 250


@pytest.fixture(scope="module")
def sample():
    m = models.load("parametric")
    frames = m.frames(20261127, range(N_EVENTS))
    occ = np.array([f.sensor_counts() for f in frames]) / PIXELS_PER_SENSOR  # (events, 40)
    return frames, occ, parametric.reference_figures()


def test_per_sensor_occupancy_within_10_percent(sample):
    _, occ, ref = sample
    rel = occ.mean(axis=0) / np.asarray(ref["mean_occupancy_per_sensor"]) - 1
    assert np.all(np.abs(rel) < 0.10), rel
    # the phi modulation survives: on layer 2 sensor 1 is above sensor 2 on average
    assert occ.mean(axis=0)[16::2].mean() > occ.mean(axis=0)[17::2].mean()


@pytest.mark.parametrize(("layer", "mean", "std"), [(1, 0.01489, 0.00157), (2, 0.00512, 0.00081)])
def test_layer_occupancy_and_spread(sample, layer, mean, std):
    _, occ, _ = sample
    images = occ[:, LAYER_OF_INDEX == layer]
    assert abs(images.mean() / mean - 1) < 0.05
    assert abs(images.std() / std - 1) < 0.25
    # the event-to-event spread is far above Poisson noise: check the within-sensor part alone
    within = np.sqrt(np.mean(images.var(axis=0)))
    clusters = images.mean() * PIXELS_PER_SENSOR / 2.5
    assert within / images.mean() > 2 * np.sqrt(1 / clusters)


@pytest.mark.parametrize(("layer", "ref_mean"), [(1, 21.0), (2, 22.7)])
def test_hit_charge_spectrum(sample, layer, ref_mean):
    frames, _, _ = sample
    charge = np.concatenate([f.charge[LAYER_OF_INDEX[f.sensor] == layer] for f in frames]).astype(float)
    assert charge.min() >= 7, "the reference is zero-suppressed at 7 ADC"
    assert abs(charge.mean() / ref_mean - 1) < 0.10
    assert 15 <= np.median(charge) <= 19
    assert 31 <= np.percentile(charge, 90) <= 39
    hist = np.bincount(charge.astype(int), minlength=256)
    assert hist[7] == hist[7:].max(), "the most frequent value sits at the threshold"


@pytest.mark.parametrize("layer", [1, 2])
def test_charge_tail_follows_the_reference(sample, layer):
    """The share of hits at or above 100, 150, 200 and 250 ADC within 20 % of the reference's (both layers pooled:
    the figures have no per-layer spectrum), beyond what the sample's own counts allow; and no spikes: the
    spectrum's bin-to-bin roughness over 100..200 ADC, less its Poisson noise, no larger than the reference's
    beyond what the sample's counts can resolve."""
    frames, _, ref = sample
    charge = np.concatenate([f.charge[LAYER_OF_INDEX[f.sensor] == layer] for f in frames])
    hist = np.bincount(charge, minlength=256)
    ref_hist = np.zeros(256)
    ref_hist[7:] = ref["adc_histogram_counts_7_to_255"]
    for cut in (100, 150, 200, 250):
        share, ref_share = hist[cut:].sum() / hist.sum(), ref_hist[cut:].sum() / ref_hist.sum()
        expected = ref_share * hist.sum()
        allowed = 0.20 + 3 / np.sqrt(expected)  # at 250 ADC a few dozen hits: their Poisson noise adds
        assert abs(share / ref_share - 1) < allowed, (cut, share, ref_share)
    assert spectrum_roughness(hist) <= spectrum_roughness(ref_hist) + roughness_resolution(hist)
    # the old model's quantile library gave each sensor a few hundred charge values: empty bins between spikes
    assert np.all(hist[100:231] > 0)
    # the measure has teeth: every other bin 30 % higher is a comb of spikes
    comb = hist.astype(float)
    comb[100:201:2] *= 1.3
    assert spectrum_roughness(comb) > spectrum_roughness(ref_hist) + roughness_resolution(hist)


def test_per_sensor_mean_hit_charge_within_3_percent(sample):
    """Each sensor's mean hit charge (average over images of the image's mean) follows the reference's 40-sensor
    pattern: layer 2 above layer 1, and on layer 2 sensor 1 above sensor 2."""
    frames, _, ref = sample
    sums = np.zeros(40)
    images = np.zeros(40)
    for f in frames:
        n = f.sensor_counts()
        q = np.bincount(f.sensor, weights=f.charge, minlength=40)
        sums[n > 0] += q[n > 0] / n[n > 0]
        images += n > 0
    mean = sums / images
    target = np.asarray(ref["mean_hit_adc_per_sensor"])
    rel = mean / target - 1
    assert np.all(np.abs(rel) < 0.03), rel
    assert np.corrcoef(mean, target)[0, 1] > 0.95
    assert mean[LAYER_OF_INDEX == 2].mean() > mean[LAYER_OF_INDEX == 1].mean() + 1.0
    assert np.all(mean[16::2] > mean[17::2])


def test_fit_is_plain_tables():
    """The model's numbers are buffers of fixed shapes (any calibrated payload loads into the same Model), and the
    shipped library's charge quantiles cover [0, 1] evenly, so each sensor's spectrum is reproduced exactly."""
    m = parametric.fit()
    state = m.state_dict()
    assert all(not t.requires_grad for t in state.values())
    assert state["library_offsets"].shape == (40, parametric.LIBRARY, parametric.MAX_CLUSTER, 2)
    codes = state["library_charge"][0].numpy()
    q = np.sort((codes[codes > 0] - 0.5) / parametric.CODE_MAX)
    expected = (np.arange(q.size) + 0.5) / q.size
    assert np.max(np.abs(q - expected)) < 1.0 / parametric.CODE_MAX + 1e-9
    # the seed pixel (listed first) carries the cluster's largest charge
    assert np.all(codes[:, 0] == codes.max(axis=1))
    for name in ("adc_cdf", "density_cdf", "library_cdf"):
        cdf = state[name].numpy()
        assert np.all(np.diff(cdf, axis=1) >= 0) and np.all(cdf[:, -1] == 1.0), name


def test_clusters_are_neighbouring_pixels(sample):
    frames, _, _ = sample
    f = frames[0]
    dense = f.to_dense()[0] > 0
    # most hit pixels have a hit neighbour (8-neighbourhood), unlike uniform random hits at this occupancy
    padded = np.pad(dense, 1)
    neighbours = sum(
        np.roll(np.roll(padded, du, 0), dv, 1) for du in (-1, 0, 1) for dv in (-1, 0, 1) if (du, dv) != (0, 0)
    )[1:-1, 1:-1]
    share = (neighbours[dense] > 0).mean()
    assert share > 0.5, share


def test_frames_reproducible_and_distinct():
    m = models.load("parametric")
    a = m.frames(5, [3, 4])
    assert a[0] == m.frames(5, [3])[0] and a[1] == m.frames(5, [4])[0]
    assert a[0] != a[1]
    for f in a:
        f.validate()
