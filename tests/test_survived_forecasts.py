"""Forecasts after a quiet stretch: a history observed up to a window end ``T > t_n`` is forecast given that no event
came in ``(t_n, T]``, by every sampler and predictor (``MarkedTPP.sample_next`` and ``predict``, ``mtpp.predict``'s
``include_next`` row, ``mtpp.generate``), every decoder: sampled gaps against the conditional CDF
``(F(tau) - F(e)) / (1 - F(e))`` (KS), quantiles against it (exact), the mark forecast against quadrature, the
log-normal mixture's conditional mean against numerical integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_model
from scipy import integrate, stats

import mtpp
from mtpp.data.batch import collate
from mtpp.data.sequence import EventSequence
from mtpp.forecast.process import ModelProcess

pytestmark = pytest.mark.usefixtures("one_thread")

P_MIN = 1e-3  # seeded draws: deterministic; a correct sampler passes with probability 0.999 per seed
QUIET = 1.5  # data units after the last event without an event (the model's median gap is ~0.5 here)
SCALE = 0.5  # model time scale: one model unit is 0.5 data units

MODELS = [("lnm", "base"), ("rmtpp", "base"), ("fnn", "base"), ("thp", "base"), ("sahp", "base"), ("lnm", "plus"),
          ("rmtpp", "plusplus"), ("fnn", "plus"), ("thp", "plusplus"), ("sahp", "plus")]


def _model(decoder: str, parametrisation: str):
    m = tiny_model(decoder, parametrisation, "gru")
    m.time_scale = SCALE
    return m


def _history(quiet: float | None = QUIET) -> EventSequence:
    rng = np.random.default_rng(4)
    t = np.cumsum(rng.exponential(0.5, 7))
    return EventSequence(t, rng.integers(0, 5, 7), None if quiet is None else float(t[-1] + quiet))


def _law(model, history: EventSequence):
    """The model's next-event law after ``history`` (unconditional, data units) and the conditional CDF."""
    nxt = ModelProcess(model, [EventSequence(history.times, history.marks)], 1).next_event(torch.tensor([0]))
    with torch.no_grad():
        f_e = float(nxt.cdf(torch.tensor([[QUIET]], dtype=torch.float64))[0, 0])

    def cond_cdf(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            f = nxt.cdf(torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(1, -1)).reshape(-1).double().numpy()
        return (f - f_e) / (1.0 - f_e)

    return nxt, f_e, cond_cdf


@pytest.mark.parametrize("decoder,parametrisation", MODELS)
def test_sample_next_and_generate_draw_the_gap_given_the_quiet_stretch(decoder: str, parametrisation: str) -> None:
    """``sample_next`` drew 96 % of its gaps inside the stretch known to be empty (a trained LNM on windowed
    synthetic_hawkes); now every gap is past it and its conditional PIT is uniform, and its first step has the law
    of ``generate``'s first step (two-sample KS)."""
    m = _model(decoder, parametrisation)
    h = _history()
    n = 2000
    with torch.no_grad():
        tau, mark = m.sample_next(collate([h] * n, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    tau = tau.numpy()
    assert tau.min() >= QUIET
    _, _, cond_cdf = _law(m, h)
    assert stats.kstest(tau, cond_cdf).pvalue > P_MIN
    g = mtpp.generate(m, [h], events=1, samples=n, seed=2)
    assert stats.ks_2samp(tau, g.time - h.times[-1]).pvalue > P_MIN
    table = np.stack([np.bincount(mark.numpy(), minlength=5), np.bincount(g.mark, minlength=5)])
    table = table[:, table.sum(0) > 0]
    assert stats.chi2_contingency(table).pvalue > P_MIN


@pytest.mark.parametrize("decoder,parametrisation", MODELS)
def test_the_forecast_after_the_last_event_is_given_the_quiet_stretch(decoder: str, parametrisation: str) -> None:
    """``predict``'s ``include_next`` row and ``MarkedTPP.predict``'s last position: the quantiles solve
    ``(F(q) - F(e)) / (1 - F(e)) = p`` (they were the unconditional ones, the whole 90 % interval inside the quiet
    stretch), the mark forecast is ``int_e^inf p(k | tau) f(tau) dtau / S(e)`` (quadrature on 4000 conditional
    quantiles); a history without a window keeps the unconditional forecast."""
    m = _model(decoder, parametrisation)
    h = _history()
    frame = mtpp.predict(m, sequences=[h, _history(None)], include_next=True, level=0.8)
    last = frame[frame.observed_gap.isna()].set_index("sequence")
    nxt, f_e, cond_cdf = _law(m, h)
    for col, p in (("lower_gap_80", 0.1), ("median_gap", 0.5), ("upper_gap_80", 0.9)):
        assert cond_cdf(np.array([last.loc[0, col]]))[0] == pytest.approx(p, abs=1e-6)
        with torch.no_grad():
            plain = float(nxt.icdf(torch.tensor([p], dtype=torch.float64))[0])
        assert last.loc[1, col] == pytest.approx(plain, rel=1e-9)  # no window: unchanged
    u = f_e + (1.0 - f_e) * (np.arange(4000) + 0.5) / 4000
    with torch.no_grad():
        taus = nxt.icdf(torch.as_tensor(u).reshape(1, -1))
        want = nxt.mark_log_probs(taus)[0].exp().double().numpy().mean(0)
    got = np.zeros(5)
    top = last.loc[0]
    for j in range(1, 6):
        got[int(top[f"mark_{j}"])] = top[f"prob_{j}"]
    np.testing.assert_allclose(got, want, atol=2e-3)
    with torch.no_grad():
        out = m.predict(collate([h], dtype=torch.float64), top_k=5)
    n = len(h)
    assert float(out["median_tau"][0, n]) == pytest.approx(last.loc[0, "median_gap"], rel=1e-9)
    np.testing.assert_allclose(out["mark_log_probs"][0, n].exp().numpy(), got, atol=1e-9)


def test_the_conditional_mean_of_the_log_normal_mixture() -> None:
    """``E[tau | tau > e]`` of the mixture (``mean_gap`` of the row after a quiet stretch) against ``e + int_e^inf
    S(t) / S(e) dt`` (scipy quad); ``e = 0`` gives the mean."""
    m = _model("lnm", "base")
    h = _history()
    nxt, _, _ = _law(m, h)
    frame = mtpp.predict(m, sequences=[h], include_next=True)
    got = float(frame[frame.observed_gap.isna()]["mean_gap"].iloc[0])

    def survival(t: float) -> float:
        with torch.no_grad():
            return float(nxt.log_survival(torch.tensor([[t]], dtype=torch.float64)).exp()[0, 0])

    want = QUIET + integrate.quad(survival, QUIET, np.inf, limit=200)[0] / survival(QUIET)
    assert got == pytest.approx(want, rel=1e-6)
    with torch.no_grad():
        dist = m.next_time_distribution(m.histories(collate([h], dtype=torch.float64))[0])
    np.testing.assert_allclose(dist.mean_above(torch.zeros(dist.batch_shape, dtype=torch.float64)).numpy(),
                               dist.mean().numpy(), rtol=1e-12)
