"""Per-sample metrics, accumulated one frame at a time, and the comparison of two samples: the names callers use.

Three layers, each in its own module:

- :mod:`.sample_metrics`: :class:`SampleMetrics`, a sample's metrics accumulated one frame at a time
  (occupancies, hit-charge spectra, clusters, profiles, correlations), and :func:`clusters`;
- :mod:`.distances`: how far two histograms or spectra are apart (KS, Wasserstein, chi-square,
  Anderson-Darling, roughness), plain functions of count arrays;
- :mod:`.checks`: verdicts (:class:`Check`, :func:`compare`, :func:`tail_checks`) against the shipped
  reference figures (:class:`ReferenceFigures`, fixed :data:`THRESHOLDS`) or against another sample (thresholds
  set by chance from each sample's halves, :data:`CHANCE_THRESHOLDS`).
"""

from __future__ import annotations

from pxdbg.validate.checks import (
    AD_SIGNIFICANCE,
    CHANCE_THRESHOLDS,
    THRESHOLDS,
    Check,
    ReferenceFigures,
    compare,
    reference_figures,
    tail_check,
    tail_checks,
)
from pxdbg.validate.distances import (
    AD_HITS,
    CHI2_MIN_EXPECTED,
    CHI2_SYSTEMATIC,
    anderson_darling,
    chance_distance,
    chi2_spectrum,
    correlation_distance,
    ks_distance,
    ks_distance_rows,
    pattern_correlation,
    rel_diff,
    roughness_resolution,
    spectrum_roughness,
    tail_fraction,
    wasserstein_distance,
)
from pxdbg.validate.sample_metrics import (
    CLUSTER_CHARGE_BIN,
    MAX_CLUSTER_CHARGE,
    MAX_CLUSTER_SIZE,
    N_CLUSTER_CHARGE_BINS,
    OCC_BINS,
    OCC_MAX,
    TAIL_CUTS,
    SampleMetrics,
    clusters,
)

__all__ = [
    "AD_HITS",
    "AD_SIGNIFICANCE",
    "CHANCE_THRESHOLDS",
    "CHI2_MIN_EXPECTED",
    "CHI2_SYSTEMATIC",
    "CLUSTER_CHARGE_BIN",
    "MAX_CLUSTER_CHARGE",
    "MAX_CLUSTER_SIZE",
    "N_CLUSTER_CHARGE_BINS",
    "OCC_BINS",
    "OCC_MAX",
    "TAIL_CUTS",
    "THRESHOLDS",
    "Check",
    "ReferenceFigures",
    "SampleMetrics",
    "anderson_darling",
    "chance_distance",
    "chi2_spectrum",
    "clusters",
    "compare",
    "correlation_distance",
    "ks_distance",
    "ks_distance_rows",
    "pattern_correlation",
    "reference_figures",
    "rel_diff",
    "roughness_resolution",
    "spectrum_roughness",
    "tail_check",
    "tail_checks",
    "tail_fraction",
    "wasserstein_distance",
]
