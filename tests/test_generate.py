"""Generation (``mtpp.forecast.generate``): samplers against closed forms and against each other, sequences sorted
and within the horizon, Hawkes counts against the independent simulator, bounds and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_config
from scipy import stats

from mtpp.data.sequence import EventSequence
from mtpp.data.synthetic import HawkesParams, simulate_hawkes_many
from mtpp.errors import DataError, MtppError
from mtpp.forecast.generate import generate, thinning_gaps
from mtpp.forecast.process import HawkesProcess, ModelProcess, PoissonProcess, fit_poisson
from mtpp.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5
P_MIN = 1e-3  # seeded draws: deterministic; a correct sampler passes with probability 0.999 per seed


def _histories(lengths=(6, 3), seed: int = 0, window: float | None = None) -> list[EventSequence]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.cumsum(rng.exponential(1.0, n))
        out.append(EventSequence(t, rng.integers(0, K, n), None if window is None else float(t[-1] + window)))
    return out


def _model(decoder: str, parametrisation: str = "base", encoder: str = "gru", scale: float = 0.5):
    torch.manual_seed(1)
    m = build_model(tiny_config(encoder=encoder, decoder=decoder, parametrisation=parametrisation,
                                integration="gauss_legendre", integration_nodes=64), K)
    m.time_scale = scale
    return m.eval()


def _first_gaps(g) -> np.ndarray:
    first = g.index == 0
    return g.time[first] - g.origin[g.row[first]]


def _cdf_of(model, history: EventSequence):
    nxt = ModelProcess(model, [history], 1).next_event(torch.tensor([0]))

    def cdf(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return nxt.cdf(torch.as_tensor(x).reshape(1, -1)).reshape(-1).double().numpy()

    return cdf, nxt


# ------------------------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize("decoder,parametrisation", [("lnm", "base"), ("rmtpp", "plus"), ("fnn", "plusplus"),
                                                     ("thp", "base"), ("sahp", "plus")])
def test_inverse_cdf_first_gap_follows_the_model_cdf(decoder: str, parametrisation: str) -> None:
    """KS of 2000 sampled first gaps against the decoder's own closed-form / quadrature CDF (data units)."""
    m = _model(decoder, parametrisation)
    h = _histories((6,))
    g = generate(m, h, events=1, samples=2000, sampler="icdf", seed=3)
    cdf, _ = _cdf_of(m, h[0])
    assert stats.kstest(_first_gaps(g), cdf).pvalue > P_MIN


@pytest.mark.parametrize("decoder,parametrisation", [("thp", "base"), ("sahp", "base"), ("thp", "plusplus"),
                                                     ("sahp", "plus")])
def test_thinning_matches_inverse_cdf_on_the_same_model(decoder: str, parametrisation: str) -> None:
    """Same THP / SAHP model: thinning vs inverse-CDF first gaps (two-sample KS) and marks (chi-square), and
    thinning gaps against the model's CDF (one-sample KS)."""
    m = _model(decoder, parametrisation)
    h = _histories((6,))
    a = generate(m, h, events=1, samples=3000, sampler="icdf", seed=11)
    b = generate(m, h, events=1, samples=3000, sampler="thinning", seed=12)
    cdf, _ = _cdf_of(m, h[0])
    assert stats.ks_2samp(_first_gaps(a), _first_gaps(b)).pvalue > P_MIN
    assert stats.kstest(_first_gaps(b), cdf).pvalue > P_MIN
    table = np.stack([np.bincount(a.mark, minlength=K), np.bincount(b.mark, minlength=K)])
    assert stats.chi2_contingency(table).pvalue > P_MIN
    assert b.info["thinning_rounds"] > 0


def test_thinning_marks_follow_the_forecast_mark_distribution() -> None:
    """Marks of the first generated event ~ p(k | H) = int p(k | tau, H) f(tau) dtau (the model's quadrature)."""
    m = _model("sahp", "plusplus")
    h = _histories((6,))
    g = generate(m, h, events=1, samples=6000, sampler="thinning", seed=5)
    _, nxt = _cdf_of(m, h[0])
    with torch.no_grad():
        p = nxt.forecast_mark_log_probs().exp().double().numpy()[0]
    counts = np.bincount(g.mark, minlength=K)
    assert stats.chisquare(counts, p / p.sum() * counts.sum()).pvalue > P_MIN


def test_poisson_gaps_and_counts_match_closed_forms() -> None:
    """Homogeneous Poisson: gaps Exp(lambda) (KS), counts in the horizon Poisson(lambda T) (chi-square), marks
    with probabilities lambda_k / lambda; for both samplers."""
    rates = np.array([0.5, 1.0, 1.5])
    hs = [EventSequence(np.array([2.0]), np.array([0]))]
    for sampler in ("icdf", "thinning"):
        g = generate(lambda h: PoissonProcess(rates, h), hs, horizon=2.0, samples=4000, sampler=sampler, seed=1)
        gaps = np.diff(np.concatenate([[2.0], g.events_of(0)[0]]))
        assert stats.kstest(gaps, stats.expon(scale=1 / 3.0).cdf).pvalue > P_MIN
        counts = g.counts
        top = 14
        observed = np.bincount(np.minimum(counts, top), minlength=top + 1)
        pmf = stats.poisson(6.0).pmf(np.arange(top))
        expected = np.append(pmf, 1 - pmf.sum()) * counts.size
        assert stats.chisquare(observed, expected).pvalue > P_MIN
        m = np.bincount(g.mark, minlength=3)
        assert stats.chisquare(m, rates / rates.sum() * m.sum()).pvalue > P_MIN


def test_hawkes_thinning_first_gap_matches_the_exact_cdf() -> None:
    """After a burst, the next gap of an exponential Hawkes process has F(tau) = 1 - exp(-Lambda(tau)) with
    Lambda(tau) = tau sum mu + sum_k S_k (1 - e^{-beta tau}) / beta; thinning and inverse CDF both follow it."""
    params = HawkesParams(mu=[0.2, 0.1], alpha=[[0.5, 0.2], [0.1, 0.4]], beta=1.5)
    h = [EventSequence(np.array([0.0, 0.3, 0.4]), np.array([0, 1, 0]))]
    w = np.exp(-1.5 * (0.4 - h[0].times))
    s = (params.alpha * 1.5)[:, h[0].marks] @ w  # excitation [K] at the last event

    def cdf(x):
        return 1 - np.exp(-(x * 0.3 + s.sum() * (1 - np.exp(-1.5 * x)) / 1.5))

    for sampler, seed in (("thinning", 1), ("icdf", 2)):
        g = generate(lambda hs: HawkesProcess(params, hs), h, events=1, samples=4000, sampler=sampler, seed=seed)
        assert stats.kstest(_first_gaps(g), cdf).pvalue > P_MIN


def test_hawkes_count_distribution_matches_the_independent_simulator() -> None:
    """From an empty history, counts on [0, T] and per-mark totals of our generator (thinning and inverse CDF)
    match ``simulate_hawkes_many`` (the synthetic data's Ogata simulator): two-sample chi-square on counts."""
    params = HawkesParams(mu=[0.4, 0.3], alpha=[[0.3, 0.2], [0.2, 0.3]], beta=1.0)
    T, n = 5.0, 3000
    ref = simulate_hawkes_many(params, n, T, np.random.default_rng(0))
    ref_counts = np.array([len(x) for x in ref])
    empty = [EventSequence(np.zeros(0), np.zeros(0, dtype=np.int64))]
    for sampler, seed in (("thinning", 4), ("icdf", 5)):
        g = generate(lambda hs: HawkesProcess(params, hs), empty, horizon=T, samples=n, sampler=sampler, seed=seed)
        top = 12
        table = np.stack([np.bincount(np.minimum(g.counts, top), minlength=top + 1),
                          np.bincount(np.minimum(ref_counts, top), minlength=top + 1)])
        table = table[:, table.sum(0) > 0]
        assert stats.chi2_contingency(table).pvalue > P_MIN, (sampler, table)
        marks = np.stack([np.bincount(g.mark, minlength=2),
                          np.bincount(np.concatenate([x.marks for x in ref]), minlength=2)])
        assert stats.chi2_contingency(marks).pvalue > P_MIN
        assert abs(g.counts.mean() - ref_counts.mean()) < 4 * ref_counts.std() / math.sqrt(n)


# ------------------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("encoder", ["gru", "thp", "sahp", "fnn"])
def test_generated_sequences_are_sorted_within_the_horizon_and_reproducible(encoder: str) -> None:
    m = _model("thp", "plus", encoder=encoder)
    hs = _histories((6, 3, 4))
    g = generate(m, hs, horizon=3.0, samples=5, seed=7)
    assert g.rows == 15 and g.row_sequence.tolist() == np.repeat(np.arange(3), 5).tolist()
    for r in range(g.rows):
        t, k = g.events_of(r)
        origin = hs[g.row_sequence[r]].times[-1]
        assert g.origin[r] == origin
        assert np.all(np.diff(t) >= 0) and np.all(t > origin) and np.all(t <= origin + 3.0)
        assert len(t) == g.counts[r] and np.all((k >= 0) & (k < K))
    again = generate(m, hs, horizon=3.0, samples=5, seed=7)
    assert np.array_equal(g.time, again.time) and np.array_equal(g.mark, again.mark)
    thin = generate(m, hs, horizon=3.0, samples=5, seed=7, sampler="thinning")
    assert np.all(thin.time <= thin.origin[thin.row] + 3.0)


@pytest.mark.parametrize("encoder,decoder,parametrisation,layers", [("gru", "lnm", "base", 1),
                                                                    ("gru", "thp", "plusplus", 2),
                                                                    ("rnn", "sahp", "plus", 1),
                                                                    ("thp", "thp", "base", 2),
                                                                    ("thp", "lnm", "plusplus", 1),
                                                                    ("sahp", "sahp", "base", 1),
                                                                    ("sahp", "rmtpp", "plusplus", 2),
                                                                    ("sahp", "thp", "plus", 1)])
def test_incremental_encoder_state_gives_the_samples_of_re_encoding(encoder, decoder, parametrisation, layers):
    """Carrying the encoder state step by step (GRU / RNN state; THP / SAHP key/value cache) is the same function
    as re-encoding the extended histories: same seed, same events (multi-layer and "++" twin encoders included;
    horizon mode, where rows stop at different steps, and events mode, where every row runs every step)."""
    from mtpp.forecast.process import CachedModelProcess, RecurrentModelProcess, make_model_process

    torch.manual_seed(0)
    m = build_model(tiny_config(encoder=encoder, decoder=decoder, parametrisation=parametrisation, num_layers=layers,
                                integration="gauss_legendre"), K).eval()
    m.time_scale = 0.7
    hs = _histories((5, 9, 3))
    want = RecurrentModelProcess if encoder in ("gru", "rnn") else CachedModelProcess
    assert isinstance(make_model_process(m, hs, 2), want)
    a = generate(m, hs, horizon=4.0, samples=6, seed=3, incremental=True)
    b = generate(m, hs, horizon=4.0, samples=6, seed=3, incremental=False)
    assert a.time.shape == b.time.shape and a.time.size > 20
    np.testing.assert_allclose(a.time, b.time, rtol=1e-6, atol=1e-6)
    assert np.array_equal(a.mark, b.mark)
    c = generate(m, hs, events=6, samples=2, seed=4, sampler="mode")  # the default: incremental
    d = generate(m, hs, events=6, samples=2, seed=4, sampler="mode", incremental=False)
    np.testing.assert_allclose(c.time, d.time, rtol=1e-6, atol=1e-6)
    assert np.array_equal(c.mark, d.mark) and c.time.size == 3 * 2 * 6


@pytest.mark.parametrize("encoder", ("thp", "sahp"))
def test_cached_attention_rollouts_equal_re_encoding_in_float64(encoder: str) -> None:
    """float64 THP / SAHP models: the key/value cache's histories are those of re-encoding to ~1e-12 at every step,
    so the rollouts agree to rounding."""
    torch.manual_seed(2)
    m = build_model(tiny_config(encoder=encoder, decoder="thp", parametrisation="plusplus", num_layers=2,
                                integration="gauss_legendre"), K).double().eval()
    hs = _histories((8, 2, 5), seed=3)
    a = generate(m, hs, events=8, samples=3, seed=5)
    b = generate(m, hs, events=8, samples=3, seed=5, incremental=False)
    assert np.array_equal(a.mark, b.mark) and a.time.size == 3 * 3 * 8
    np.testing.assert_allclose(a.time, b.time, rtol=1e-11, atol=1e-11)


def test_incremental_is_refused_for_the_fnn_encoder() -> None:
    m = _model("lnm", encoder="fnn")
    with pytest.raises(MtppError, match="incremental generation needs"):
        generate(m, _histories(), events=2, incremental=True)
    assert generate(m, _histories(), events=2).time.size == 4  # re-encoding by default


def test_events_mode_and_the_cap_are_reported() -> None:
    m = _model("lnm")
    hs = _histories((4, 2))
    g = generate(m, hs, events=7, samples=3)
    assert g.counts.tolist() == [7] * 6 and not g.truncated.any()
    capped = generate(m, hs, horizon=1e6, samples=2, max_events=5)
    assert capped.counts.tolist() == [5] * 4 and capped.truncated.all()  # never runs forever; says so
    frame = g.to_frame()
    assert list(frame.columns) == ["sequence", "sample", "index", "time", "mark"] and len(frame) == 42


def test_window_end_conditions_the_first_gap() -> None:
    """A history observed up to T_w > t_n continues from T_w: no generated event before it, and the first gap of
    a Poisson process is still Exp(lambda) after T_w (memoryless), for both samplers."""
    hs = [EventSequence(np.array([1.0]), np.array([0]), window_end=4.0)]
    for sampler in ("icdf", "thinning"):
        g = generate(lambda h: PoissonProcess([2.0], h), hs, events=1, samples=3000, sampler=sampler, seed=2)
        assert g.origin.tolist() == [4.0] * 3000
        assert np.all(g.time > 4.0)
        assert stats.kstest(g.time - 4.0, stats.expon(scale=0.5).cdf).pvalue > P_MIN
    m = _model("lnm")
    g = generate(m, _histories((5,), window=2.0), events=1, samples=200)
    assert np.all(g.time > g.origin[g.row])


def test_point_forecast_rollout_is_deterministic_with_scores() -> None:
    m = _model("thp")
    hs = _histories((5,))
    a = generate(m, hs, events=4, sampler="mode", seed=1)
    b = generate(m, hs, events=4, sampler="mode", seed=2)
    assert np.array_equal(a.time, b.time) and a.scores.shape == (4, K)
    assert np.allclose(np.exp(a.scores).sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(a.mark, a.scores.argmax(-1))
    _, nxt = _cdf_of(m, hs[0])
    with torch.no_grad():
        median = float(nxt.icdf(torch.tensor([0.5], dtype=torch.float64)))
    assert a.time[0] - hs[0].times[-1] == pytest.approx(median, rel=1e-5)


def test_bad_requests_are_refused_up_front() -> None:
    m = _model("lnm")
    hs = _histories((4,))
    with pytest.raises(MtppError, match="refused.*GiB"):
        generate(m, hs, events=10_000, samples=100_000)
    with pytest.raises(MtppError, match="exactly one"):
        generate(m, hs, samples=2)
    with pytest.raises(MtppError, match="horizon"):
        generate(m, hs, horizon=-1.0)
    with pytest.raises(MtppError, match="sampler"):
        generate(m, hs, events=1, sampler="ogata")
    with pytest.raises(MtppError, match=r"intensity decoder.*\(sampler='icdf'; mtpp generate --sampler icdf\)"):
        generate(m, hs, events=1, sampler="thinning")  # LNM has no intensity form: the fix named for both routes
    empty = EventSequence(np.zeros(0), np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match="sequence 1: has no events"):
        generate(m, [hs[0], empty], events=1)


def test_small_memory_budget_processes_whole_histories_in_chunks() -> None:
    m = _model("rmtpp")
    hs = _histories((4, 5, 6))
    g = generate(m, hs, events=3, samples=4, max_memory=20_000)  # ~4.3 kB per row: 4 rows a chunk
    assert g.info["chunk_rows"] == 4 and g.rows == 12 and g.counts.tolist() == [3] * 12
    one = generate(m, hs[:1], events=3, samples=10, max_memory=12_000)  # a history's samples split over chunks
    assert one.info["chunk_rows"] < 10 and one.counts.tolist() == [3] * 10
    assert np.bincount(g.row, minlength=12).tolist() == [3] * 12  # every row of every chunk kept its events


def test_cached_attention_rows_are_budgeted_without_per_step_attention_maps() -> None:
    """With the key/value cache a THP / SAHP row holds its keys and values (linear in the events appended), not a
    re-encoding's ``L^2`` maps at every step: the estimate says so and ``generate`` fits more rows per chunk."""
    from mtpp.forecast.generate import estimate_bytes

    m = _model("lnm", encoder="thp")
    per = [estimate_bytes(m, 1, 200, cap, cached=True)[0] for cap in (100, 200, 300)]
    assert per[1] - per[0] == per[2] - per[1]  # linear in the appended events
    assert per[1] < estimate_bytes(m, 1, 200, 200)[0] / 2  # re-encoding: quadratic in 400 positions
    hs = _histories((40, 30, 50))
    a = generate(m, hs, events=100, samples=4, max_memory=1_500_000)
    b = generate(m, hs, events=100, samples=4, max_memory=1_500_000, incremental=False)
    assert a.info["chunk_rows"] == 12 and b.info["chunk_rows"] < 4  # ~0.1 MB vs ~0.6 MB a row
    assert a.counts.tolist() == b.counts.tolist() == [100] * 12  # (other chunks draw other random numbers)


def test_thinning_raises_when_the_bound_is_violated() -> None:
    """A component that is not monotone (a bump) breaks the bound; the check says so instead of sampling wrong."""

    class Bump:
        has_rates = True
        num_marks = 1

        def component_rates(self, tau):
            return (0.1 + 50.0 * torch.exp(-((tau - 1.0) ** 2) / 0.01)).unsqueeze(-1)

    with pytest.raises(MtppError, match="exceeded its bound"):
        thinning_gaps(Bump(), torch.zeros(2000, dtype=torch.float64), torch.full((2000,), 5.0, dtype=torch.float64),
                      torch.Generator().manual_seed(0), window=20.0)


def test_fit_poisson_is_the_mle() -> None:
    seqs = [EventSequence(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 0]), window_end=4.0),
            EventSequence(np.array([0.5, 6.0]), np.array([1, 1]))]
    # events after the first: marks [1, 0] and [1]; time after the first: (4 - 1) + (6 - 0.5) = 8.5
    assert fit_poisson(seqs, 3).tolist() == pytest.approx([1 / 8.5, 2 / 8.5, 0.0])
    shifted = [EventSequence(s.times + 1e9, s.marks, None if s.window_end is None else s.window_end + 1e9)
               for s in seqs]
    assert fit_poisson(shifted, 3).tolist() == pytest.approx([1 / 8.5, 2 / 8.5, 0.0])  # clock origin irrelevant
    with pytest.raises(MtppError, match="Poisson"):
        fit_poisson([EventSequence(np.array([1.0]), np.array([0]))], 3)


def test_the_event_table_holds_each_continuation_together_and_in_order() -> None:
    """``future.csv`` listed events in generation order (every continuation's first event, then every second
    one, ...), so one continuation was scattered over the file; now rows go by sequence, sample, then index, and
    the table holds exactly the generated events."""
    m = _model("lnm")
    hs = _histories((4, 2))
    for g in (generate(m, hs, events=3, samples=2), generate(m, hs, horizon=3.0, samples=3, seed=1),
              generate(lambda h: PoissonProcess([1.0, 2.0], h), hs, horizon=3.0, samples=3, seed=1)):
        frame = g.to_frame()
        keys = frame[["sequence", "sample", "index"]].to_numpy()
        assert len(frame) == g.time.size and np.array_equal(keys, keys[np.lexsort(keys.T[::-1])])
        for r in range(g.rows):
            t, k = g.events_of(r)
            part = frame[(frame["sequence"] == g.row_sequence[r]) & (frame["sample"] == g.row_sample[r])]
            assert part["index"].tolist() == list(range(len(t)))
            assert np.array_equal(part["time"].to_numpy(), t) and np.array_equal(part["mark"].to_numpy(), k)
