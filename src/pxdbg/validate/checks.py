"""Verdicts: a sample's metrics against the shipped reference figures or against another sample.

Verdicts against the reference figures use fixed thresholds (:data:`THRESHOLDS`). The spectrum's tail has
checks of its own, because a KS distance cannot see it: the share of hits above each cut per layer (20 %, or
three standard deviations where the counts cannot tell 20 %), a chi-square of the binned spectrum and a
k-sample Anderson-Darling test (:func:`tail_checks`). Against another sample, the structure checks (clusters,
profiles, correlations) are held to what chance allows at the two samples' sizes: each sample is split into its
even and odd events, two independent samples of the same source, and their distance sets the threshold
(:data:`CHANCE_THRESHOLDS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from pxdbg.shared.geometry import LAYER_OF_INDEX, sensor_name
from pxdbg.validate.distances import (
    AD_HITS,
    CHI2_SYSTEMATIC,
    anderson_darling,
    chance_distance,
    chi2_spectrum,
    correlation_distance,
    ks_distance,
    ks_distance_rows,
    pattern_correlation,
    rel_diff,
    tail_fraction,
)
from pxdbg.validate.sample_metrics import MAX_CLUSTER_SIZE, TAIL_CUTS, SampleMetrics, hist_mean

AD_SIGNIFICANCE = 0.001  # below it the Anderson-Darling test fails


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
    s_mean = hist_mean(sample.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1))
    r_mean = hist_mean(ref.cluster_size_counts, np.arange(MAX_CLUSTER_SIZE + 1))
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
