"""Validation metrics against hand-computed values, and the report's verdicts.

Past 500 lines: one test per metric against its hand-computed value, sharing the same small samples.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pxdbg import models
from pxdbg.shared.digitsfile import write_digits
from pxdbg.shared.frame import SparseFrame
from pxdbg.shared.geometry import LAYER_OF_INDEX
from pxdbg.validate import validate
from pxdbg.validate.metrics import (
    ReferenceFigures,
    SampleMetrics,
    anderson_darling,
    chance_distance,
    chi2_spectrum,
    clusters,
    compare,
    ks_distance,
    ks_distance_rows,
    reference_figures,
    tail_check,
    tail_fraction,
    wasserstein_distance,
)
from pxdbg.validate.samples import SampleError, open_sample

pytestmark = pytest.mark.timeout(240)


def frame_of(pixels):
    """A frame from (sensor, u, v, charge) tuples."""
    s, u, v, c = (np.array(x) for x in zip(*pixels))
    return SparseFrame.from_pixels(s, u, v, c, merge="error")


TWO_CLUSTERS = [
    # sensor 0: an L of three pixels joined through a diagonal -> one cluster, charge 10 + 20 + 30
    (0, 10, 10, 10),
    (0, 10, 11, 20),
    (0, 11, 12, 30),
    # sensor 20: two single pixels two columns apart -> two clusters
    (20, 0, 0, 7),
    (20, 0, 2, 9),
    # sensor 5: end of one row and start of the next are not neighbours (no wrap-around)
    (5, 3, 767, 50),
    (5, 4, 0, 60),
    # sensor 6 and 7: same (u, v) on different sensors are not neighbours
    (6, 100, 100, 8),
    (7, 100, 100, 8),
]


def test_clusters_by_hand():
    f = frame_of(TWO_CLUSTERS)
    labels, sizes, charges = clusters(f)
    assert sorted(sizes.tolist()) == [1, 1, 1, 1, 1, 1, 3]
    assert sorted(charges.tolist()) == [7, 8, 8, 9, 50, 60, 60]
    # digits of sensor 0 share one label
    assert len(set(labels[f.sensor == 0].tolist())) == 1


def test_metrics_by_hand():
    m = SampleMetrics()
    f1 = frame_of(TWO_CLUSTERS)
    f2 = frame_of([(0, 1, 1, 40), (1, 2, 2, 40), (1, 2, 3, 40)])
    m.add(f1)
    m.add(f2)
    occ = m.occupancy_per_sensor()
    assert occ[0] == pytest.approx((3 + 1) / (2 * 192000))
    assert occ[1] == pytest.approx(2 / (2 * 192000))
    assert occ[20] == pytest.approx(2 / (2 * 192000))
    assert occ[39] == 0
    # mean hit ADC per sensor: average over images with hits of the image mean
    adc = m.mean_hit_adc_per_sensor()
    assert adc[0] == pytest.approx(((10 + 20 + 30) / 3 + 40) / 2)
    assert adc[20] == pytest.approx(8.0)
    assert m.adc_counts[40] == 3 and m.adc_counts[8] == 2 and m.adc_counts.sum() == 12
    assert m.cluster_size_counts[1] == 7 and m.cluster_size_counts[2] == 1 and m.cluster_size_counts[3] == 1
    # per-image occupancy histogram: 80 images, all below 0.02 % -> first bin
    assert m.image_occupancy_hist()[0] == 80 and m.image_occupancy_hist().sum() == 80
    assert m.hitmap[0, 10, 11] == 1 and m.hitmap[1, 0, 2] == 1 and m.hitmap.sum() == 12
    s = m.summary()
    assert s["mean_cluster_size"] == pytest.approx((7 * 1 + 2 + 3) / 9)
    json.dumps(s)
    # even and odd events are kept apart: event 0 in half 0, event 1 in half 1
    assert m.profile_u[0, 0, 10] == 2 and m.profile_u[0, 0, 11] == 1 and m.profile_u[1, 0, 1] == 1
    assert m.profile_v[1, 1, 2] == 1 and m.profile_v[1, 1, 3] == 1 and m.profile_v.sum() == 12
    # clusters by half and layer: f1 has on layer 1 a triple and four singles, on layer 2 two singles;
    # f2 a single on sensor 0 and a pair on sensor 1
    assert m.cluster_sizes[0, 0, 1] == 4 and m.cluster_sizes[0, 0, 3] == 1 and m.cluster_sizes[0, 1, 1] == 2
    assert m.cluster_sizes[1, 0, 1] == 1 and m.cluster_sizes[1, 0, 2] == 1 and m.cluster_sizes.sum() == 9
    assert m.cluster_charges[1, 0, 80 // 8] == 1  # the pair on sensor 1: 40 + 40 ADC
    assert m.mean_hit_adc_per_sensor(0)[0] == pytest.approx(20.0)
    assert m.mean_hit_adc_per_sensor(1)[0] == pytest.approx(40.0)


def test_correlation_by_hand():
    m = SampleMetrics()
    for k in (1, 2, 3, 4):
        # sensor 1 has k hits, sensor 2 has 2k, sensor 3 has 5 - k: correlations +1 and -1
        pix = [(1, 0, v, 9) for v in range(k)] + [(2, 0, v, 9) for v in range(2 * k)]
        pix += [(3, 0, v, 9) for v in range(5 - k)]
        m.add(frame_of(pix))
    c = m.correlation()
    assert c[1, 2] == pytest.approx(1.0) and c[1, 3] == pytest.approx(-1.0)


def test_distances_by_hand():
    assert ks_distance(np.array([1, 0, 0]), np.array([0, 0, 1])) == 1.0
    assert ks_distance(np.array([2, 2]), np.array([1, 1])) == 0.0
    assert ks_distance(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])) == pytest.approx(0.5)
    # moving all mass by 3 bins costs 3
    assert wasserstein_distance(np.array([1, 0, 0, 0]), np.array([0, 0, 0, 1])) == pytest.approx(3.0)
    rows = ks_distance_rows(
        np.array([[1, 0, 0], [2, 2, 0], [0, 0, 0], [0, 0, 0]]), np.array([[0, 0, 1], [1, 1, 0], [0, 0, 0], [3, 0, 0]])
    )
    assert rows.tolist() == [1.0, 0.0, 0.0, 1.0]  # the last: one empty, one not
    # halves of a sample of n events lie sqrt(4 / n) apart; two samples of n and m events sqrt(1/n + 1/m)
    assert chance_distance(np.sqrt(4 / 100), np.sqrt(4 / 400)) == pytest.approx(np.sqrt(1 / 100 + 1 / 400))


@pytest.fixture(scope="module")
def parametric_sample():
    m = SampleMetrics(name="parametric")
    frames = models.load("parametric").frames(99, range(120))
    for f in frames:
        m.add(f)
    return m, frames


def test_parametric_passes_against_the_reference(parametric_sample):
    checks = compare(parametric_sample[0], ReferenceFigures(reference_figures()))
    verdicts = {c.metric: c.verdict for c in checks}
    assert "FAIL" not in verdicts.values(), [c.line() for c in checks]
    assert list(verdicts.values()).count("PASS") == 21


def _failed(checks):
    return [c.metric for c in checks if c.verdict == "FAIL"]


def test_doubled_charges_are_flagged(parametric_sample):
    doubled = SampleMetrics(name="doubled")
    for f in parametric_sample[1]:
        doubled.add(SparseFrame(f.sensor, f.u, f.v, np.minimum(f.charge.astype(int) * 2, 255).astype(np.uint8)))
    failed = _failed(compare(doubled, ReferenceFigures(reference_figures())))
    assert "hit-charge spectrum" in failed
    assert "mean hit charge (ADC), layer 1" in failed and "mean hit charge (ADC), layer 2" in failed
    assert not any("occupancy" in name for name in failed)
    # and against another sample, the cluster charge fails too
    failed = _failed(compare(doubled, parametric_sample[0]))
    assert "cluster-charge distribution, layer 1" in failed and "cluster-charge distribution, layer 2" in failed
    assert not any("size" in name or "profile" in name or "correlation" in name for name in failed), failed


#: the checks the validation had before it looked at the tails
OLD_CHECKS = ("occupancy", "mean hit charge", "hit-charge spectrum", "cluster", "profile", "correlation")


def test_clipped_tail_fails_the_tail_checks_only(parametric_sample):
    """Charges above 150 ADC clipped to 150: 0.4 % of hits change, so the mean charges and the KS distance
    barely move; the shares above 200 ADC (none left) and the chi-square of the spectrum fail."""
    clipped = SampleMetrics(name="clipped")
    for f in parametric_sample[1]:
        clipped.add(SparseFrame(f.sensor, f.u, f.v, np.minimum(f.charge, 150)))
    checks = compare(clipped, ReferenceFigures(reference_figures()))
    failed = _failed(checks)
    new = [c.metric for c in checks if c.metric.startswith(("share of hits", "hit-charge spectrum, "))]
    old = [c.metric for c in checks if c.metric not in new]
    assert all(any(k in m for k in OLD_CHECKS) for m in old) and len(old) == 14
    assert not [m for m in failed if m in old], failed  # what the validation had could not see it
    assert {"share of hits >= 200 ADC, layer 1", "share of hits >= 200 ADC, layer 2"} <= set(failed)
    assert any(m.startswith("hit-charge spectrum, chi-square") for m in failed), failed
    assert "share of hits >= 150 ADC, layer 1" not in failed  # clipped to 150, not below it
    # the same sample against the unclipped one: the tail checks fail there too
    failed = _failed(compare(clipped, parametric_sample[0]))
    assert "share of hits >= 200 ADC, layer 1" in failed and not [m for m in failed if m in old], failed


def test_tail_figures_by_hand():
    counts = np.zeros(256, np.int64)
    counts[[10, 120, 160, 210]] = [96, 2, 1, 1]
    assert tail_fraction(counts, 150) == pytest.approx((0.02, np.sqrt(0.02 * 0.98 / 100)))
    assert tail_fraction(counts, 250)[0] == 0.0
    # a share 20 % off fails only where the counts can tell: 10,000 expected hits above the cut, not 10
    ref = np.zeros(256)
    ref[[10, 200]] = [9e8, 1e8]
    big = np.zeros(256)
    big[[10, 200]] = [92_000, 8_000]
    assert tail_check("x", big, ref, 150).verdict == "FAIL"
    small = big // 1000
    check = tail_check("x", small, ref, 150)
    assert check.verdict == "PASS" and check.threshold > 0.9
    # hits above a cut that come in bunches: the count's spread over events is wider than binomial
    m = SampleMetrics()
    for k in (0, 4, 0, 4):  # events with 0 or 4 hits at 200 ADC, among 96 at 10 ADC
        m.add(frame_of([(0, 0, v, 200 if v < k else 10) for v in range(100)]))
    assert m.tail_count_sd(1, 150) == pytest.approx(np.sqrt(4 * np.var([0, 4, 0, 4], ddof=1)))
    assert m.tail_count_sd(1, 150) > np.sqrt(400 * 0.02 * 0.98)
    assert "from the events" in tail_check("x", m.adc_counts_layer[0], ref, 150, m.tail_count_sd(1, 150)).spread
    # a spectrum against itself: chi-square zero; a sample drawn from it: at most one per degree of freedom (the
    # per-bin allowance takes some); the same sample 20 % low from 60 ADC on: far above
    chi2, ndf = chi2_spectrum(ref, ref)
    assert chi2 == 0 and ndf == 1
    rng = np.random.default_rng(1)
    spectrum = np.exp(-np.arange(256) / 20.0)
    spectrum[:7] = 0
    drawn = rng.multinomial(10**6, spectrum / spectrum.sum())
    chi2, ndf = chi2_spectrum(drawn, spectrum * 1e9)
    assert 0.2 < chi2 / ndf < 1.2
    low = drawn.copy()
    low[60:] = rng.binomial(low[60:], 0.8)
    chi2, ndf = chi2_spectrum(low, spectrum * 1e9)
    assert chi2 / ndf > 3
    # Anderson-Darling: a sample from the spectrum passes, one shifted by 2 ADC does not
    assert anderson_darling(drawn, spectrum)[1] > 0.01
    assert anderson_darling(np.roll(drawn, 2), spectrum)[1] <= 0.001


def test_report_speaks_detector_language(tmp_path, parametric_sample):
    """Sensors as layer.ladder.sensor, occupancies in percent, unsigned distances with their thresholds, and the
    reference named for what it is."""
    from pxdbg.validate.report import write_report

    sample = parametric_sample[0]
    ref = ReferenceFigures(reference_figures())
    checks = compare(sample, ref)
    report = write_report(sample, ref, checks, tmp_path, {"sample": "s", "reference": "r"}).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    occupancy = next(r for r in rows if r.startswith("| mean occupancy, layer 1 "))
    assert occupancy.count(" %") == 2, occupancy
    assert "sensor index" not in report and "(worst: sensor " in report
    assert "real background" not in report.lower()
    for c in checks:
        if c.distance is not None:
            assert not c.distance_text().split()[-1].startswith(("+", "-")), c.line()
            assert "threshold" in c.line()
    assert ReferenceFigures(reference_figures()).name.startswith("reference (Geant4 simulation")


def test_ratio_and_pull_uncertainties_by_hand():
    from pxdbg.validate.report import block_pull, cluster_variance_factor, ratio_with_sd

    ratio, sd = ratio_with_sd([2.0, 1.0], [0.2, 0.1], [1.0, 0.0], [0.1, 0.1])
    assert ratio[0] == pytest.approx(2.0) and sd[0] == pytest.approx(np.sqrt(0.2**2 + (2 * 0.1) ** 2))
    assert np.isnan(ratio[1]) and np.isnan(sd[1])  # nothing to divide by
    # two single pixels and one pair: 4 hits, sum of k^2 over clusters 1 + 1 + 4 = 6
    assert cluster_variance_factor(np.array([0, 2, 1])) == pytest.approx(6 / 4)
    # 40 hits in 4 images (factor 2) against 10 in 2 (factor 1): rates 10 and 5, variance 2*40/16 + 10/4
    pull = block_pull(np.array([40, 100, 0]), 4, 2.0, np.array([10, 50, 0]), 2, 1.0)
    assert pull[0] == pytest.approx(5 / np.sqrt(7.5))
    assert pull[1] == pytest.approx((25 - 25) / np.sqrt(2 * 100 / 16 + 50 / 4))
    assert np.isnan(pull[2])


def test_pulls_of_clustered_hits_spread_like_chance():
    """Blocks whose hits come in clusters of 1, 2 and 4 pixels (clusters Poisson): the pulls between two samples
    of the same source have sd 1 with the cluster factor, and are wider with plain Poisson."""
    from pxdbg.validate.report import block_pull, cluster_variance_factor

    rng = np.random.default_rng(5)
    sizes, share = np.array([1, 2, 4]), np.array([0.5, 0.3, 0.2])
    clusters_per_image = 3.0

    def block_hits(images):
        # thinning: the clusters of each size are Poisson of their own
        per_size = rng.poisson(clusters_per_image * images * share, size=(20_000, 3))
        return per_size @ sizes, per_size.sum(axis=0)

    (a, size_a), (b, size_b) = block_hits(50), block_hits(80)
    counts_a, counts_b = np.zeros(5), np.zeros(5)
    counts_a[sizes], counts_b[sizes] = size_a, size_b
    factor_a, factor_b = cluster_variance_factor(counts_a), cluster_variance_factor(counts_b)
    expected = (share * sizes**2).sum() / (share * sizes).sum()
    assert factor_a == pytest.approx(expected, rel=0.01) and factor_b == pytest.approx(expected, rel=0.01)
    assert block_pull(a, 50, factor_a, b, 80, factor_b).std() == pytest.approx(1.0, abs=0.03)
    assert block_pull(a, 50, 1.0, b, 80, 1.0).std() == pytest.approx(np.sqrt(expected), rel=0.03)


def _ratio_axes(fig):
    return [ax for ax in fig.axes if ax.get_ylabel() in ("sample / reference", "/ reference")]


def _has_sample_band(ax) -> bool:
    """A filled 1-sigma band of the sample, or error bars, of non-zero height."""
    from matplotlib.collections import PolyCollection
    from matplotlib.container import ErrorbarContainer

    for c in ax.collections:
        if isinstance(c, PolyCollection) and c.get_label() == "sample 1 sd":
            heights = [np.ptp(path.vertices[:, 1]) for path in c.get_paths()]
            if max(heights, default=0) > 0:
                return True
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer) and c.lines[2]:
            segments = c.lines[2][0].get_segments()
            if any(abs(s[1][1] - s[0][1]) > 0 for s in segments):
                return True
    return False


def _errorbar_half_lengths(ax) -> np.ndarray:
    from matplotlib.container import ErrorbarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    return np.array([(s[1][1] - s[0][1]) / 2 for s in bars.lines[2][0].get_segments()])


def test_every_ratio_has_a_statistical_band(parametric_sample):
    """Every ratio panel draws the sample's 1-sigma band or error bars; the layer figures' error bars and the
    hit-map pulls are the hand-computed ones; a ratio without a reference says so instead."""
    import matplotlib.pyplot as plt

    from pxdbg.shared.geometry import N_U, N_V
    from pxdbg.validate.report import draw_figures

    frames = parametric_sample[1]
    sample, ref = metrics_of(frames[0::2], "even"), metrics_of(frames[1::2], "odd")
    seen = set()
    for reference in (ref, ReferenceFigures(reference_figures())):
        for fig, name, _ in draw_figures(sample, reference):
            try:
                seen.add(name)
                texts = [t.get_text() for ax in fig.axes for t in ax.texts]
                for ax in _ratio_axes(fig):
                    no_reference = any(t.get_text() == "no reference figure" for t in ax.texts)
                    assert no_reference or _has_sample_band(ax), (name, ax.get_xlabel())
                if name == "clusters.png":  # the reference figures hold no clusters: no ratio against itself
                    assert texts.count("no reference figure") == (2 if reference is not ref else 0)
                if name == "layers.png":
                    occupancy_ratio = _ratio_axes(fig)[0]
                    layer_sd = []
                    for m in (sample, ref):
                        occ = np.asarray(m.event_occupancy)
                        layer_sd.append(
                            [occ[:, LAYER_OF_INDEX == la].mean(axis=1).std() / np.sqrt(len(occ)) for la in (1, 2)]
                        )
                    if reference is ref:
                        v = np.array([sample.layer_occupancy(la) for la in (1, 2)])
                        r = np.array([ref.layer_occupancy(la) for la in (1, 2)])
                        expected = np.hypot(np.array(layer_sd[0]) / r, v / r * np.array(layer_sd[1]) / r)
                        np.testing.assert_allclose(_errorbar_half_lengths(occupancy_ratio), expected, rtol=1e-6)
                if name == "hitmaps.png" and reference is ref:
                    pulls = [ax for ax in fig.axes if "pull" in ax.get_title()]
                    ratios = [ax for ax in fig.axes if "sample / reference" in ax.get_title()]
                    assert len(pulls) == len(ratios) == 2
                    for la, ax in zip((1, 2), pulls):
                        expected = []
                        for m in (sample, ref):
                            hits = m.hitmap[la - 1][:8, :8].sum()
                            k = np.arange(m.cluster_sizes.shape[-1])
                            per_size = m.cluster_sizes[:, la - 1].sum(axis=0)
                            factor = (per_size * k**2).sum() / (per_size * k).sum()
                            images = m.n_events * int((LAYER_OF_INDEX == la).sum())
                            expected.append((hits / images, factor * hits / images**2))
                        (ra, va), (rb, vb) = expected
                        pull = ax.get_images()[0].get_array()
                        assert pull.shape == (N_U // 8, N_V // 8)
                        assert pull[0, 0] == pytest.approx((ra - rb) / np.sqrt(va + vb))
                        assert 0.5 < np.sqrt(np.nanmean(pull**2)) < 2  # two halves of one sample: chance
            finally:
                plt.close(fig)
    assert {"layers.png", "hitmaps.png", "clusters.png", "profiles.png", "hit_charge.png"} <= seen


def rescaled(frames, factor, seed=0):
    """Frames with each sensor's charges scaled by factor[sensor], rounded at random (the mean scales exactly)."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        c = np.floor(f.charge * factor[f.sensor] + rng.random(f.n_digits)).clip(1, 255).astype(np.uint8)
        out.append(SparseFrame(f.sensor, f.u, f.v, c))
    return out


def metrics_of(frames, name="sample"):
    m = SampleMetrics(name=name)
    for f in frames:
        m.add(f)
    return m


@pytest.mark.slow
def test_per_sensor_charge_against_the_reference(parametric_sample):
    ref = ReferenceFigures(reference_figures())
    checks = {c.metric.split(" (")[0]: c for c in compare(parametric_sample[0], ref)}
    per_sensor, pattern = checks["per-sensor mean hit charge"], checks["per-sensor mean hit charge pattern"]
    assert per_sensor.verdict == "PASS" and abs(per_sensor.distance) < 0.015, per_sensor.line()
    assert pattern.verdict == "PASS" and pattern.value > 0.97, pattern.line()
    # one sensor 6 % too high: the per-sensor check names it, the pattern still holds
    factor = np.ones(40)
    factor[9] = 1.06
    checks = compare(metrics_of(rescaled(parametric_sample[1][:50], factor)), ref)
    assert "per-sensor mean hit charge (worst: sensor 1.5.2)" in _failed(checks)
    assert "per-sensor mean hit charge pattern (40 sensors)" not in _failed(checks)
    # the layer order inverted (layer 1 up 4 %, layer 2 down 4 %): each layer mean within 10 %, yet both fail
    factor = np.where(LAYER_OF_INDEX == 1, 1.04, 0.96)
    failed = _failed(compare(metrics_of(rescaled(parametric_sample[1][:50], factor)), ref))
    assert "per-sensor mean hit charge pattern (40 sensors)" in failed
    assert any(name.startswith("per-sensor mean hit charge (worst") for name in failed)
    assert not any(name.startswith("mean hit charge (ADC)") for name in failed)


@pytest.mark.slow
def test_structure_checks_have_teeth(parametric_sample):
    frames = parametric_sample[1]
    ref = metrics_of(frames[:60], "reference")
    structure = ("cluster-", "profile", "correlation")

    def structure_failures(sample_frames):
        return [n for n in _failed(compare(metrics_of(sample_frames), ref)) if any(k in n for k in structure)]

    assert structure_failures(frames[60:]) == []  # two samples of one model: no structure check fails
    # sensor 3's hits squeezed into the lower half along u
    squeezed = []
    for f in frames[60:]:
        u = np.where(f.sensor == 3, f.u // 2, f.u).astype(np.uint8)
        squeezed.append(SparseFrame.from_pixels(f.sensor, u, f.v, f.charge))
    failed = structure_failures(squeezed)
    assert "per-sensor hit-density profile along u (worst: sensor 1.2.2)" in failed
    assert not any("along v" in n for n in failed)
    # every other event loses the upper half (u >= 125) of all layer-2 sensors: their occupancies move together
    together = []
    for i, f in enumerate(frames[60:]):
        keep = (f.sensor < 16) | (f.u < 125) | (i % 2 == 0)
        together.append(SparseFrame(f.sensor[keep], f.u[keep], f.v[keep], f.charge[keep]))
    assert "sensor-occupancy correlation matrix" in structure_failures(together)


def test_tiny_samples_compare_without_chance_figures(parametric_sample):
    """Three events a side: halves of one or two events give no correlation, so the floor is the threshold."""
    frames = parametric_sample[1]
    checks = {c.metric: c for c in compare(metrics_of(frames[:3]), metrics_of(frames[3:6]))}
    corr = checks["sensor-occupancy correlation matrix"]
    assert np.isnan(corr.chance) and corr.threshold == 0.03 and corr.verdict in ("PASS", "FAIL")
    assert all(c.verdict in ("PASS", "FAIL", "n/a") for c in checks.values())


@pytest.mark.slow  # a sample of its own (~60 s on 2 cores)
def test_empty_sensor_is_flagged(parametric_sample):
    holed = SampleMetrics(name="sensor 7 empty")
    for f in parametric_sample[1]:
        keep = f.sensor != 7
        holed.add(SparseFrame(f.sensor[keep], f.u[keep], f.v[keep], f.charge[keep]))
    checks = compare(holed, ReferenceFigures(reference_figures()))
    worst = checks[0]
    assert worst.verdict == "FAIL" and "sensor 1.4.2" in worst.metric and worst.distance == -1.0
    assert "hit-charge spectrum" not in _failed(checks)


@pytest.mark.slow  # the whole command with its plots (~60 s on 2 cores)
def test_validate_command_writes_report_and_flags_failures(tmp_path, parametric_sample):
    frames = parametric_sample[1][:40]
    good = write_digits(tmp_path / "good.npz", frames, {"model": "parametric"})
    bad_frames = [
        SparseFrame(f.sensor, f.u, f.v, np.minimum(f.charge.astype(int) * 2, 255).astype(np.uint8)) for f in frames
    ]
    bad = write_digits(tmp_path / "bad.npz", bad_frames, {"model": "parametric"})
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pxdbg",
            "validate",
            str(bad),
            "--reference",
            str(good),
            "--out",
            str(out),
            "--strict",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAIL hit-charge spectrum" in proc.stdout
    report = (out / "report.md").read_text()
    assert "verdict: **FAIL**" in report and "![Hit-charge spectrum](hit_charge.png)" in report
    assert "| mean \\|difference\\| " in report  # a bar inside a table cell is escaped
    for png in (
        "occupancy_per_sensor",
        "layers",
        "hit_charge",
        "image_occupancy",
        "clusters",
        "hitmaps",
        "correlation",
        "mean_hit_adc_per_sensor",
        "profiles",
    ):
        assert (out / f"{png}.png").stat().st_size > 1000
    numbers = json.loads((out / "metrics.json").read_text())
    assert numbers["sample"]["events"] == 40 and len(numbers["sample"]["correlation"]) == 40
    checks, _ = validate(str(good), out=tmp_path / "r2")
    assert not _failed(checks)


def test_validate_rejects_unknown_sample(tmp_path):
    with pytest.raises(ValueError, match="neither a digits file"):
        validate("nonsense", out=tmp_path)
    with pytest.raises(SampleError, match="no background sample at"):
        open_sample(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SampleError, match="cannot read digits file"):
        open_sample(tmp_path / "bad.npz")


def test_validate_without_scipy_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['scipy'] = None; from pxdbg.cli import main; "
        f"sys.exit(main(['validate', 'parametric', '--events', '2', '--out', {str(tmp_path)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'pxdbg[validate]'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_root_sample_reads_like_the_digits_file(tmp_path, parametric_sample):
    uproot = pytest.importorskip("uproot")
    from pxdbg.rootio import RootDigitsWriter

    frames = parametric_sample[1][:3]
    with RootDigitsWriter(tmp_path / "s.root", {"model": "parametric"}) as w:
        for f in frames:
            w.append(f)
    sample = open_sample(tmp_path / "s.root")
    got = list(sample.frames())
    assert sample.n_events == 3 and len(got) == 3 and all(a == b for a, b in zip(got, frames))
    with uproot.recreate(tmp_path / "other.root") as f:
        f.mktree("events", {"x": "int32"}).extend({"x": np.arange(3, dtype=np.int32)})
    with pytest.raises(SampleError, match="no TTree with the branches vxd_id, u, v, charge"):
        open_sample(tmp_path / "other.root")


def test_metrics_names_stay_importable_from_one_place():
    """The metrics live in three modules (accumulation, distances, verdicts); callers keep one import path."""
    from pxdbg.validate import checks, distances, metrics, sample_metrics

    assert metrics.SampleMetrics is sample_metrics.SampleMetrics and metrics.clusters is sample_metrics.clusters
    assert metrics.ks_distance is distances.ks_distance and metrics.spectrum_roughness is distances.spectrum_roughness
    assert metrics.compare is checks.compare and metrics.Check is checks.Check
    for name in metrics.__all__:
        assert hasattr(metrics, name), name
