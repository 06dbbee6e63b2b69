"""Metrics against hand-computed values, and the accumulator against the pure functions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtpp.data.batch import Batch
from mtpp.evaluation.metrics import (
    MetricAccumulator,
    brier,
    ece,
    mce,
    mrr,
    pce,
    pit_cdf,
    pit_histogram,
    reliability_diagram,
    topk_accuracy,
)
from mtpp.models.base import NLLOutput, Scores

# --------------------------------------------------------------------------------------------------------------
# PCE


def test_pce_is_zero_on_exact_uniform_quantiles() -> None:
    n = 500  # divisible by 50: exactly 10 points in every bin ((j-1)/50, j/50]
    u = (np.arange(1, n + 1) - 0.5) / n
    assert pce(u) == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_array_equal(pit_histogram(u), np.full(50, 10))
    np.testing.assert_allclose(pit_cdf(u), np.arange(1, 51) / 50)


def test_pce_of_a_point_mass_by_hand() -> None:
    # All PIT values at 0.001 (in the first bin): F_hat(j/50) = 1 for every j, so
    # PCE = (1/50) sum_j (1 - j/50) = 1 - (51/2)/50 = 0.49.
    assert pce(np.full(100, 0.001)) == pytest.approx(0.49)


def test_pce_of_a_skewed_sample_by_hand() -> None:
    # Half the mass at 0.01 (bin 1), half at 0.99 (bin 50): F_hat(j/50) = 0.5 for j < 50, 1 at j = 50.
    # PCE = (1/50) * sum_{j=1..49} |0.5 - j/50| = (1/50) * (2 * sum_{m=1..24} m/50) = (1/50) * (600/50) = 0.24.
    u = np.r_[np.full(7, 0.01), np.full(7, 0.99)]
    expected = sum(abs(0.5 - j / 50) for j in range(1, 50)) / 50
    assert expected == pytest.approx(0.24)
    assert pce(u) == pytest.approx(expected)


def test_pit_bins_include_their_upper_edge() -> None:
    # The convention F_hat(j/50) = share of u <= j/50: a value exactly at 1/50 counts in the first bin.
    counts = pit_histogram(torch.tensor([0.0, 1 / 50, 1 / 50 + 1e-9, 1.0], dtype=torch.float64))
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1 and counts.sum() == 4


# --------------------------------------------------------------------------------------------------------------
# Marks: ECE, MCE, Brier, top-k, MRR


def test_ece_and_mce_by_hand() -> None:
    probs = np.array(
        [
            [0.95, 0.05, 0.00],  # conf .95 -> bin (0.9, 1], correct
            [0.92, 0.08, 0.00],  # conf .92 -> bin (0.9, 1], wrong
            [0.30, 0.65, 0.05],  # conf .65 -> bin (0.6, 0.7], correct
            [0.62, 0.30, 0.08],  # conf .62 -> bin (0.6, 0.7], correct
            [0.40, 0.35, 0.25],  # conf .40 -> bin (0.3, 0.4] (0.4 is the upper edge), wrong
        ]
    )
    labels = np.array([0, 1, 1, 0, 2])
    # bin (0.9,1]: n=2, acc .5, conf .935 -> |.435|; bin (0.6,0.7]: n=2, acc 1, conf .635 -> .365;
    # bin (0.3,0.4]: n=1, acc 0, conf .4 -> .4.
    expected_ece = 2 / 5 * 0.435 + 2 / 5 * 0.365 + 1 / 5 * 0.4
    assert ece(probs, labels) == pytest.approx(expected_ece)
    assert mce(probs, labels) == pytest.approx(0.435)
    diagram = reliability_diagram(probs, labels)
    np.testing.assert_array_equal(diagram["count"], [0, 0, 0, 1, 0, 0, 2, 0, 0, 2])
    assert diagram["confidence"][9] == pytest.approx(0.935)
    assert diagram["accuracy"][6] == pytest.approx(1.0)
    assert np.isnan(diagram["accuracy"][0])
    # The same from (top-class probability, correctness).
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    assert ece(conf, correct) == pytest.approx(expected_ece)


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    # 10 predictions at confidence 0.8, 8 of them right.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert mce(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_brier_by_hand() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    # row 1: .3^2 + .2^2 + .1^2 = .14 ; row 2: .1^2 + .9^2 + .8^2 = 1.46 ; mean = .8
    assert brier(probs, labels) == pytest.approx(0.8)


def test_topk_and_mrr_on_a_hand_made_ranking() -> None:
    scores = torch.tensor(
        [
            [0.5, 0.3, 0.1, 0.05, 0.05],  # true 0 -> rank 1
            [0.5, 0.3, 0.1, 0.06, 0.04],  # true 2 -> rank 3
            [0.1, 0.2, 0.3, 0.15, 0.25],  # true 0 -> rank 5
            [0.1, 0.6, 0.1, 0.1, 0.1],  # true 1 -> rank 1
        ]
    ).log()
    labels = torch.tensor([0, 2, 0, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(2 / 4)
    assert topk_accuracy(scores, labels, 3) == pytest.approx(3 / 4)
    assert topk_accuracy(scores, labels, 5) == pytest.approx(1.0)
    assert mrr(scores, labels) == pytest.approx((1 + 1 / 3 + 1 / 5 + 1) / 4)


def test_ties_are_broken_uniformly_at_random_in_expectation() -> None:
    # Uniform scores over K = 4: rank uniform on 1..4 -> accuracy 1/4 (chance), top-3 3/4,
    # MRR = (1 + 1/2 + 1/3 + 1/4) / 4.
    scores = torch.zeros(3, 4)
    labels = torch.tensor([0, 2, 3])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(0.25)
    assert topk_accuracy(scores, labels, 3) == pytest.approx(0.75)
    assert mrr(scores, labels) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # One larger score, true tied with one other: rank uniform on {2, 3}.
    s = torch.tensor([[0.4, 0.2, 0.2, 0.2]]).log()
    y = torch.tensor([1])
    assert mrr(s, y) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)  # three tied at 0.2: ranks 2, 3, 4
    assert topk_accuracy(s, y, 2) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------------------------
# Accumulator


def _fake(
    gen: torch.Generator, b: int, l: int, k: int, with_mean: bool = True, skip_first: bool = True
) -> tuple[Scores, Batch]:
    lengths = torch.randint(1, l + 1, (b,), generator=gen)
    lengths[0] = l
    mask = torch.arange(l)[None, :] < lengths[:, None]
    taus = torch.rand(b, l, generator=gen, dtype=torch.float64).mul(2.0).where(mask, torch.zeros(()))
    times = taus.cumsum(1).where(mask, torch.zeros(()))
    marks = torch.randint(0, k, (b, l), generator=gen).where(mask, torch.zeros((), dtype=torch.long))
    scored = mask.clone()
    if skip_first:
        scored[:, 0] = False
    time_terms = torch.randn(b, l, generator=gen).where(scored, torch.zeros(()))
    mark_terms = torch.rand(b, l, generator=gen).where(scored, torch.zeros(()))
    survival = torch.rand(b, generator=gen)
    nll = NLLOutput(
        time_nll=time_terms.sum(1) + survival,
        mark_nll=mark_terms.sum(1),
        time_terms=time_terms,
        mark_terms=mark_terms,
        scored=scored,
        survival_term=survival,
    )
    logits = torch.randn(b, l, k, generator=gen) * 2
    logits[0, 1] = 0.0  # an exact tie somewhere
    log_probs = logits.log_softmax(-1)
    log_probs = log_probs.where(mask[..., None], torch.full((), float("nan")))  # garbage in padding
    forecast = (torch.randn(b, l, k, generator=gen) * 1.5).log_softmax(-1)  # another distribution
    forecast = forecast.where(mask[..., None], torch.full((), float("nan")))
    pit = torch.rand(b, l, generator=gen)
    median = torch.rand(b, l, generator=gen)
    mean = torch.rand(b, l, generator=gen) if with_mean else None
    window_end = times.max(1).values
    batch = Batch(
        times=times.float(),
        taus=taus.float(),
        marks=marks,
        mask=mask,
        lengths=lengths,
        window_end=window_end.float(),
        survival_gap=torch.zeros(b),
    )
    scores = Scores(
        nll=nll, pit=pit, mark_log_probs=log_probs, median_tau=median, mean_tau=mean, forecast_mark_log_probs=forecast
    )
    return scores, batch


def _concat(parts: list[tuple[Scores, Batch]]) -> tuple[Scores, Batch]:
    l = max(s.pit.shape[1] for s, _ in parts)

    def pad(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        extra = l - x.shape[1]
        if extra == 0:
            return x
        shape = list(x.shape)
        shape[1] = extra
        return torch.cat([x, torch.full(shape, value, dtype=x.dtype)], 1)

    def cat(fn, value: float = 0.0) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return torch.cat([pad(fn(s, b), value) for s, b in parts])

    nll = NLLOutput(
        time_nll=torch.cat([s.nll.time_nll for s, _ in parts]),
        mark_nll=torch.cat([s.nll.mark_nll for s, _ in parts]),
        time_terms=cat(lambda s, b: s.nll.time_terms),
        mark_terms=cat(lambda s, b: s.nll.mark_terms),
        scored=cat(lambda s, b: s.nll.scored),
        survival_term=torch.cat([s.nll.survival_term for s, _ in parts]),
    )
    scores = Scores(
        nll=nll,
        pit=cat(lambda s, b: s.pit),
        mark_log_probs=cat(lambda s, b: s.mark_log_probs, float("nan")),
        forecast_mark_log_probs=cat(lambda s, b: s.forecast_mark_log_probs, float("nan")),
        median_tau=cat(lambda s, b: s.median_tau),
        mean_tau=cat(lambda s, b: s.mean_tau),
    )
    batch = Batch(
        times=cat(lambda s, b: b.times),
        taus=cat(lambda s, b: b.taus),
        marks=cat(lambda s, b: b.marks),
        mask=cat(lambda s, b: b.mask),
        lengths=torch.cat([b.lengths for _, b in parts]),
        window_end=torch.cat([b.window_end for _, b in parts]),
        survival_gap=torch.cat([b.survival_gap for _, b in parts]),
    )
    return scores, batch


def test_accumulator_matches_pure_functions_and_one_concatenated_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    k = 12
    parts = [_fake(gen, 5, 9, k), _fake(gen, 3, 14, k)]
    two = MetricAccumulator()
    for s, b in parts:
        two.update(s, b)
    m2 = two.compute()

    scores, batch = _concat(parts)
    one = MetricAccumulator()
    one.update(scores, batch)
    m1 = one.compute()
    assert m1.keys() == m2.keys()
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-12, abs=1e-12), key
    a2, a1 = two.arrays(), one.arrays()
    assert a2.keys() == a1.keys()
    for key in a1:  # per key: pytest >= 9.2 refuses approx on dicts of lists
        assert a2[key] == pytest.approx(a1[key]), key

    # Against the pure functions on the scored events of the concatenated batch.
    sel = scores.nll.scored
    lp, y = scores.mark_log_probs[sel].double(), batch.marks[sel]
    n_seq, n_ev = batch.batch_size, int(sel.sum())
    assert m1["num_sequences"] == 8 and m1["num_events"] == n_ev
    total_time = float(scores.nll.time_terms.double().sum() + scores.nll.survival_term.double().sum())
    assert m1["nll_time_per_seq"] == pytest.approx(total_time / n_seq)
    assert m1["nll_time_per_event"] == pytest.approx(total_time / n_ev)
    assert m1["nll_mark_per_seq"] == pytest.approx(float(scores.nll.mark_terms.double().sum()) / n_seq)
    assert m1["nll_mark_per_event"] == pytest.approx(float(scores.nll.mark_terms.double().sum()) / n_ev)
    assert m1["nll_per_seq"] == pytest.approx(m1["nll_time_per_seq"] + m1["nll_mark_per_seq"])
    fp = scores.forecast_mark_log_probs[sel].double()
    assert m1["nll_mark_forecast_per_seq"] == pytest.approx(float(-fp.gather(-1, y[:, None]).sum()) / n_seq)
    assert m1["nll_mark_forecast_per_event"] == pytest.approx(float(-fp.gather(-1, y[:, None]).sum()) / n_ev)
    for kind, lpk in (("given_time", lp), ("forecast", fp)):
        assert m1[f"accuracy_{kind}"] == pytest.approx(topk_accuracy(lpk, y, 1))
        for kk in (3, 5, 10):
            assert m1[f"top{kk}_accuracy_{kind}"] == pytest.approx(topk_accuracy(lpk, y, kk))
        assert m1[f"mrr_{kind}"] == pytest.approx(mrr(lpk, y))
        assert m1[f"brier_{kind}"] == pytest.approx(brier(lpk.exp(), y))
        assert m1[f"ece_{kind}"] == pytest.approx(ece(lpk.exp(), y))
        assert m1[f"mce_{kind}"] == pytest.approx(mce(lpk.exp(), y))
    assert m1["accuracy_forecast"] != m1["accuracy_given_time"]  # the two kinds are kept apart
    assert m1["pce"] == pytest.approx(pce(scores.pit[sel]))
    err = (scores.median_tau[sel].double() - batch.taus[sel].double()).abs()
    assert m1["mae_tau"] == pytest.approx(float(err.mean()))
    assert m1["rmse_tau"] == pytest.approx(float(err.pow(2).mean().sqrt()))
    assert scores.mean_tau is not None
    err_mean = (scores.mean_tau[sel].double() - batch.taus[sel].double()).abs()
    assert m1["mae_tau_mean"] == pytest.approx(float(err_mean.mean()))
    for key, value in m1.items():
        assert math.isfinite(value), key

    arrays = one.arrays()
    assert sum(arrays["pit_counts"]) == n_ev and len(arrays["pit_cdf"]) == 50
    assert arrays["pit_cdf"][-1] == pytest.approx(1.0)
    for kind in ("given_time", "forecast"):
        assert sum(arrays[f"reliability_count_{kind}"]) == n_ev and len(arrays[f"reliability_edges_{kind}"]) == 11


@pytest.mark.parametrize("k, reported", [(2, ()), (4, (3,)), (6, (3, 5)), (11, (3, 5, 10))])
def test_topk_accuracies_stop_below_the_number_of_marks(k: int, reported: tuple[int, ...]) -> None:
    """With k >= K marks every event is in the top k (accuracy 1 whatever the model): not reported; K is."""
    gen = torch.Generator().manual_seed(3)
    parts = [_fake(gen, 3, 7, k), _fake(gen, 2, 5, k)]
    acc = MetricAccumulator()
    for s, b in parts:
        acc.update(s, b)
    m = acc.compute()
    assert m["num_marks"] == k
    lp = {"given_time": torch.cat([s.mark_log_probs[s.nll.scored] for s, _ in parts]).double(),
          "forecast": torch.cat([s.forecast_mark_log_probs[s.nll.scored] for s, _ in parts]).double()}
    y = torch.cat([b.marks[s.nll.scored] for s, b in parts])
    for kind in ("given_time", "forecast"):
        shown = sorted(int(n[3:].split("_")[0]) for n in m if n.startswith("top") and n.endswith(kind))
        assert shown == list(reported), kind
        assert m[f"accuracy_{kind}"] == pytest.approx(topk_accuracy(lp[kind], y, 1))
        for kk in reported:  # those kept are the pure function's values
            assert m[f"top{kk}_accuracy_{kind}"] == pytest.approx(topk_accuracy(lp[kind], y, kk))
    merged = MetricAccumulator().merge(MetricAccumulator()).merge(acc).compute()  # K survives a merge
    assert merged["num_marks"] == k and merged.keys() == m.keys()


def test_accumulator_merge_and_missing_means() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update(*_fake(gen, 4, 6, 5))
    b.update(*_fake(gen, 4, 6, 5, with_mean=False))
    merged = MetricAccumulator().merge(a).merge(b).compute()
    assert merged["num_sequences"] == 8
    assert "mae_tau_mean" not in merged  # not every batch had a mean
    assert "mae_tau_mean" in a.compute()
    with pytest.raises(ValueError):
        MetricAccumulator().compute()


# --------------------------------------------------------------------------------------------------------------
# PIT under the true generating process


def _pce_null_quantile(n: int, q: float = 0.99, reps: int = 2000, seed: int = 0) -> float:
    """The ``q`` quantile of the PCE of ``n`` i.i.d. uniform PIT values (its sampling distribution)."""
    rng = np.random.default_rng(seed)
    u = rng.random((reps, n))
    grid = np.arange(1, 51) / 50
    cdf = (u[:, :, None] <= grid).mean(1)
    return float(np.quantile(np.abs(cdf - grid).mean(1), q))


def test_pce_sampling_bound_rejects_a_miscalibrated_sample() -> None:
    n = 400
    bound = _pce_null_quantile(n)
    rng = np.random.default_rng(5)
    assert pce(rng.random(n)) < bound
    assert pce(rng.random(n) ** 1.5) > bound  # a model whose times are systematically too short


def test_pit_of_the_true_hawkes_process_is_calibrated() -> None:
    synthetic = pytest.importorskip("mtpp.data.synthetic")
    for name in ("simulate_hawkes", "HawkesParams", "hawkes_compensator"):
        if not hasattr(synthetic, name):
            pytest.skip(f"mtpp.data.synthetic.{name} not available yet")
    params = synthetic.HawkesParams(
        mu=np.array([0.3, 0.2]), alpha=np.array([[0.3, 0.1], [0.2, 0.25]]), beta=1.5
    )
    rng = np.random.default_rng(7)
    seqs = [synthetic.simulate_hawkes(params, 60.0, rng) for _ in range(12)]
    # PIT of event i = 1 - exp(-(Lambda(t_i) - Lambda(t_{i-1}))) under the true ground compensator
    # (time-rescaling theorem: the increments are i.i.d. Exp(1), so the PIT values are i.i.d. U(0, 1)).
    pits = []
    for seq in seqs:
        lam = np.array([synthetic.hawkes_compensator(seq, params, float(t)) for t in seq.times])
        pits.append(-np.expm1(-np.diff(lam, prepend=0.0)))
    u = np.concatenate(pits)
    n = len(u)
    assert n > 300
    bound = _pce_null_quantile(n)
    value = pce(u)
    assert value < bound, (value, bound, n)
    # The same through the accumulator (one batch, every event scored).
    b, l = len(seqs), max(len(s) for s in seqs)
    pit = torch.zeros(b, l, dtype=torch.float64)
    mask = torch.zeros(b, l, dtype=torch.bool)
    for i, p in enumerate(pits):
        pit[i, : len(p)] = torch.from_numpy(p)
        mask[i, : len(p)] = True
    zeros = torch.zeros(b, l, dtype=torch.float64)
    nll = NLLOutput(zeros.sum(1), zeros.sum(1), zeros, zeros, mask, zeros.sum(1))
    scores = Scores(nll=nll, pit=pit, mark_log_probs=torch.zeros(b, l, 2), median_tau=zeros)
    batch = Batch(zeros, zeros, torch.zeros(b, l, dtype=torch.long), mask, mask.sum(1), zeros[:, 0], zeros[:, 0])
    acc = MetricAccumulator()
    acc.update(scores, batch)
    assert acc.compute()["pce"] == pytest.approx(value)
    # A process with the wrong baseline (half the rate) is caught by the same bound.
    wrong = synthetic.HawkesParams(mu=params.mu / 2, alpha=params.alpha, beta=params.beta)
    u_wrong = np.concatenate(
        [
            -np.expm1(-np.diff([synthetic.hawkes_compensator(s, wrong, float(t)) for t in s.times], prepend=0.0))
            for s in seqs
        ]
    )
    assert pce(u_wrong) > bound


def test_every_mark_metric_the_accumulator_reports_has_a_label_saying_which_distribution() -> None:
    """Each ``*_given_time`` / ``*_forecast`` key of ``compute`` has its own entry in the report's metric table,
    whose label says which distribution it scores (top-k, MCE and Brier fell back to names derived from the key,
    'top5 accuracy forecast', with no unit)."""
    from mtpp.evaluation.report import METRICS

    gen = torch.Generator().manual_seed(3)
    acc = MetricAccumulator()
    acc.update(*_fake(gen, 4, 8, 12))
    keys = [k for k in acc.compute() if k.endswith(("_given_time", "_forecast"))]
    assert {"top10_accuracy_forecast", "brier_given_time", "mce_forecast"} <= set(keys)
    for key in keys:
        assert key in METRICS, key
        assert ("given the time" if key.endswith("_given_time") else "forecast") in METRICS[key].label, key


def test_pure_metrics_take_read_only_arrays_without_a_warning() -> None:
    """A pandas column's ``.values`` (copy-on-write) or a memory map is read-only: the metrics read it as it is, with
    no torch ``UserWarning`` about non-writable arrays, and the same values as from a writable copy."""
    import warnings

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    labels = np.array([0, 2, 2, 1])
    pit = np.linspace(0.01, 0.99, 40)
    frozen = [a.copy() for a in (probs, labels, pit)]
    for a in frozen:
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = (ece(frozen[0], frozen[1]), mce(frozen[0], frozen[1]), brier(frozen[0], frozen[1]),
               topk_accuracy(frozen[0], frozen[1], 2), mrr(frozen[0], frozen[1]), pce(frozen[2]))
    assert got == (ece(probs, labels), mce(probs, labels), brier(probs, labels), topk_accuracy(probs, labels, 2),
                   mrr(probs, labels), pce(pit))


def test_pce_of_calibrated_samples_and_its_bounds_are_as_the_calibration_guide_says() -> None:
    """docs/guide/calibration.md: a calibrated model's PCE is about ``0.31 / sqrt(n)`` on ``n`` independent uniform
    PIT values (not 0), and no PIT sample scores above 0.49 (all mass at 0 or at 1)."""
    rng = np.random.default_rng(0)
    for n in (2000, 8000):
        mean = np.mean([pce(rng.uniform(size=n)) for _ in range(200)])
        assert mean == pytest.approx(0.31 / math.sqrt(n), rel=0.1)
    assert pce(np.zeros(100)) == pytest.approx(0.49) and pce(np.ones(100)) == pytest.approx(0.49)
    guide = (Path(__file__).parents[1] / "docs" / "guide" / "calibration.md").read_text(encoding="utf-8")
    assert "`0.31 / √n`" in " ".join(guide.split()) and "at most 0.49" in " ".join(guide.split())
