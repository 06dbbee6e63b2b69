"""Forecast metrics (``mtpp.forecast.horizon``) on hand-made cases with known answers, and calibration under a
known process."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mtpp.data.sequence import EventSequence
from mtpp.data.synthetic import HawkesParams, simulate_hawkes_many
from mtpp.errors import MtppError
from mtpp.forecast.horizon import (
    OTD,
    TMAP,
    CountCalibration,
    NextEventMetrics,
    _match,
    average_precision,
    count_pit_bounds,
    evaluate_horizon,
    otd_distance,
    prediction_points,
)
from mtpp.forecast.process import HawkesProcess, PoissonProcess

pytestmark = pytest.mark.usefixtures("one_thread")


def test_next_event_metrics_by_hand() -> None:
    m = NextEventMetrics(level=0.8)
    lp = np.log([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    m.update(lp, [0, 0, 0], median=[1.0, 2.0, 3.0], lower=[0.5, 0.5, 0.5], upper=[2.0, 2.0, 2.0],
             observed_gap=[1.5, 2.5, 1.0])
    out = m.compute()
    assert out["next_points"] == 3
    assert out["next_accuracy"] == pytest.approx(2 / 3)  # argmax 0, 1, 0 vs truth 0, 0, 0
    assert out["next_nll_mark"] == pytest.approx(-(math.log(0.7) + math.log(0.2) + math.log(0.6)) / 3)
    assert out["next_mae"] == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    assert out["next_interval_coverage"] == pytest.approx(2 / 3)  # 2.5 is outside [0.5, 2]
    assert out["next_interval_width"] == pytest.approx(1.5)
    assert math.isnan(NextEventMetrics().compute()["next_accuracy"])  # nothing seen: NaN, not 0


def test_average_precision_by_hand() -> None:
    # ranked 0.9 (TP), 0.8 (FP), 0.7 (TP); 3 targets in all: (1 * 1 + 2/3 * 1) / 3
    assert average_precision(np.array([0.7, 0.9, 0.8]), np.array([True, True, False]), 3) == pytest.approx(5 / 9)
    assert average_precision(np.array([0.5]), np.array([True]), 0) == 0.0
    assert average_precision(np.array([0.5, 0.4]), np.array([True, True]), 2) == pytest.approx(1.0)


def test_matching_maximises_pairs_then_scores() -> None:
    # A is near both targets, B only near the first: two pairs (A-T2, B-T1) beat one pair with A's higher score
    assert _match(np.array([1.0, 0.9]), np.array([-0.1, -5.0]), np.array([0.95, 1.2]), 0.3).tolist() == [True, True]
    # two predictions near one target: the higher score wins
    assert _match(np.array([1.0, 1.1]), np.array([-2.0, -0.5]), np.array([1.05]), 0.3).tolist() == [False, True]
    # nothing within the tolerance
    assert _match(np.array([1.0]), np.array([0.0]), np.array([5.0]), 0.3).tolist() == [False]


def test_matching_takes_infinite_scores_as_ranks_at_the_ends() -> None:
    """A forecaster that gives a mark probability 0 (the Poisson baseline's rate of a mark absent from the training
    split) scores it -inf: the cost matrix held NaN and SciPy raised "matrix contains invalid numeric entries"
    (``mtpp evaluate --horizon`` crashed, writing no horizon metric at all)."""
    inf = np.inf
    # every score -inf: matched by position as any equal scores would be
    assert _match(np.array([1.0, 3.0]), np.array([-inf, -inf]), np.array([1.05]), 0.3).tolist() == [True, False]
    # a finite score beats -inf for the one target both are near; +inf beats any finite one
    assert _match(np.array([1.0, 1.1]), np.array([-inf, -7.0]), np.array([1.05]), 0.3).tolist() == [False, True]
    assert _match(np.array([1.0, 1.1]), np.array([inf, -0.1]), np.array([1.05]), 0.3).tolist() == [True, False]
    with pytest.raises(MtppError, match="NaN"):
        _match(np.array([1.0]), np.array([np.nan]), np.array([1.0]), 0.3)
    # T-mAP of a mark the forecaster never predicts: its target is still found, by the second prediction in the
    # (tied, stable) ranking: AP 1/2 for mark 1 beside mark 0's 1
    m = TMAP(2, [0.5])
    m.update([1.0, 3.0], np.array([[0.0, -inf], [0.0, -inf]]), [1.1, 3.2], [0, 1])
    assert m.compute()["tmap"] == pytest.approx(0.75)


def test_the_poisson_baseline_of_a_mark_absent_from_training_is_scored() -> None:
    """evaluate_horizon with a zero rate for mark 1, which the targets contain: finite T-mAP and OTD, the mark NLL
    infinite (probability 0 of an observed mark: the MLE's honest answer)."""
    rng = np.random.default_rng(0)
    seqs = [EventSequence(np.cumsum(rng.exponential(1.0, 12)), rng.integers(0, 2, 12), None) for _ in range(6)]
    out = evaluate_horizon(lambda hs: PoissonProcess(np.array([1.0, 0.0]), hs), seqs, 3.0, 2, samples=8,
                           max_points=20)
    assert math.isfinite(out["tmap"]) and math.isfinite(out["otd"]) and out["next_nll_mark"] == math.inf


def test_tmap_by_hand() -> None:
    """Predictions p1 = (t 1.0, p = [.9, .1]), p2 = (3.0, [.4, .6]); targets (1.1, mark 0), (5.0, mark 1).
    delta 0.5: mark 0 matches p1 (AP 1), mark 1 nothing (AP 0): mAP 0.5. delta 2: mark 0 -> p1 (AP 1), mark 1 ->
    p2 (|3 - 5| = 2, AP 1): mAP 1. T-mAP = 0.75."""
    m = TMAP(2, [0.5, 2.0])
    m.update([1.0, 3.0], np.log([[0.9, 0.1], [0.4, 0.6]]), [1.1, 5.0], [0, 1])
    out = m.compute()
    assert out["map@0.5"] == pytest.approx(0.5)
    assert out["map@2"] == pytest.approx(1.0)
    assert out["tmap"] == pytest.approx(0.75)


def test_tmap_ranks_across_points_and_counts_unmatched_targets() -> None:
    """Two points, one mark. Point 1: prediction score .9 matched. Point 2: prediction score .8 unmatched and a
    target nobody matches. Ranking .9 (TP), .8 (FP) over 2 targets: AP = 1 * 1/2 = 0.5."""
    m = TMAP(1, [0.1])
    m.update([1.0], np.log([[0.9]]), [1.0], [0])
    m.update([1.0], np.log([[0.8]]), [3.0], [0])
    assert m.compute()["tmap"] == pytest.approx(0.5)
    with pytest.raises(MtppError):
        TMAP(2, [0.0])


def test_otd_by_hand() -> None:
    # same marks: |1 - 1.5| = 0.5, and |2 - 5| = 3 capped at insert + delete = 2: 2.5
    assert otd_distance([1.0, 2.0], [0, 1], [1.5, 5.0], [0, 1], cost=1.0) == pytest.approx(2.5)
    # different marks never match: delete one, insert one
    assert otd_distance([1.0], [0], [1.0], [1], cost=0.7) == pytest.approx(1.4)
    # nothing predicted: insert every target
    assert otd_distance([], [], [1.0, 2.0, 3.0], [0, 0, 0], cost=0.5) == pytest.approx(1.5)
    # the optimal matching crosses: pred (1, a), (2, a) vs true (2.1, a), (1.1, a): 0.1 + 0.1
    assert otd_distance([1.0, 2.0], [0, 0], [2.1, 1.1], [0, 0], cost=5.0) == pytest.approx(0.2)
    m = OTD(1.0)
    m.update([1.0], [0], [1.5], [0])
    m.update([1.0], [0], [1.0], [1])
    assert m.compute()["otd"] == pytest.approx((0.5 + 2.0) / 2)


def test_count_pit_bounds_and_coverage_by_hand() -> None:
    samples = np.array([[0, 1, 1, 2]] * 3)
    lo, hi = count_pit_bounds(samples, np.array([1, 0, 3]))  # the rank among the 4 samples and the observation
    assert lo.tolist() == [0.2, 0.0, 0.8]
    assert hi.tolist() == [0.8, 0.4, 1.0]
    cal = CountCalibration(level=0.8)
    # samples 0..9: the 10 % / 90 % quantiles (inverted CDF) are 0 and 8; the median is 4
    cal.update(np.tile(np.arange(10), (3, 1)), np.array([9, 8, 0]))
    out = cal.compute()
    assert out["count_coverage"] == pytest.approx(2 / 3)
    assert out["count_mae"] == pytest.approx((5 + 4 + 4) / 3)
    assert out["count_mean_pred"] == pytest.approx(4.5)
    pit = np.concatenate(cal.pit)
    assert 9 / 11 <= pit[0] <= 1.0 and 8 / 11 <= pit[1] <= 10 / 11 and 0.0 <= pit[2] <= 2 / 11


@pytest.mark.parametrize("samples", [4, 32])
def test_count_pit_of_a_calibrated_ensemble_is_uniform_for_any_number_of_samples(samples: int) -> None:
    """Observed counts and the S sampled counts from the same law (a perfectly calibrated forecast): the PIT is
    U(0, 1) for every S, also a small one (the empirical CDF's plug-in PIT had atoms at multiples of 1 / S: here
    PCE 0.04-0.05 and KS p = 0 at S = 4, PCE 0.007 and KS p < 1e-9 at S = 32; now PCE <= 0.0024, KS p >= 0.08)."""
    rng = np.random.default_rng(7)
    points = 50000
    for lam in (0.7, 6.0):
        cal = CountCalibration(0.9, seed=2)
        cal.update(rng.poisson(lam, (points, samples)), rng.poisson(lam, points))
        pit = np.concatenate(cal.pit)
        assert stats.kstest(pit, "uniform").pvalue > 1e-3
        assert cal.compute()["count_pce"] < 0.004

def test_randomised_count_pit_is_uniform_for_a_calibrated_forecast() -> None:
    """Counts and forecast samples from the same Poisson law: the randomised PIT is uniform (PCE small) although
    the counts are discrete; a forecast with half the mean is detected."""
    rng = np.random.default_rng(0)
    obs = rng.poisson(3.0, 4000)
    good, bad = CountCalibration(0.9, seed=1), CountCalibration(0.9, seed=1)
    good.update(rng.poisson(3.0, (4000, 200)), obs)
    bad.update(rng.poisson(1.5, (4000, 200)), obs)
    g, b = good.compute(), bad.compute()
    assert g["count_pce"] < 0.02 and b["count_pce"] > 0.15
    assert abs(g["count_coverage"] - 0.9) < 0.04  # discrete quantiles: at least the level, a little above
    assert b["count_coverage"] < g["count_coverage"] - 0.05  # Poisson(3) inside [0, 4] (the 1.5 interval): 0.82


def test_prediction_points_keep_only_fully_observed_windows() -> None:
    s = EventSequence(np.array([1.0, 2.0, 3.0, 10.0]), np.array([0, 1, 0, 1]))
    # cut after event i - 1 (i >= 1) needs t_{i-1} + 2 <= 10
    assert prediction_points([s], 2.0) == [(0, 1), (0, 2), (0, 3)]
    assert prediction_points([s], 7.5) == [(0, 1), (0, 2)]
    assert prediction_points([s], 2.0, stride=2) == [(0, 1), (0, 3)]
    assert len(prediction_points([s] * 10, 2.0, max_points=4)) == 4


def test_true_hawkes_is_calibrated_and_beats_poisson() -> None:
    """On data simulated from a Hawkes process, its own forecasts have count PITs near uniform and interval
    coverage near the level; the Poisson baseline with the true mean rates is worse on count calibration."""
    params = HawkesParams(mu=[0.3, 0.2], alpha=[[0.4, 0.1], [0.2, 0.3]], beta=2.0)
    seqs = simulate_hawkes_many(params, 60, 40.0, np.random.default_rng(3))
    seqs = [s for s in seqs if len(s) > 2]
    true = evaluate_horizon(lambda hs: HawkesProcess(params, hs), seqs, 3.0, 2, samples=100, max_points=400)
    pois = evaluate_horizon(lambda hs: PoissonProcess(params.stationary_rate(), hs), seqs, 3.0, 2, samples=100,
                            max_points=400)
    assert true["points"] == 400 and true["truncated_samples"] == 0 and true["truncated_rollouts"] == 0
    assert true["count_pce"] < 0.05, true
    assert abs(true["next_interval_coverage"] - 0.9) < 0.05
    assert abs(true["count_coverage"] - 0.9) < 0.06
    assert pois["count_pce"] > true["count_pce"]
    assert true["next_nll_mark"] < pois["next_nll_mark"]


def test_continuations_cut_at_max_events_are_counted_apart_and_flagged() -> None:
    """A cap below the window's events: the sampled and the rollout cuts are counted separately, each against its
    own total (points x samples, points), and the table marks the metrics computed from them."""
    from mtpp.forecast.horizon import format_horizon

    params = HawkesParams(mu=[0.3, 0.2], alpha=[[0.4, 0.1], [0.2, 0.3]], beta=2.0)
    seqs = [s for s in simulate_hawkes_many(params, 20, 40.0, np.random.default_rng(3)) if len(s) > 2]
    out = evaluate_horizon(lambda hs: HawkesProcess(params, hs), seqs, 3.0, 2, samples=8, max_points=50,
                           max_events=1)
    assert out["points"] == 50 and out["max_events"] == 1 and "truncated_rows" not in out
    # with a cap of 1 a sampled row is cut exactly when it drew an event in the window (count 1, else 0)
    assert out["truncated_samples"] == round(out["count_mean_pred"] * 50 * 8)
    assert 0 < out["truncated_samples"] <= 50 * 8 and 0 < out["truncated_rollouts"] <= 50
    assert out["count_mean_pred"] <= 1.0 < out["count_mean_obs"]  # the capped counts are lower bounds
    table = format_horizon({"model": out, "baselines": {}}, "run test").splitlines()
    row = next(line for line in table if line.startswith("| model |")).strip("| ").split(" | ")
    assert row[4].endswith("*") and row[6].endswith("*") and row[7].endswith("*")  # T-mAP, count PCE, count cov.
    assert not any(cell.endswith("*") for cell in row[1:4] + row[5:6])  # next-event metrics and OTD: no cut
    note = next(line for line in table if line.startswith("* model: "))
    assert (f"{out['truncated_samples']} of 400 sampled continuations cut at --max-events 1 before the horizon: "
            "their event counts are lower bounds (count PCE, count cov.)") in note
    assert f"{out['truncated_rollouts']} of 50 mode rollouts cut at --max-events 1" in note and "(T-mAP)" in note
    uncapped = evaluate_horizon(lambda hs: HawkesProcess(params, hs), seqs, 3.0, 2, samples=8, max_points=50)
    assert uncapped["truncated_samples"] == uncapped["truncated_rollouts"] == 0
    assert "*" not in format_horizon({"model": uncapped}, "run test").split("(at each")[0]
    hours = format_horizon({"model": uncapped}, "run test", "hours")  # a documented unit (taxi): named throughout
    assert hours.startswith("run test: horizon 3 hours, ") and "MAE: |median gap - observed gap|, hours;" in hours
    # what T-mAP and OTD were computed with: their tolerances, number of events and cost, in the data's unit
    assert ("OTD: optimal transport distance between the first 5 predicted and the next 5 observed events, hours, "
            "1.5 per unmatched event (at most 5 x 2 x 1.5);") in hours
    assert "matched within time tolerances 0.06, 0.15, 0.3, 0.6, 1.5 hours (HoTPP), unitless in [0, 1];" in hours


def test_every_key_evaluate_writes_is_described_for_the_report(tmp_path) -> None:
    """``mtpp report --metrics horizon_tmap horizon_otd`` said "`horizon_tmap` = horizon tmap" (no unit, no
    direction, no source): every horizon_* key of a horizon evaluation has its words, unit and direction, the time
    metrics in the dataset's unit, T-mAP and OTD with their source; the horizon itself is recorded."""
    import json

    import pandas as pd

    from mtpp.evaluation import report
    from mtpp.forecast.horizon import HORIZON_PREFIX

    params = HawkesParams(mu=[0.3, 0.2], alpha=[[0.4, 0.1], [0.2, 0.3]], beta=2.0)
    seqs = [s for s in simulate_hawkes_many(params, 10, 20.0, np.random.default_rng(3)) if len(s) > 2]
    out = evaluate_horizon(lambda hs: HawkesProcess(params, hs), seqs, 2.0, 2, samples=4, max_points=10)
    assert out["window"] == 2.0  # the horizon the run was scored at: metrics.json's horizon_window
    keys = [f"{HORIZON_PREFIX}{k}" for k in [*out, "baselines"]]
    for key in keys:
        info = report.metric_info(key)
        assert key in report.METRICS or report.HORIZON_MAP.match(key), key  # not the name's fallback
        assert info.label != key.replace("_", " "), key
    assert report.metric_info("horizon_tmap").better == 1 and "Karpukhin et al. 2024" in report.METRICS[
        "horizon_tmap"].source
    otd = report.metric_info("horizon_otd")
    assert otd.better == -1 and otd.unit == report.TIME_UNIT and "Karpukhin et al. 2024" in otd.source
    assert report.metric_info("horizon_map@0.04").better == 1 and "0.04" in report.metric_info("horizon_map@0.04").label
    for key in ("horizon_next_mae", "horizon_next_interval_width", "horizon_otd_cost", "horizon_window"):
        assert report.metric_info(key).unit == report.TIME_UNIT, key

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data: {name: taxi, split: 0}\ntrain: {seed: 0}\n")
    (run / "metrics.json").write_text(json.dumps({"test": {f"{HORIZON_PREFIX}{k}": v for k, v in out.items()}}))
    df = report.collect_runs(tmp_path / "runs")
    report.write_summary(df, tmp_path / "rep", metrics=["horizon_tmap", "horizon_otd", "horizon_next_mae"])
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "`horizon_tmap` = T-mAP" in md and "↑ higher is better [HoTPP, Karpukhin et al. 2024" in md
    assert "`horizon_otd` = OTD" in md and "(the data's time units) ↓ lower is better" in md
    csv = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("metric")
    assert csv.at["horizon_otd", "unit"] == "hours" and csv.at["horizon_next_mae", "unit"] == "hours"  # taxi's
    assert "Karpukhin" in csv.at["horizon_tmap", "meaning"]


def test_the_report_tabulates_the_baselines_beside_the_models(tmp_path) -> None:
    """``mtpp evaluate --horizon`` scores a Poisson baseline into metrics.json, but ``mtpp report`` dropped it (a
    dict), so the table of horizon metrics could not say whether a model beats "no model". Now each dataset and
    horizon gets a baseline table: mean ± standard error over the (split, seed) replicates, each counted once
    however many models were scored on it."""
    import json

    from mtpp.evaluation import report

    def write(name: str, split: int, horizon: float, tmap: float, base_tmap: float, base_otd: float) -> None:
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"data: {{name: taxi, split: {split}}}\ntrain: {{seed: 0}}\n"
                                         f"model: {{decoder: {name.split('-')[0]}}}\n")
        test = {"horizon_window": horizon, "horizon_tmap": tmap, "horizon_otd": 1.0,
                "horizon_baselines": {"poisson": {"window": horizon, "tmap": base_tmap, "otd": base_otd,
                                                  "tmap_deltas": [0.1]}}}
        (run / "metrics.json").write_text(json.dumps({"test": test}))

    write("lnm-0", 0, 2.0, 0.5, 0.10, 3.0)
    write("thp-0", 0, 2.0, 0.4, 0.10, 3.0)  # the same split: its baseline counts once
    write("lnm-1", 1, 2.0, 0.6, 0.20, 5.0)
    write("thp-9", 0, 4.0, 0.3, 0.05, 7.0)  # another horizon: its own table
    df = report.collect_runs(tmp_path / "runs")
    report.write_summary(df, tmp_path / "rep", metrics=["horizon_tmap", "horizon_otd"])
    md = (tmp_path / "rep" / "summary.md").read_text()
    head = "## taxi: baselines at horizon 2 (hours; splits 0, 1 x seed 0)"
    assert head in md and "## taxi: baselines at horizon 4 (hours; split 0 x seed 0)" in md
    table = md.split(head)[1].split("##")[0]
    assert "| baseline | horizon_tmap | horizon_otd |" in table
    # mean over splits 0 and 1: tmap (0.1 + 0.2) / 2, se = std / sqrt(2) = 0.05; otd (3 + 5) / 2 ± 1
    assert "| poisson | 0.1500 ± 0.0500 | 4.000 ± 1.000 |" in table
    assert "| poisson | 0.0500 ± – | 7.000 ± – |" in md.split("baselines at horizon 4")[1]
    # no horizon metric asked: no baseline table
    report.write_summary(df, tmp_path / "plain", metrics=["nll_time_per_seq"] if "nll_time_per_seq" in df else None)
    assert "baselines at horizon" not in (tmp_path / "plain" / "summary.md").read_text()


def test_the_report_says_which_runs_horizon_metrics_come_from_cut_continuations(tmp_path) -> None:
    """The console table of ``evaluate --horizon`` stars T-mAP when mode rollouts were cut at --max-events, but
    ``mtpp report`` showed (and bolded) the same number as whole: now a line per run under the table says how
    many of how many were cut and which of the asked metrics come from them; none when none was cut or the
    touched metrics are not asked."""
    import json

    from mtpp.evaluation import report

    def write(name: str, rollouts: int, samples: int) -> None:
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("data: {name: taxi, split: 0}\ntrain: {seed: 0}\n"
                                         f"model: {{decoder: {name}}}\n")
        test = {"horizon_window": 2.0, "horizon_points": 50, "horizon_samples": 8, "horizon_max_events": 100,
                "horizon_tmap": 0.3, "horizon_otd": 1.0, "horizon_count_pce": 0.1,
                "horizon_truncated_rollouts": rollouts, "horizon_truncated_samples": samples}
        (run / "metrics.json").write_text(json.dumps({"test": test}))

    write("lnm", 12, 0)
    write("thp", 0, 30)
    write("rmtpp", 0, 0)
    df = report.collect_runs(tmp_path / "runs")
    notes = report.truncation_notes(df, ["horizon_tmap", "horizon_otd", "horizon_count_pce"])
    assert notes == [
        "`lnm`: 12 of 50 mode rollouts cut at --max-events 100 before the horizon, their event counts lower bounds "
        "(computed from them: `horizon_tmap`)",
        "`thp`: 30 of 400 sampled continuations cut at --max-events 100 before the horizon, their event counts "
        "lower bounds (computed from them: `horizon_count_pce`)"]
    assert report.truncation_notes(df, ["horizon_otd"]) == []  # OTD reads neither
    report.write_summary(df, tmp_path / "rep", metrics=["horizon_tmap", "horizon_otd"])
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "**Horizon metrics from continuations cut at `--max-events`**" in md and f"- {notes[0]}" in md
    assert "`thp`:" not in md  # its cut samples touch no asked metric
