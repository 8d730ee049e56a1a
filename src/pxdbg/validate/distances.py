"""How far two histograms or spectra are apart: plain functions of count arrays, with no verdicts.

KS and Wasserstein distances of binned distributions (row by row for many at once), relative differences,
correlation distances of matrices and patterns, the distance expected by chance from each sample's halves
(:func:`chance_distance`), and the tail-sensitive statistics of hit-charge spectra a KS distance cannot see:
the share of hits above a cut, a chi-square of the binned spectrum with merged sparse tail bins, a k-sample
Anderson-Darling test on a fixed number of drawn hits, and the bin-to-bin roughness of a spectrum.
"""

from __future__ import annotations

import numpy as np


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


CHI2_SYSTEMATIC = 0.05  # relative per-bin allowance of the chi-square: a model is not asked to be exact
CHI2_MIN_EXPECTED = 5.0  # tail bins are merged until the reference expects this many sample hits
AD_HITS = 20_000  # hits drawn from each spectrum for the Anderson-Darling test


def tail_fraction(counts: np.ndarray, cut: int) -> tuple[float, float]:
    """Share of hits at or above ``cut`` ADC and its binomial standard deviation."""
    n = float(counts.sum())
    if n == 0:
        return float("nan"), float("nan")
    f = float(counts[cut:].sum()) / n
    return f, float(np.sqrt(f * (1.0 - f) / n))


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
