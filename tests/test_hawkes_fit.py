"""The fitted Hawkes baseline's likelihood and fit (``mtpp.forecast.hawkes_fit``): the batch log-likelihood against
a loop over events built from ``mtpp.data.synthetic``, the time-unit equivariance of the fit, recovery of known
parameters, the one-line errors and the non-stationary warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mtpp.data.sequence import EventSequence
from mtpp.data.synthetic import HawkesParams, hawkes_log_likelihood, random_hawkes_params, simulate_hawkes_many
from mtpp.errors import MtppError
from mtpp.forecast import hawkes_fit
from mtpp.forecast.hawkes_fit import fit_hawkes, hawkes_log_likelihood_batch, hawkes_log_likelihood_sequences

pytestmark = pytest.mark.usefixtures("one_thread")


def reference(seq: EventSequence, params: HawkesParams) -> float:
    """The log-likelihood given the first event, by ``mtpp.data.synthetic``'s loop: the sequence shifted to start
    at its first event (window shifted alike), less the first event's own term ``log mu_{k_1}`` (it has no
    history)."""
    if len(seq) == 0:
        return 0.0
    t1 = seq.times[0]
    window = None if seq.window_end is None else seq.window_end - t1
    shifted = EventSequence(seq.times - t1, seq.marks, window)
    return hawkes_log_likelihood(shifted, params) - float(np.log(params.mu[seq.marks[0]]))


def strict_reference(seq: EventSequence, params: HawkesParams) -> float:
    """The same log-likelihood by a direct loop over events, the history strictly before each event (``t_j < t_i``:
    simultaneous events do not excite each other); equal to :func:`reference` on sequences without ties."""
    if len(seq) == 0:
        return 0.0
    t, m, b = seq.times, seq.marks, float(params.beta)
    end = seq.window_end if seq.window_end is not None else t[-1]
    ll = 0.0
    for i in range(1, len(t)):
        past = t[:i] < t[i]
        ll += np.log(params.mu[m[i]] + (params.alpha[m[i], m[:i][past]] * b * np.exp(-b * (t[i] - t[:i][past]))).sum())
    return ll - ((end - t[0]) * params.mu.sum() + (params.alpha[:, m].sum(0) * -np.expm1(-b * (end - t))).sum())


def _mixed_sequences(params: HawkesParams, rng: np.random.Generator) -> list[EventSequence]:
    """Simulated sequences (windowed or not, clocks from 0 or from 1e4) plus lengths 0, 1, 2 and ties."""
    seqs = simulate_hawkes_many(params, 12, 15.0, rng)
    out = []
    for i, s in enumerate(seqs):
        offset = 1e4 if i % 2 else 0.0
        out.append(EventSequence(s.times + offset, s.marks, s.window_end + offset if i % 3 else None))
    k = params.num_marks
    out += [
        EventSequence(np.zeros(0), np.zeros(0, dtype=np.int64)),
        EventSequence(np.zeros(0), np.zeros(0, dtype=np.int64), 3.0),
        EventSequence(np.array([2.5]), np.array([k - 1])),
        EventSequence(np.array([2.5]), np.array([0]), 4.0),
        EventSequence(np.array([2.5, 2.75]), np.array([1, 0])),
        EventSequence(np.array([1.0, 1.0, 1.5, 1.5, 1.5, 3.0]), np.array([0, 1, 1, 0, 2, 2]), 3.5),  # ties
        EventSequence(np.array([7.0, 7.0]), np.array([2, 2])),  # a tie only
    ]
    return out


@pytest.mark.parametrize("one_hot", [True, False], ids=["one-hot", "gather"])
@pytest.mark.parametrize("block", [32, 5, 1])
def test_the_batch_likelihood_equals_the_loop_over_events(one_hot: bool, block: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Exact to 1e-10 relative on every sequence, whatever the query block (a block of 1 carries every event
    through the state) and either within-block path."""
    monkeypatch.setattr(hawkes_fit, "ONE_HOT_MARKS", 64 if one_hot else 0)
    rng = np.random.default_rng(3)
    params = random_hawkes_params(3, rng, branching=0.7, base_rate=2.0, beta=2.5)
    seqs = _mixed_sequences(params, rng)
    ties = [bool(np.any(np.diff(s.times) == 0)) for s in seqs]
    want = np.array([(strict_reference if tie else reference)(s, params) for s, tie in zip(seqs, ties)])
    assert sum(ties) == 2 and all(strict_reference(s, params) == pytest.approx(reference(s, params), rel=1e-12)
                                  for s, tie in zip(seqs, ties) if not tie)
    got = hawkes_log_likelihood_sequences(params, seqs, block=block)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert got[len(seqs) - 7] == 0.0 and got[len(seqs) - 5] == 0.0  # empty, and one event without a window
    one = seqs[len(seqs) - 4]  # one event, window to 4: only the compensator from t_1
    span = 4.0 - 2.5
    assert got[len(seqs) - 4] == pytest.approx(-(params.mu.sum() * span + params.alpha[:, 0].sum()
                                                 * -np.expm1(-2.5 * span)), rel=1e-12)


def test_the_batch_likelihood_is_differentiable_and_ignores_padding() -> None:
    """Padding values (any finite times, any marks) change nothing; gradients are finite."""
    rng = np.random.default_rng(4)
    params = random_hawkes_params(2, rng, branching=0.5, beta=1.5)
    mu = torch.tensor(params.mu, requires_grad=True)
    alpha = torch.tensor(params.alpha, requires_grad=True)
    beta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    times = torch.tensor([[0.5, 1.0, 1.0, 2.0], [3.0, 4.0, 99.0, -5.0]], dtype=torch.float64)
    marks = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]])
    lengths = torch.tensor([4, 2])
    ll = hawkes_log_likelihood_batch(mu, alpha, beta, times, marks, lengths)
    seqs = [EventSequence(times[0].numpy(), marks[0].numpy()),
            EventSequence(times[1, :2].numpy(), marks[1, :2].numpy())]
    np.testing.assert_allclose(ll.detach().numpy(), [strict_reference(s, params) for s in seqs], rtol=1e-12)
    ll.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in (mu, alpha, beta))


PARAMS = HawkesParams(mu=[0.5, 0.3], alpha=[[0.3, 0.2], [0.25, 0.2]], beta=2.0)


def _simulate(num: int, window: float, seed: int) -> list[EventSequence]:
    seqs = simulate_hawkes_many(PARAMS, num, window, np.random.default_rng(seed))
    return [EventSequence(s.times, s.marks) for s in seqs]  # the benchmark convention: no window


def test_a_change_of_time_unit_scales_mu_and_beta_and_shifts_the_likelihood_by_n_log_c() -> None:
    """Times x c: mu / c, beta / c, alpha unchanged, log-likelihood - n log c (``n`` scored events), from MOOC-like
    gaps (1e-3 units) to seconds (1e3)."""
    seqs = _simulate(40, 30.0, 0)
    fits = {}
    for c in (1e-3, 1.0, 1e3):
        scaled = [EventSequence(s.times * c, s.marks) for s in seqs]
        fits[c] = fit_hawkes(scaled, 2)
    ref = fits[1.0]
    assert ref.converged and ref.events == sum(len(s) - 1 for s in seqs)
    for c, f in fits.items():
        assert f.converged and f.events == ref.events
        np.testing.assert_allclose(f.params.mu * c, ref.params.mu, rtol=1e-3)
        assert f.params.beta * c == pytest.approx(ref.params.beta, rel=1e-3)
        np.testing.assert_allclose(f.params.alpha, ref.params.alpha, rtol=1e-3, atol=1e-6)
        assert f.log_likelihood == pytest.approx(ref.log_likelihood - ref.events * np.log(c), rel=1e-9, abs=1e-6)


def _standard_errors(fit, seqs: list[EventSequence]) -> np.ndarray:
    """Standard errors of ``(mu, alpha, beta)`` flattened, from the observed information (autograd Hessian of the
    total negative log-likelihood at the fit)."""
    chunks = hawkes_fit._chunks(seqs)
    k = fit.params.num_marks

    def nll(theta: torch.Tensor) -> torch.Tensor:
        mu, alpha, beta = theta[:k], theta[k : k + k * k].view(k, k), theta[-1]
        return -sum(hawkes_log_likelihood_batch(mu, alpha, beta, c.times, c.marks, c.lengths, c.window_end).sum()
                    for c in chunks)

    p = fit.params
    theta = torch.tensor(np.concatenate([p.mu, p.alpha.ravel(), [p.beta]]), dtype=torch.float64)
    hess = torch.autograd.functional.hessian(nll, theta)
    return np.sqrt(np.diag(np.linalg.inv(hess.numpy())))


def test_the_fit_recovers_known_parameters_within_four_standard_errors() -> None:
    """300 sequences on [0, 40] (18,302 events; the fit takes ~1.5 s on one thread). Tolerance: 4 standard errors
    of each parameter from the observed information (every true value is interior: alpha > 0; measured: at most
    1.4 standard errors), and a relative error below 20% (measured: at most 4.8%, alpha[0, 1]). The fitted
    log-likelihood is at least the true parameters' on the same data (the MLE property)."""
    seqs = _simulate(300, 40.0, 1)
    fit = fit_hawkes(seqs, 2)
    assert fit.converged and fit.branching_ratio == pytest.approx(fit.params.spectral_radius)
    got = np.concatenate([fit.params.mu, fit.params.alpha.ravel(), [fit.params.beta]])
    true = np.concatenate([PARAMS.mu, PARAMS.alpha.ravel(), [PARAMS.beta]])
    se = _standard_errors(fit, seqs)
    assert np.all(np.abs(got - true) <= 4 * se), (got, true, se)
    assert np.all(np.abs(got - true) <= 0.2 * true), (got, true)
    at_truth = float(hawkes_log_likelihood_sequences(PARAMS, seqs).sum())
    assert fit.log_likelihood >= at_truth
    assert fit.log_likelihood == pytest.approx(sum(reference(s, fit.params) for s in seqs), rel=1e-10)


def test_errors_are_one_line() -> None:
    ok = [EventSequence(np.array([0.0, 1.0]), np.array([0, 1]))]
    with pytest.raises(MtppError, match="at least one mark"):
        fit_hawkes(ok, 0)
    with pytest.raises(MtppError, match="1,003,003 parameters; fit_hawkes takes at most 1000 marks"):
        fit_hawkes(ok, 1001)
    with pytest.raises(MtppError, match="sequence 1: non-finite event times"):
        fit_hawkes([*ok, EventSequence(np.array([0.0, np.inf]), np.array([0, 0]))], 2)
    with pytest.raises(MtppError, match="sequence 0: window end 0.5 before its last event 1.0"):
        fit_hawkes([EventSequence(np.array([0.0, 1.0]), np.array([0, 1]), 0.5)], 2)
    with pytest.raises(MtppError, match="no training sequence has an event after its first"):
        fit_hawkes([EventSequence(np.array([3.0]), np.array([1])), EventSequence(np.zeros(0), np.zeros(0, int))], 2)
    with pytest.raises(MtppError, match=r"marks must be in \[0, 2\)") as err:
        fit_hawkes([EventSequence(np.array([0.0, 1.0]), np.array([0, 2]))], 2)
    assert "\n" not in str(err.value)


def test_a_non_stationary_fit_is_kept_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Accelerating sequences (gaps shrinking like i^-1.5) fit a branching ratio above 1: the fit is returned, its
    ratio stored, and one warning line says generation may explode."""
    rng = np.random.default_rng(0)
    seqs = [EventSequence(np.cumsum(rng.exponential(1.0, 60) / np.arange(1, 61) ** 1.5), np.zeros(60, dtype=int))
            for _ in range(30)]
    with caplog.at_level(logging.WARNING, logger="mtpp.forecast.hawkes_fit"):
        fit = fit_hawkes(seqs, 1)
    assert fit.branching_ratio >= 1.0 and fit.params.spectral_radius == pytest.approx(fit.branching_ratio)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not stationary" in warnings[0] and "may explode" in warnings[0]
    assert "\n" not in warnings[0]


def test_progress_shows_a_bar_over_iterations(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``progress=True`` draws a tqdm bar counting L-BFGS iterations (on a terminal: tqdm's ``disable=None``)."""
    import functools
    import io

    import tqdm.std

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(tqdm.std.tqdm, "__init__",
                        functools.partialmethod(tqdm.std.tqdm.__init__, mininterval=0, file=screen))
    fit = fit_hawkes(_simulate(10, 20.0, 2), 2, progress=True)
    shown = screen.getvalue()
    assert "fit hawkes" in shown and "iter" in shown and fit.iterations > 0


def test_ties_do_not_excite_so_rounded_times_still_have_a_maximum() -> None:
    """Times rounded to whole units (half the gaps are ties): with ties exciting each other the likelihood grew
    without bound in ``beta`` and the fit ended in NaN parameters (a ValueError from HawkesParams). With the strict
    history it is bounded: the fit ends with finite parameters, its likelihood matches the strict loop, and a
    much larger ``beta`` does not beat it."""
    rng = np.random.default_rng(7)
    seqs = [EventSequence(np.sort(rng.integers(0, 20, 30)).astype(float), rng.integers(0, 2, 30)) for _ in range(20)]
    assert sum(int((np.diff(s.times) == 0).sum()) for s in seqs) > 200
    fit = fit_hawkes(seqs, 2)
    p = fit.params
    assert np.all(np.isfinite(p.mu)) and np.all(np.isfinite(p.alpha)) and np.isfinite(p.beta)
    assert fit.log_likelihood == pytest.approx(sum(strict_reference(s, p) for s in seqs), rel=1e-9)
    far = HawkesParams(mu=p.mu, alpha=p.alpha, beta=float(p.beta) * 1e6, require_stationary=False)
    assert float(hawkes_log_likelihood_sequences(far, seqs).sum()) <= fit.log_likelihood + 1e-6


def test_no_time_after_the_first_events_names_the_hawkes_fit() -> None:
    """Every later event tied with its sequence's first: the error named the Poisson baseline (the fit's start)."""
    with pytest.raises(MtppError, match=r"^cannot fit a Hawkes process: the training sequences span no time"):
        fit_hawkes([EventSequence(np.array([7.0, 7.0]), np.array([0, 0]))], 1)
