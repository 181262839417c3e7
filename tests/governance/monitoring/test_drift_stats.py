"""Drift statistics on deterministic synthetic windows: false alarms and the four shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from governance.monitoring import cusum, stats
from governance.monitoring.drift import TOO_FEW, DriftConfig, evaluate
from tests.governance.monitoring.synth import TAU, Population, draw, reference


def test_psi_is_zero_on_the_reference_and_grows_with_a_shift() -> None:
    assert stats.psi(np.full(10, 0.1), np.full(10, 20)) == pytest.approx(0.0)
    shifted = stats.psi(np.full(10, 0.1), [5, 5, 5, 5, 10, 20, 30, 40, 40, 40])
    # sum((w - r) ln(w / r)) by hand for the first bin: (0.025 - 0.1) ln(0.25)
    assert shifted > 0.25
    assert stats.psi([0.5, 0.5], [1, 3]) == pytest.approx(
        (0.25 - 0.5) * np.log(0.5) + (0.75 - 0.5) * np.log(1.5)
    )


def test_benjamini_hochberg_matches_the_textbook_example() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    adjusted = stats.benjamini_hochberg(p)
    # sorted: 0.005*5/1=0.025, 0.01*5/2=0.025, 0.03*5/3=0.05, 0.04*5/4=0.05, 0.5
    assert adjusted.tolist() == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])


def test_wilson_interval_known_values() -> None:
    low, high = stats.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert stats.wilson_interval(0, 20)[0] == 0.0


def test_chi_squared_pools_sparse_categories_and_uses_raw_counts() -> None:
    names, table = stats.pooled_table({"A": 300, "B": 195, "C": 3, "D": 2}, {"A": 120, "B": 80})
    assert names == ["A", "B", "(other)"]
    assert table.tolist() == [[300, 195, 5], [120, 80, 0]]
    same = stats.chi_squared({"A": 300, "B": 200}, {"A": 120, "B": 80})
    assert same.effect == pytest.approx(0.0) and same.p_value == pytest.approx(1.0)
    # Raw counts, not proportions: the same proportions on 10x the counts give 10x chi2.
    small = stats.chi_squared({"A": 60, "B": 40}, {"A": 40, "B": 60})
    large = stats.chi_squared({"A": 600, "B": 400}, {"A": 400, "B": 600})
    assert large.statistic == pytest.approx(10 * small.statistic)
    assert large.effect == pytest.approx(small.effect)  # Cramer's V does not grow with n


def test_ks_against_the_recorded_quantiles_agrees_with_scipy() -> None:
    rng = np.random.default_rng(3)
    ref = rng.beta(2, 5, 20_000)
    win = rng.beta(2.6, 5, 300)
    x, f = stats.reference_cdf(np.percentile(ref, np.arange(0, 101, 5)).tolist())
    ours = stats.ks_against_cdf(win, x, f, ref.size)
    theirs = sps.ks_2samp(ref, win)
    assert ours.statistic == pytest.approx(theirs.statistic, abs=0.02)


def test_auc_and_bootstrap_interval() -> None:
    assert stats.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    s = np.where(y, rng.normal(1, 1, 400), rng.normal(0, 1, 400))
    point, low, high = stats.auc_bootstrap(s, y, replicates=200)
    assert low < point < high and 0.65 < point < 0.85


def test_cusum_limit_meets_the_in_control_run_length_by_simulation() -> None:
    design = cusum.design(0.2, arl0=150)
    assert design.arl0 >= 150 and design.arl1 < design.arl0 / 3
    rng = np.random.default_rng(1)
    lengths = []
    for _ in range(600):
        alarm = cusum.first_alarm(rng.random(3000) < 0.2, design)
        lengths.append(3000 if alarm is None else alarm + 1)
    assert np.mean(lengths) == pytest.approx(design.arl0, rel=0.15)


def test_cusum_default_is_about_one_alarm_a_year_at_100_a_day() -> None:
    design = cusum.design(0.2)
    assert 36_500 <= design.arl0 < 40_000
    assert 50 < design.arl1 < 200  # studies to detect a doubling of the odds of a flag


def test_twenty_windows_without_drift_raise_at_most_one_alert() -> None:
    rng = np.random.default_rng(2026)
    ref = reference(rng)
    alerts = []
    for _ in range(20):
        report = evaluate(ref, draw(rng, 200).window(), tau=TAU)
        assert report.status == "ok"
        alerts.extend(report.alert_features())
    print(f"false alerts in 20 no-drift windows of 200: {len(alerts)} {alerts}")
    assert len(alerts) <= 1


@pytest.mark.parametrize(
    ("shift", "features"),
    [
        (Population(exposure=0.1), {"img_mean"}),
        (Population(new_manufacturer=0.3), {"manufacturer"}),
        (Population(views=(0.3, 0.2, 0.5)), {"view_position"}),
        (Population(prevalence=0.45), {"score", "flag_rate"}),
    ],
    ids=["exposure", "new-manufacturer", "lateral-views", "prevalence"],
)
def test_each_shift_is_detected_in_the_first_window_and_named(
    shift: Population, features: set[str]
) -> None:
    rng = np.random.default_rng(7)
    ref = reference(rng)
    report = evaluate(ref, draw(rng, 200, shift).window(), tau=TAU)
    named = set(report.alert_features())
    assert features <= named
    unrelated = named - features - {"img_frac_one"}  # brighter images also saturate more
    assert not unrelated


def test_prevalence_rise_trips_the_cusum_with_its_delay_reported() -> None:
    rng = np.random.default_rng(11)
    report = evaluate(reference(rng), draw(rng, 200, Population(prevalence=0.45)).window(), tau=TAU)
    cusum_test = next(t for t in report.alerts if t.test == "cusum")
    assert cusum_test.detail["alarm_at"] < 200
    assert report.cusum["expected_detection_delay"] > 0
    interval, expected = report.flag_rate_interval, report.expected_flag_rate
    assert report.flag_rate is not None and interval is not None and expected is not None
    assert report.flag_rate > interval[0] > expected


def test_a_small_window_says_too_few_studies() -> None:
    rng = np.random.default_rng(5)
    report = evaluate(reference(rng), draw(rng, 40).window(), tau=TAU, config=DriftConfig())
    assert report.status == TOO_FEW and not report.tests and report.flag_rate is None


def test_a_trivial_shift_in_a_huge_window_does_not_alert() -> None:
    rng = np.random.default_rng(9)
    ref = reference(rng, baseline=20_000)
    report = evaluate(ref, draw(rng, 20_000, Population(exposure=0.004)).window(), tau=TAU)
    img = next(t for t in report.tests if t.feature == "img_mean")
    assert img.p_adjusted < 0.01 and not img.alert  # significant, but below the floor of D
